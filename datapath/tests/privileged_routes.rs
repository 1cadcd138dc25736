//! [`NetlinkNodeRoutes`] against the kernel (root): two "node" namespaces on a bridge that
//! lives in a third "underlay" namespace (the root namespace's links are never touched), each
//! with a "pod" address in its own pod CIDR. The routes are programmed from inside each
//! node namespace, as the agent does, and TCP between the pod addresses must work, in native
//! mode and through VXLAN; deleting the routes makes the peer unreachable again.

mod privileged_common;

use std::io::{self, BufRead, BufReader, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use datapath::routes::{
    NetlinkNodeRoutes, NodeRoute, NodeRoutes, RoutingMode, VXLAN_DEVICE, tunnel_mac,
};
use privileged_common::Netns;

/// `ip args...`, its stdout.
fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One node of the test cluster: its namespace, underlay address and pod address.
struct TestNode {
    ns: Netns,
    node_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    pod_cidr: ipnet::Ipv4Net,
}

impl TestNode {
    fn route(&self) -> NodeRoute {
        NodeRoute {
            pod_cidr: self.pod_cidr,
            node_ip: self.node_ip,
        }
    }

    /// Runs `f` with a [`NetlinkNodeRoutes`] of this node on a runtime inside its namespace.
    fn with_routes<T: Send>(
        &self,
        mode: RoutingMode,
        f: impl AsyncFnOnce(&NetlinkNodeRoutes) -> T + Send,
    ) -> T {
        let node_ip = self.node_ip;
        self.ns.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let routes = NetlinkNodeRoutes::new(mode, node_ip);
            runtime.block_on(f(&routes))
        })
    }

    fn routes_to(&self, peer: &TestNode) -> String {
        ip_out(&[
            "-n",
            &self.ns.name,
            "-4",
            "route",
            "show",
            &peer.pod_cidr.to_string(),
        ])
    }

    /// Packets the tunnel device sent and received so far.
    fn vxlan_packets(&self) -> (u64, u64) {
        let json = ip_out(&[
            "-n",
            &self.ns.name,
            "-j",
            "-s",
            "link",
            "show",
            "dev",
            VXLAN_DEVICE,
        ]);
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        let stats = &links[0]["stats64"];
        let count = |dir: &str| {
            stats[dir]["packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("no {dir} packet count in {json}"))
        };
        (count("tx"), count("rx"))
    }
}

/// The underlay bridge and two nodes on it. Dropping it deletes every namespace (and with
/// them the veths, bridge and tunnel devices).
struct Cluster {
    _underlay: Netns,
    a: TestNode,
    b: TestNode,
}

fn cluster() -> Cluster {
    let underlay = Netns::add("rtu");
    // A fixed MAC: a bridge otherwise changes its MAC as ports join.
    underlay.exec(&[
        "link",
        "add",
        "br0",
        "address",
        "02:00:00:00:00:fe",
        "type",
        "bridge",
    ]);
    underlay.exec(&["link", "set", "br0", "up"]);
    let node = |n: u8| {
        let ns = Netns::add("rtn");
        let port = format!("u{n}");
        underlay.exec(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        underlay.exec(&["link", "set", &port, "master", "br0", "up"]);
        let node_ip = Ipv4Addr::new(192, 168, 50, n);
        let pod_ip = Ipv4Addr::new(10, 0, n, 1);
        ns.exec(&["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"]);
        ns.exec(&["link", "set", "eth0", "up"]);
        // The "pod" is an address on loopback (this kernel may lack the dummy driver): local
        // delivery is all the routes have to reach.
        ns.exec(&["addr", "add", &format!("{pod_ip}/32"), "dev", "lo"]);
        TestNode {
            ns,
            node_ip,
            pod_ip,
            pod_cidr: format!("10.0.{n}.0/24").parse().expect("pod CIDR"),
        }
    };
    let a = node(1);
    let b = node(2);
    Cluster {
        _underlay: underlay,
        a,
        b,
    }
}

/// A TCP connection from `src` to `dst` (std cannot bind a client socket before connecting,
/// and the source must be the pod address so that the reply needs the peer's route too).
/// Connecting gives up after `timeout`.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr = libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        };
        sa
    }
    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor this function owns; every pointer refers
    // to a live local of the stated size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        check(fd)?;
        let fd = OwnedFd::from_raw_fd(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        check(libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
        let local = sockaddr(SocketAddrV4::new(src, 0));
        check(libc::bind(raw, (&raw const local).cast(), len))?;
        let remote = sockaddr(dst);
        check(libc::connect(raw, (&raw const remote).cast(), len))?;
        Ok(TcpStream::from(fd))
    }
}

