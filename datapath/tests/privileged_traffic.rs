//! Real traffic through the real programs (root): a "node" network namespace with pod
//! namespaces behind veth pairs, the programs attached to the host-side veths through the
//! Datapath actor, and TCP/ICMP between the pods.
//!
//! Topology per test: every pod has `eth0` with a /32 address and a default route via the
//! gateway 10.200.0.1, which exists nowhere: the programs answer the pod's ARP for it with the
//! host-side veth's MAC (upstream's ARP responder). The node namespace forwards (ip_forward=1),
//! routes each pod's /32 to its host-side veth and knows each pod's MAC (a permanent neighbour,
//! as the agent's endpoint setup would install). Names carry the PID and a counter, every
//! resource is removed by a guard's `Drop`, and each test loads the programs on a private
//! bpffs mount.

mod privileged_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use datapath::api::{
    Backend4Value, BackendId, BackendSelection, Direction, EndpointAttachment, EndpointId,
    EndpointInfo, EndpointKey, Frontend, IpcacheKey, MacAddr, MapKey, MapName, MapValue,
    MetricDirection, PolicyEntry, PolicyKey, Protocol, RemoteEndpointInfo, RevNatId, ServiceFlags,
};
use datapath::monitor::{EventReader, MonitorEvent, MonitorEventKind, format_monitor_line};
use datapath::reconciler::{
    AttachEndpoint, DatapathActor, DatapathActorConfig, InitialSyncDone, ListMap, ReadMetrics,
    ServiceSpec, SetEndpointPolicy, UpsertIpcache, UpsertLxc, UpsertService,
};
use datapath::{KernelDatapath, LoadOptions};
use model::identity::NumericIdentity;
use privileged_common::{BpfFs, Netns, unique};

const GATEWAY: &str = "10.200.0.1";
const SERVER_PORT: u16 = 8080;
const DENIED: Duration = Duration::from_millis(1500);

/// One pod: its namespace and the endpoint the datapath knows it as.
struct Pod {
    ns: Netns,
    name: &'static str,
    ip: Ipv4Addr,
    host_if: String,
    ifindex: u32,
    mac: [u8; 6],
    host_mac: [u8; 6],
    endpoint: EndpointId,
    identity: NumericIdentity,
}

/// Fields drop in order: pods (their namespaces and veths), then the node, then the bpffs.
struct Topology {
    pods: Vec<Pod>,
    node: Netns,
    fs: BpfFs,
}

impl Topology {
    fn new(names: &[&'static str]) -> Self {
        let fs = BpfFs::mount();
        let node = Netns::add("tn");
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            node.sysctl(key, "1");
        }
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv4.conf.all.rp_filter", "0");
        node.sysctl("net.ipv4.conf.default.rp_filter", "0");
        let mut pods = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let n = u8::try_from(i + 1).expect("a few pods");
            let ns = Netns::add("tp");
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
            ns.sysctl("net.ipv4.ping_group_range", "0 2147483647");
            let host_if = unique("lxc");
            node.exec(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            let ip = Ipv4Addr::new(10, 0, 1, 10 + n);
            let cidr = format!("{ip}/32");
            ns.exec(&["addr", "add", &cidr, "dev", "eth0"]);
            ns.exec(&["link", "set", "eth0", "up"]);
            ns.exec(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"]);
            ns.exec(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
            node.exec(&["link", "set", &host_if, "up"]);
            node.exec(&["route", "add", &cidr, "dev", &host_if]);
            let mac = ns.mac("eth0");
            let mac_text = MacAddr(mac).to_string();
            node.exec(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "dev",
                &host_if,
                "lladdr",
                &mac_text,
                "nud",
                "permanent",
            ]);
            let ifindex = node.ifindex(&host_if);
            let host_mac = node.mac(&host_if);
            pods.push(Pod {
                ns,
                name,
                ip,
                host_if,
                ifindex,
                mac,
                host_mac,
                endpoint: EndpointId::new(u16::from(n)),
                identity: NumericIdentity::new(1000 + u32::from(n)),
            });
        }
        Topology { pods, node, fs }
    }

    fn options(&self) -> LoadOptions {
        LoadOptions {
            bpf_root: Some(self.fs.path().to_path_buf()),
            // Every event, so the drop under test cannot be rate limited away.
            events_rate_per_sec: 0,
            ..LoadOptions::default()
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn attachment(&self, pod: &Pod) -> EndpointAttachment {
        EndpointAttachment {
            endpoint: pod.endpoint,
            ifname: pod.host_if.clone(),
            netns: Some(self.node.path()),
        }
    }
}

/// A TCP server in a pod: answers each line with `<name>:<line>`.
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn start(pod: &Pod) -> Self {
        let listener = pod
            .ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, SERVER_PORT)))
            .unwrap_or_else(|e| panic!("bind in {}: {e}", pod.name));
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let name = pod.name;
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let flag = flag.clone();
                        thread::spawn(move || echo(stream, name, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            stop,
            handle: Some(handle),
        }
    }
}