/// Sends a line from `client`'s pod address to `server`'s and returns the server's answer,
/// which names the source address the server saw.
fn exchange(client: &TestNode, server: &TestNode) -> io::Result<String> {
    let listener = server
        .ns
        .run(|| TcpListener::bind((server.pod_ip, 0)))
        .expect("listen on the pod address");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    thread::scope(|scope| {
        let served = scope.spawn(|| -> io::Result<()> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let (stream, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            (&stream).write_all(format!("pong {} {}", peer.ip(), line).as_bytes())
        });
        let answer = client.ns.run(|| -> io::Result<String> {
            let dst = SocketAddrV4::new(server.pod_ip, port);
            let stream = connect_from(client.pod_ip, dst, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            (&stream).write_all(b"ping\n")?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            Ok(line)
        });
        let served = served.join().expect("server thread");
        let answer = answer?;
        served?;
        Ok(answer)
    })
}

/// Whether a connection attempt from `client`'s pod to `server`'s fails.
fn unreachable(client: &TestNode, server: &TestNode) -> bool {
    client
        .ns
        .run(|| {
            connect_from(
                client.pod_ip,
                SocketAddrV4::new(server.pod_ip, 9),
                Duration::from_secs(2),
            )
        })
        .is_err()
}

#[test]
fn privileged_native_routes_connect_pods_and_delete_disconnects_them() {
    let c = cluster();
    assert!(unreachable(&c.a, &c.b), "no route yet");

    let (to_b, to_a) = (c.b.route(), c.a.route());
    let listed = c.a.with_routes(RoutingMode::Native, async |routes| {
        routes.upsert(&to_b).await.expect("upsert");
        routes.upsert(&to_b).await.expect("upsert is idempotent");
        routes.list().await.expect("list")
    });
    assert_eq!(listed, [to_b]);
    c.b.with_routes(RoutingMode::Native, async |routes| {
        routes.upsert(&to_a).await.expect("upsert")
    });

    let shown = c.a.routes_to(&c.b);
    assert!(
        shown.contains("10.0.2.0/24 via 192.168.50.2 dev eth0"),
        "{shown}"
    );
    let answer = exchange(&c.a, &c.b).expect("pod a reaches pod b");
    assert_eq!(answer, "pong 10.0.1.1 ping\n");
    let answer = exchange(&c.b, &c.a).expect("pod b reaches pod a");
    assert_eq!(answer, "pong 10.0.2.1 ping\n");

    // A peer that moved: the route is replaced, and deleting the old one leaves it alone.
    let moved = NodeRoute {
        node_ip: Ipv4Addr::new(192, 168, 50, 9),
        ..to_b
    };
    let (deleted_stale, listed) = c.a.with_routes(RoutingMode::Native, async |routes| {
        routes.upsert(&moved).await.expect("replace");
        let deleted = routes.delete(&to_b).await.expect("delete stale");
        (deleted, routes.list().await.expect("list"))
    });
    assert!(!deleted_stale);
    assert_eq!(listed, [moved]);

    let (deleted, again, listed) = c.a.with_routes(RoutingMode::Native, async |routes| {
        (
            routes.delete(&moved).await.expect("delete"),
            routes.delete(&moved).await.expect("delete again"),
            routes.list().await.expect("list"),
        )
    });
    assert!(deleted);
    assert!(!again);
    assert!(listed.is_empty());
    assert!(c.a.routes_to(&c.b).trim().is_empty());
    assert!(unreachable(&c.a, &c.b), "route deleted");
}

#[test]
fn privileged_tunnel_routes_carry_pod_traffic_over_vxlan() {
    let c = cluster();
    let (to_b, to_a) = (c.b.route(), c.a.route());
    c.a.with_routes(RoutingMode::Tunnel, async |routes| {
        routes.upsert(&to_b).await.expect("upsert");
        routes.upsert(&to_b).await.expect("upsert is idempotent");
    });
    c.b.with_routes(RoutingMode::Tunnel, async |routes| {
        routes.upsert(&to_a).await.expect("upsert")
    });

    // The device: VNI, port, no learning, the MAC derived from the node IP, up.
    let device = ip_out(&[
        "-n",
        &c.a.ns.name,
        "-d",
        "link",
        "show",
        "dev",
        VXLAN_DEVICE,
    ]);
    assert!(device.contains("vxlan id 2 "), "{device}");
    assert!(device.contains("dstport 8472"), "{device}");
    assert!(device.contains("nolearning"), "{device}");
    assert!(device.contains(",UP"), "{device}");
    let mac_a = tunnel_mac(c.a.node_ip).to_string();
    let mac_b = tunnel_mac(c.b.node_ip).to_string();
    assert!(device.contains(&format!("link/ether {mac_a}")), "{device}");
    let rp_filter = c.a.ns.run(|| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{VXLAN_DEVICE}/rp_filter"))
            .expect("rp_filter")
    });
    assert_eq!(rp_filter.trim(), "0");

    // Per peer: the route over the tunnel, the neighbour and the FDB entry.
    let shown = c.a.routes_to(&c.b);
    assert!(
        shown.contains(&format!("10.0.2.0/24 via 192.168.50.2 dev {VXLAN_DEVICE}"))
            && shown.contains("onlink"),
        "{shown}"
    );
    let neigh = ip_out(&["-n", &c.a.ns.name, "neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(
        neigh.contains(&format!("192.168.50.2 lladdr {mac_b} PERMANENT")),
        "{neigh}"
    );
    let fdb = Command::new("bridge")
        .args(["-n", &c.a.ns.name, "fdb", "show", "dev", VXLAN_DEVICE])
        .output()
        .expect("bridge fdb show");
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(fdb.contains(&format!("{mac_b} dst 192.168.50.2")), "{fdb}");

    let (tx_before, rx_before) = c.a.vxlan_packets();
    let answer = exchange(&c.a, &c.b).expect("pod a reaches pod b through the tunnel");
    assert_eq!(answer, "pong 10.0.1.1 ping\n");
    let answer = exchange(&c.b, &c.a).expect("pod b reaches pod a through the tunnel");
    assert_eq!(answer, "pong 10.0.2.1 ping\n");
    let (tx_after, rx_after) = c.a.vxlan_packets();
    // Two connections' worth of segments each way (handshake, data, teardown).
    assert!(tx_after >= tx_before + 6, "tx {tx_before} -> {tx_after}");
    assert!(rx_after >= rx_before + 6, "rx {rx_before} -> {rx_after}");

    let (deleted, again, listed) = c.a.with_routes(RoutingMode::Tunnel, async |routes| {
        (
            routes.delete(&to_b).await.expect("delete"),
            routes.delete(&to_b).await.expect("delete again"),
            routes.list().await.expect("list"),
        )
    });
    assert!(deleted);
    assert!(!again);
    assert!(listed.is_empty());
    assert!(c.a.routes_to(&c.b).trim().is_empty());
    let neigh = ip_out(&["-n", &c.a.ns.name, "neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(!neigh.contains("192.168.50.2"), "{neigh}");
    assert!(unreachable(&c.a, &c.b), "route deleted");
}