fn echo(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer
                    .write_all(format!("{name}:{line}").as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A connection from a pod, created inside its namespace (the socket stays there).
fn connect(from: &Pod, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = from
        .ns
        .run(move || TcpStream::connect_timeout(&SocketAddr::V4(to), timeout))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(stream)
}

/// Sends a line and returns the server's answer.
fn exchange(stream: &TcpStream, text: &str) -> std::io::Result<String> {
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("{text}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// One ICMP echo from `from` to `to` through a ping socket; whether a reply came back.
fn ping(from: &Pod, to: Ipv4Addr, timeout: Duration) -> bool {
    from.ns.run(move || {
        // SAFETY: plain socket syscalls on a fd this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "ping socket: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(to).to_be(),
                },
                sin_zero: [0; 8],
            };
            // Echo request, type 8; the kernel fills in the identifier and checksum.
            let request: [u8; 16] = [
                8, 0, 0, 0, 0, 0, 0, 1, b'c', b'i', b'l', b'i', b'u', b'm', 0, 0,
            ];
            let sent = libc::sendto(
                fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let mut reply = [0u8; 64];
            let got = if sent > 0 {
                libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0)
            } else {
                -1
            };
            libc::close(fd);
            // An echo reply is type 0.
            got > 0 && reply[0] == 0
        }
    })
}

fn actor_config() -> DatapathActorConfig {
    DatapathActorConfig {
        resync_interval: Duration::from_secs(3600),
        conntrack_gc_interval: Duration::from_secs(3600),
        ..DatapathActorConfig::default()
    }
}

/// Runs `f` against a Datapath actor over `dp` in a fresh actix system; when it returns, the
/// system, the actor and the datapath (with its loaded objects) are gone, as when the agent
/// process exits.
fn with_actor<T>(dp: KernelDatapath, f: impl AsyncFnOnce(Addr<DatapathActor>) -> T) -> T {
    let system = actix::System::new();
    let out = system.block_on(async move {
        let addr = DatapathActor::new(Box::new(dp), actor_config()).start();
        f(addr).await
    });
    drop(system);
    out
}

/// Desired state a (re)started agent sends: endpoints, ipcache, policies, services,
/// attachments, then the end of the initial sync.
struct Desired {
    lxc: Vec<(EndpointKey, EndpointInfo)>,
    ipcache: Vec<(IpcacheKey, RemoteEndpointInfo)>,
    policies: Vec<SetEndpointPolicy>,
    services: Vec<ServiceSpec>,
    attachments: Vec<EndpointAttachment>,
}

impl Desired {
    fn for_topology(topo: &Topology) -> Self {
        Desired {
            lxc: topo
                .pods
                .iter()
                .map(|p| {
                    (
                        EndpointKey::new(p.ip.into()),
                        EndpointInfo {
                            ifindex: p.ifindex,
                            lxc_id: p.endpoint,
                            mac: MacAddr(p.mac),
                            node_mac: MacAddr(p.host_mac),
                            identity: p.identity,
                            is_host: false,
                        },
                    )
                })
                .collect(),
            ipcache: topo
                .pods
                .iter()
                .map(|p| {
                    (
                        IpcacheKey::host(p.ip.into()),
                        RemoteEndpointInfo::identity(p.identity),
                    )
                })
                .collect(),
            policies: Vec::new(),
            services: Vec::new(),
            attachments: topo.pods.iter().map(|p| topo.attachment(p)).collect(),
        }
    }

    /// `client` may reach `server` on TCP 8080 (and ICMP if `icmp`): egress of the client,
    /// ingress of the server.
    fn allow(&mut self, client: &Pod, server: &Pod, icmp: bool) {
        let mut add = |endpoint: EndpointId, key: PolicyKey| match self
            .policies
            .iter_mut()
            .find(|p| p.endpoint == endpoint)
        {
            Some(policy) => {
                policy.entries.insert(key, PolicyEntry::allow());
            }
            None => self.policies.push(SetEndpointPolicy {
                endpoint,
                entries: BTreeMap::from([(key, PolicyEntry::allow())]),
            }),
        };
        let tcp = |id, dir| {
            PolicyKey::port(id, dir, Protocol::TCP, SERVER_PORT).expect("a port with TCP")
        };
        add(client.endpoint, tcp(server.identity, Direction::Egress));
        add(server.endpoint, tcp(client.identity, Direction::Ingress));
        if icmp {
            add(
                client.endpoint,
                PolicyKey::protocol(server.identity, Direction::Egress, Protocol::ICMP),
            );
            add(
                server.endpoint,
                PolicyKey::protocol(client.identity, Direction::Ingress, Protocol::ICMP),
            );
        }
    }

    /// Every pod's policy map exists, even with no entry (default deny).
    fn cover_all(&mut self, topo: &Topology) {
        for pod in &topo.pods {
            if !self.policies.iter().any(|p| p.endpoint == pod.endpoint) {
                self.policies.push(SetEndpointPolicy {
                    endpoint: pod.endpoint,
                    entries: BTreeMap::new(),
                });
            }
        }
    }

    async fn send(&self, addr: &Addr<DatapathActor>) {
        addr.send(UpsertLxc {
            entries: self.lxc.clone(),
        })
        .await
        .expect("actor alive");
        addr.send(UpsertIpcache {
            entries: self.ipcache.clone(),
        })
        .await
        .expect("actor alive");
        for policy in &self.policies {
            addr.send(policy.clone()).await.expect("actor alive");
        }
        for service in &self.services {
            addr.send(UpsertService(service.clone()))
                .await
                .expect("actor alive")
                .unwrap_or_else(|e| panic!("service {}: {e}", service.frontend));
        }
        for att in &self.attachments {
            addr.send(AttachEndpoint(att.clone()))
                .await
                .expect("actor alive")
                .unwrap_or_else(|e| panic!("attach {}: {e}", att.ifname));
        }
        addr.send(InitialSyncDone).await.expect("actor alive");
    }
}

type Snapshot = BTreeMap<MapName, Vec<(MapKey, MapValue)>>;

/// What the agent writes, read back from the kernel through the actor.
async fn snapshot(addr: &Addr<DatapathActor>, endpoints: &[EndpointId]) -> Snapshot {
    let mut maps: Vec<MapName> = vec![
        MapName::Ipcache,
        MapName::Lxc,
        MapName::Lb4Services,
        MapName::Lb4Backends,
        MapName::Lb4ReverseNat,
    ];
    maps.extend(endpoints.iter().map(|ep| MapName::Policy(*ep)));
    let mut out = Snapshot::new();
    for map in maps {
        let entries = addr
            .send(ListMap { map })
            .await
            .expect("actor alive")
            .unwrap_or_else(|e| panic!("list {map}: {e}"));
        out.insert(map, entries);
    }
    out
}

/// Drains events until one matches or `timeout` passes.
fn wait_for_event(
    reader: &mut EventReader,
    timeout: Duration,
    pred: impl Fn(&MonitorEvent) -> bool,
) -> Option<MonitorEvent> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(event) = reader.drain().into_iter().find(|e| pred(e)) {
            return Some(event);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

fn load(topo: &Topology) -> KernelDatapath {
    KernelDatapath::load(&topo.options()).unwrap_or_else(|e| panic!("load datapath: {e}"))
}

#[test]
fn privileged_policy_allows_and_denies_tcp_and_icmp() {
    let topo = Topology::new(&["client", "allowed", "denied"]);
    let (client, allowed, denied) = (topo.pod("client"), topo.pod("allowed"), topo.pod("denied"));
    let mut desired = Desired::for_topology(&topo);
    desired.allow(client, allowed, true);
    // `denied` admits the client on ingress, so only the client's egress policy stops it.
    desired.policies.push(SetEndpointPolicy {
        endpoint: denied.endpoint,
        entries: BTreeMap::from([(
            PolicyKey::port(
                client.identity,
                Direction::Ingress,
                Protocol::TCP,
                SERVER_PORT,
            )
            .expect("port key"),
            PolicyEntry::allow(),
        )]),
    });
    desired.cover_all(&topo);
    let _servers = [Server::start(allowed), Server::start(denied)];

    let dp = load(&topo);
    let mut events = EventReader::new(dp.objects()).expect("event reader");
    with_actor(dp, async |addr| {
        desired.send(&addr).await;

        let stream = connect(client, SocketAddrV4::new(allowed.ip, SERVER_PORT), DENIED)
            .expect("allowed connect");
        assert_eq!(exchange(&stream, "hello").expect("echo"), "allowed:hello");

        let started = Instant::now();
        let refused = connect(client, SocketAddrV4::new(denied.ip, SERVER_PORT), DENIED);
        assert!(refused.is_err(), "connect to a pod the policy denies");
        assert!(started.elapsed() < Duration::from_secs(3));
        let drop = wait_for_event(&mut events, Duration::from_secs(2), |e| {
            matches!(e.kind, MonitorEventKind::Drop { reason: 133, .. })
                && e.destination_ip == std::net::IpAddr::V4(denied.ip)
        })
        .expect("a policy-denied drop event for the denied SYN");
        let line = format_monitor_line(&drop);
        assert!(line.starts_with("xx drop (Policy denied)"), "{line}");
        assert!(
            line.contains(&format!(
                "identity {}->{}",
                client.identity, denied.identity
            )),
            "{line}"
        );
        assert_eq!(drop.source_endpoint, client.endpoint);

        assert!(
            ping(client, allowed.ip, Duration::from_secs(2)),
            "ping allowed"
        );
        assert!(
            !ping(client, denied.ip, Duration::from_millis(800)),
            "ping denied"
        );

        let metrics = addr
            .send(ReadMetrics)
            .await
            .expect("actor alive")
            .expect("metrics");
        let denied_egress: u64 = metrics
            .iter()
            .filter(|m| m.reason == 133 && m.direction == MetricDirection::Egress)
            .map(|m| m.packets)
            .sum();
        assert!(
            denied_egress >= 2,
            "SYN and echo drops counted: {metrics:?}"
        );
        assert!(
            metrics
                .iter()
                .any(|m| m.reason == 0 && m.direction == MetricDirection::Ingress && m.packets > 0),
            "forwarded packets counted: {metrics:?}"
        );
    });
    let counters = events.counters().expect("event counters");
    assert_eq!(counters.undecodable, 0);
    assert!(counters.read > 0);
}

#[test]
fn privileged_cluster_ip_balances_across_two_backends() {
    let topo = Topology::new(&["client", "backend-a", "backend-b"]);
    let (client, a, b) = (
        topo.pod("client"),
        topo.pod("backend-a"),
        topo.pod("backend-b"),
    );
    let mut desired = Desired::for_topology(&topo);
    desired.allow(client, a, false);
    desired.allow(client, b, false);
    desired.cover_all(&topo);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    desired.services.push(ServiceSpec {
        frontend: Frontend::new(vip, Protocol::TCP),
        rev_nat: RevNatId::new(1),
        backends: [a, b]
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                (
                    BackendId::new(u32::try_from(i).expect("two") + 1),
                    Backend4Value::new(SocketAddrV4::new(pod.ip, SERVER_PORT), Protocol::TCP),
                )
            })
            .collect(),
        selection: BackendSelection::Random,
        flags: ServiceFlags::ROUTABLE,
    });
    let _servers = [Server::start(a), Server::start(b)];

    with_actor(load(&topo), async |addr| desired.send(&addr).await);

    let mut answered = BTreeSet::new();
    for i in 0..24 {
        let stream = connect(client, vip, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {i} to the ClusterIP: {e}"));
        // Replies come back from the frontend: reverse NAT restored the VIP.
        assert_eq!(stream.peer_addr().ok(), Some(SocketAddr::V4(vip)));
        let answer = exchange(&stream, &format!("req{i}")).expect("echo through the VIP");
        let (backend, echoed) = answer.split_once(':').expect("name:text");
        assert_eq!(echoed, format!("req{i}"));
        answered.insert(backend.to_owned());
    }
    assert_eq!(
        answered,
        BTreeSet::from(["backend-a".to_owned(), "backend-b".to_owned()]),
        "random selection over 24 connections reaches both backends"
    );
}

#[test]
fn privileged_restart_adopts_pins_and_keeps_established_flows() {
    let topo = Topology::new(&["client", "server"]);
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let mut desired = Desired::for_topology(&topo);
    desired.allow(client, server, false);
    desired.cover_all(&topo);
    let endpoints: Vec<EndpointId> = topo.pods.iter().map(|p| p.endpoint).collect();
    let _server = Server::start(server);

    let (before, established) = with_actor(load(&topo), async |addr| {
        desired.send(&addr).await;
        let stream = connect(client, SocketAddrV4::new(server.ip, SERVER_PORT), DENIED)
            .expect("connect while the agent runs");
        assert_eq!(exchange(&stream, "a").expect("echo"), "server:a");
        (snapshot(&addr, &endpoints).await, stream)
    });
    assert_eq!(before[&MapName::Lxc].len(), 2, "{before:?}");
    assert_eq!(before[&MapName::Ipcache].len(), 2, "{before:?}");
    assert_eq!(
        before[&MapName::Policy(client.endpoint)].len(),
        1,
        "{before:?}"
    );

    // The agent is gone: the actor, the loaded objects and every fd they held.
    assert_eq!(
        exchange(&established, "b").expect("established flow while no agent runs"),
        "server:b"
    );
    let stream = connect(client, SocketAddrV4::new(server.ip, SERVER_PORT), DENIED)
        .expect("new connection while no agent runs");
    assert_eq!(exchange(&stream, "one").expect("echo"), "server:one");
    // Enforcement still runs from the pinned links: a port the policy does not allow is dropped.
    assert!(
        connect(
            client,
            SocketAddrV4::new(server.ip, SERVER_PORT + 1),
            DENIED
        )
        .is_err(),
        "policy still enforced while no agent runs"
    );

    // A new agent loads the same bpf root, adopts, and sends the same desired state.
    let after = with_actor(load(&topo), async |addr| {
        let adopted = snapshot(&addr, &endpoints).await;
        desired.send(&addr).await;
        let resynced = snapshot(&addr, &endpoints).await;
        (adopted, resynced)
    });
    assert_eq!(after.0, before, "maps as the new agent found them");
    assert_eq!(after.1, before, "maps after the new agent's initial sync");
    assert_eq!(
        exchange(&established, "c").expect("established flow after the restart"),
        "server:c"
    );
    assert_eq!(
        exchange(&stream, "two").expect("first flow after the restart"),
        "server:two"
    );
}

#[test]
fn privileged_async_monitor_delivers_drops_as_they_happen() {
    let topo = Topology::new(&["client", "server"]);
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let mut desired = Desired::for_topology(&topo);
    desired.cover_all(&topo);
    let dp = load(&topo);
    let reader = EventReader::new(dp.objects()).expect("event reader");
    let target = SocketAddrV4::new(server.ip, SERVER_PORT);
    let client_ns = client.ns.path();
    with_actor(dp, async |addr| {
        desired.send(&addr).await;
        let mut events = reader.into_async().expect("async reader");
        // The SYN leaves from a plain thread while this task waits on the ring buffer's fd.
        let connecting = thread::spawn(move || {
            privileged_common::in_netns(&client_ns, || {
                TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_millis(500))
                    .is_err()
            })
        });
        let drop = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                let batch = events.next_batch().await.expect("ring buffer readable");
                if let Some(event) = batch
                    .into_iter()
                    .find(|e| matches!(e.kind, MonitorEventKind::Drop { reason: 133, .. }))
                {
                    return event;
                }
            }
        })
        .await
        .expect("a drop event within 3 s");
        assert_eq!(drop.destination_ip, std::net::IpAddr::V4(server.ip));
        assert_eq!(drop.destination_port, SERVER_PORT);
        assert!(
            connecting.join().expect("connect thread"),
            "connect was denied"
        );
        let counters = events.counters().expect("counters");
        assert!(counters.read >= 1 && counters.lost == 0 && counters.suppressed == 0);
    });
}
