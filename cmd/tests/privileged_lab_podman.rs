//! Privileged (root) tests of podman-driven pods in the lab (`cilium lab pod create --runtime
//! podman`): a real container run by podman 4.3 (busybox rootfs, runc) whose network comes
//! from `cilium-cni` talking to the lab node's agent. The container gets an endpoint, an
//! identity and an address from its node's pod CIDR, its host-side veth sits in the node's
//! namespace, it talks TCP both ways with a lab pod on the other node, an ingress policy
//! applied with `cilium policy apply` turns a stranger away, and `lab down` leaves no
//! namespace, link, mount, cgroup, CNI cache, pinned BPF object or process behind, also when
//! the agent died and the pod's record was lost.
//!
//! Each lab has its own temp directory and a name derived from this process's PID and the
//! test, so the tests run in parallel with each other and with the other lab tests; a guard
//! runs `lab down` on drop, so a failing test leaves nothing behind either.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

#[path = "common/lab.rs"]
mod lab;

use lab::{CILIUM, Lab, mounts_where, running};

/// How long a fresh endpoint or policy may take to show in the datapath of both nodes.
const REACH: Duration = Duration::from_secs(20);

impl Lab {
    /// Whether `probe` gives `wanted` within [`REACH`], retried meanwhile.
    fn eventually(&self, what: &str, mut probe: impl FnMut() -> bool, wanted: bool) -> bool {
        let deadline = Instant::now() + REACH;
        loop {
            if probe() == wanted {
                return true;
            }
            if Instant::now() >= deadline {
                eprintln!("{what}: still {} after {REACH:?}", !wanted);
                return false;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Every path below `dir`, recursively (a bpffs holds directories of pins).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
            found.insert(entry.path());
        }
    }
    found
}

/// The names of the links of the host's namespace.
fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// What a lab may leave in the host, taken before it comes up.
struct Before {
    pins: BTreeSet<PathBuf>,
}

impl Before {
    fn take() -> Before {
        Before {
            pins: tree(Path::new("/sys/fs/bpf")),
        }
    }
}

/// Everything recorded about the lab (from its state file), to check after `down`.
struct Recorded {
    pids: Vec<i64>,
    netns: Vec<String>,
    cgroup_parent: Option<String>,
    cni_caches: Vec<PathBuf>,
    links: Vec<String>,
}

impl Recorded {
    fn of(lab: &Lab, links: Vec<String>) -> Recorded {
        let state = lab.state();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Recorded {
            pids: state["processes"]
                .as_array()
                .expect("processes")
                .iter()
                .filter_map(|p| p["pid"].as_i64())
                .collect(),
            netns: strings(&state["netns"]),
            cgroup_parent: state["podman"]["cgroup_parent"].as_str().map(str::to_owned),
            cni_caches: state["pods"]
                .as_array()
                .expect("pods")
                .iter()
                .filter(|p| p["runtime"] == "podman")
                .filter_map(|p| {
                    Some(PathBuf::from(format!(
                        "/var/lib/cni/results/{}-{}-eth0",
                        p["network"].as_str()?,
                        p["container_id"].as_str()?
                    )))
                })
                .collect(),
            links,
        }
    }
}

/// Nothing of the lab is left: namespaces (its own and podman's), mounts, processes (by
/// recorded PID and by the lab dir in their command line), podman's cgroups and CNI caches,
/// links in the host, new pins in /sys/fs/bpf, the state file.
fn assert_gone(lab: &Lab, before: &Before, recorded: &Recorded) {
    let mut netns = lab.namespaces_left();
    netns.extend(
        (recorded.netns.iter())
            .filter(|n| Path::new("/var/run/netns").join(n).exists())
            .cloned(),
    );
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let mut mounts = lab.mounts_left();
    mounts.extend(mounts_where(|l| {
        (recorded.netns.iter()).any(|n| l.contains(&format!("/netns/{n} ")))
    }));
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let alive: Vec<i64> = recorded
        .pids
        .iter()
        .copied()
        .filter(|p| running(*p))
        .collect();
    assert!(alive.is_empty(), "recorded processes left: {alive:?}");
    let using_dir = lab.processes_left();
    assert!(
        using_dir.is_empty(),
        "processes of the lab left: {using_dir:?}"
    );
    if let Some(parent) = &recorded.cgroup_parent {
        let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|e| {
                e.filter_map(Result::ok)
                    .map(|e| e.path().join(parent.trim_start_matches('/')))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "cgroups left: {left:?}");
    }
    let caches: Vec<&PathBuf> = recorded.cni_caches.iter().filter(|c| c.exists()).collect();
    assert!(caches.is_empty(), "CNI result caches left: {caches:?}");
    let links = host_links();
    let leaked: Vec<&String> = recorded
        .links
        .iter()
        .filter(|l| links.contains(*l))
        .collect();
    assert!(leaked.is_empty(), "links in the host: {leaked:?}");
    let pins: Vec<PathBuf> = tree(Path::new("/sys/fs/bpf"))
        .difference(&before.pins)
        .cloned()
        .collect();
    assert!(pins.is_empty(), "new pins in /sys/fs/bpf: {pins:?}");
    assert!(!lab.dir().join("state.json").exists(), "state file left");
    assert!(!lab.dir().join("podman").exists(), "podman dir left");
}

/// The pod named `name` in `lab pod list -o json`.
fn pod(lab: &Lab, name: &str) -> Value {
    let pods = lab.json(&["pod", "list"]);
    pods.as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {pods:#}"))
        .clone()
}

/// `a.b.c.d` inside `cidr`.
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: ipnet::Ipv4Net = cidr.parse().expect("pod CIDR");
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| net.contains(&ip))
}

/// Ingress to the podman pod only from `app=friend`, on TCP 80.
const POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "podman-friends-only"
spec:
  endpointSelector:
    matchLabels:
      app: boxed
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: friend
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

#[test]
fn privileged_lab_podman_pod_talks_to_a_lab_pod_and_obeys_policy() {
    let before = Before::take();
    let lab = Lab::new("lp");
    let started = Instant::now();
    lab.ok(&["up", "--clusters", "1", "--nodes", "2", "--name", &lab.name]);
    let up_took = started.elapsed();

    let created = Instant::now();
    let out = lab.ok(&[
        "pod",
        "create",
        "boxed",
        "--node",
        "c1-n1",
        "--runtime",
        "podman",
        "-l",
        "app=boxed",
    ]);
    let create_took = created.elapsed();
    assert!(out.contains("(podman)"), "{out}");
    lab.ok(&[
        "pod",
        "create",
        "friend",
        "--node",
        "c1-n2",
        "-l",
        "app=friend",
    ]);
    lab.ok(&[
        "pod",
        "create",
        "stranger",
        "--node",
        "c1-n2",
        "-l",
        "app=stranger",
    ]);
    // Podman passes no namespace to CNI: another namespace is refused with the reason.
    let other_ns = lab.run(&[
        "pod",
        "create",
        "x",
        "--node",
        "c1-n1",
        "--runtime",
        "podman",
        "-n",
        "kube",
    ]);
    assert!(!other_ns.status.success());
    assert!(
        String::from_utf8_lossy(&other_ns.stderr).contains("--runtime netns"),
        "{}",
        String::from_utf8_lossy(&other_ns.stderr)
    );

    let boxed = pod(&lab, "boxed");
    let friend = pod(&lab, "friend");
    assert_eq!(boxed["runtime"], "podman", "{boxed:#}");
    assert_eq!(friend["runtime"], "netns", "{friend:#}");
    assert_eq!(boxed["node"], "c1-n1");
    assert_eq!(boxed["namespace"], "default");
    let boxed_ip = boxed["ip"].as_str().expect("boxed ip").to_owned();
    let friend_ip = friend["ip"].as_str().expect("friend ip").to_owned();
    let status = lab.json(&["status"]);
    let cidr_of = |node: &str| {
        status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["pod_cidr"].as_str())
            .expect("node CIDR")
            .to_owned()
    };
    assert!(
        in_cidr(&boxed_ip, &cidr_of("c1-n1")),
        "{boxed_ip} is not in c1-n1's pod CIDR {}",
        cidr_of("c1-n1")
    );
    let identity = boxed["identity"].as_u64().expect("boxed identity");
    assert!(identity > 0);
    assert_ne!(Some(identity), friend["identity"].as_u64());
    // The podman container and conmon are recorded lab processes, and running.
    for component in ["podman default/boxed", "conmon default/boxed"] {
        let record = status["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["component"] == component)
            .unwrap_or_else(|| panic!("{component} not in {status:#}"));
        assert_eq!(record["running"], true, "{record:#}");
    }
    assert_eq!(status["healthy"], true, "{status:#}");

    // The agent of c1-n1 made the endpoint for podman's container id, and its veth is in the
    // node's namespace.
    let state = lab.state();
    let record = state["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "boxed")
        .expect("boxed recorded")
        .clone();
    let container_id = record["container_id"].as_str().expect("container id");
    assert_eq!(container_id.len(), 64, "podman's id: {record:#}");
    let endpoints = lab.dbg("c1-n1", &["endpoint", "list"]);
    let endpoint = endpoints
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["status"]["external-identifiers"]["container-id"] == container_id)
        .unwrap_or_else(|| panic!("no endpoint for {container_id}: {endpoints:#}"))
        .clone();
    assert_eq!(endpoint["status"]["state"], "ready", "{endpoint:#}");
    assert_eq!(
        endpoint["status"]["external-identifiers"]["k8s-pod-name"], "boxed",
        "{endpoint:#}"
    );
    let veth = endpoint["status"]["networking"]["interface-name"]
        .as_str()
        .expect("host veth")
        .to_owned();
    let node_netns = format!("{}-c1-n1", lab.name);
    let shown = Command::new("ip")
        .args(["-n", &node_netns, "link", "show", &veth])
        .output()
        .expect("ip link");
    assert!(
        shown.status.success(),
        "{veth} is not in {node_netns}: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(!host_links().contains(&veth), "{veth} is in the host");
    let podman_netns = record["netns"].as_str().expect("podman netns").to_owned();
    assert!(
        Path::new("/var/run/netns").join(&podman_netns).exists(),
        "podman's namespace {podman_netns} is not under /var/run/netns"
    );
    // `pod exec` runs inside the container: its eth0 holds the address CNI gave it.
    let inside = lab.ok(&["pod", "exec", "boxed", "--", "ip", "-4", "-o", "addr"]);
    assert!(
        inside.contains(&format!("inet {boxed_ip}/32")),
        "the container's addresses: {inside}"
    );

    // TCP both ways across the nodes: the lab pod reaches the container's echo server (nc on
    // port 80), the container reaches the lab pod's echo server with busybox nc.
    let boxed_addr = format!("{boxed_ip}:80");
    assert!(
        lab.eventually(
            "friend -> boxed",
            || lab.connects("friend", &boxed_addr),
            true
        ),
        "friend on c1-n2 cannot reach the podman pod on c1-n1\n{}",
        lab.logs()
    );
    let mut server = lab.serve_in("friend", 8080);
    let to_friend = format!("echo from-the-box | nc -w 2 {friend_ip} 8080");
    let answered = lab.eventually(
        "boxed -> friend",
        || {
            let out = lab.run(&["pod", "exec", "boxed", "--", "sh", "-c", &to_friend]);
            String::from_utf8_lossy(&out.stdout).contains("from-the-box")
        },
        true,
    );
    assert!(
        answered,
        "the podman pod cannot reach friend on c1-n2\n{}",
        lab.logs()
    );
    assert!(
        lab.eventually(
            "stranger -> boxed",
            || lab.connects("stranger", &boxed_addr),
            true
        ),
        "the stranger cannot reach the podman pod before any policy"
    );

    // An ingress policy through the cluster's etcd: only friends reach the container.
    let policy_file = lab.dir().join("podman-policy.yaml");
    std::fs::write(&policy_file, POLICY).expect("write policy");
    let etcd_config = lab.dir().join("etcd/c1.yaml");
    let applied = Command::new("ip")
        .args(["netns", "exec", &format!("{}-underlay", lab.name), CILIUM])
        .args(["policy", "apply", "--kvstore-opt"])
        .arg(format!("etcd.config={}", etcd_config.display()))
        .arg("-f")
        .arg(&policy_file)
        .env_remove("CILIUM_KVSTORE_OPT")
        .stdin(Stdio::null())
        .output()
        .expect("cilium policy apply");
    assert!(
        applied.status.success(),
        "cilium policy apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        lab.eventually(
            "stranger -> boxed",
            || lab.connects("stranger", &boxed_addr),
            false
        ),
        "the stranger still reaches the podman pod under the policy\n{}",
        lab.logs()
    );
    assert!(
        lab.connects("friend", &boxed_addr),
        "the policy turned the friend away too"
    );

    // `pod delete` of a netns pod leaves the podman pod alone.
    lab.ok(&["pod", "delete", "stranger"]);
    assert!(lab.connects("friend", &boxed_addr));

    let node_links = ["vc1-n1".to_owned(), "vc1-n2".to_owned(), veth];
    let recorded = Recorded::of(&lab, node_links.to_vec());
    assert!(recorded.pids.len() >= 9, "{:?}", recorded.pids);
    assert!(recorded.netns.contains(&podman_netns));
    assert_eq!(recorded.cni_caches.len(), 1);
    assert!(
        recorded.cni_caches.iter().all(|c| c.exists()),
        "podman keeps no CNI cache where the test looks: {:?}",
        recorded.cni_caches
    );
    let down_started = Instant::now();
    lab.ok(&["down"]);
    let down_took = down_started.elapsed();
    let _ = server.wait();
    assert_gone(&lab, &before, &recorded);
    lab.ok(&["down"]);
    eprintln!(
        "lab up (1 x 2) {up_took:.1?}, podman pod create {create_took:.1?}, down \
         {down_took:.1?}, whole test {:.1?}",
        started.elapsed()
    );
}

#[test]
fn privileged_lab_podman_pod_delete_and_down_after_a_crash() {
    let before = Before::take();
    let lab = Lab::new("lq");
    lab.ok(&["up", "--kvstore", "memory", "--name", &lab.name]);
    lab.ok(&[
        "pod",
        "create",
        "boxed",
        "--node",
        "c1-n1",
        "--runtime",
        "podman",
        "-l",
        "app=boxed",
    ]);
    // A command of our own instead of the echo server; `pod exec` runs in the container.
    lab.ok(&[
        "pod",
        "create",
        "sleeper",
        "--node",
        "c1-n1",
        "--runtime",
        "podman",
        "--",
        "sleep",
        "100000",
    ]);
    let ps = lab.ok(&["pod", "exec", "sleeper", "--", "ps"]);
    assert!(ps.contains("sleep 100000"), "{ps}");

    // `pod delete` of a podman pod: podman removes the container (CNI DEL: the agent drops
    // the endpoint), the lab its network, namespace and process records.
    lab.ok(&[
        "pod",
        "create",
        "gone",
        "--node",
        "c1-n1",
        "--runtime",
        "podman",
    ]);
    let gone = lab.state()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "gone")
        .expect("gone recorded")
        .clone();
    let gone_pids: Vec<i64> = lab.state()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| {
            p["component"]
                .as_str()
                .is_some_and(|c| c.ends_with("/gone"))
        })
        .filter_map(|p| p["pid"].as_i64())
        .collect();
    assert_eq!(gone_pids.len(), 2, "container and conmon recorded");
    assert_eq!(
        lab.dbg("c1-n1", &["endpoint", "list"])
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    lab.ok(&["pod", "delete", "gone"]);
    assert_eq!(
        lab.dbg("c1-n1", &["endpoint", "list"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let listed = lab.json(&["pod", "list"]);
    assert!(
        listed
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["name"] != "gone")),
        "{listed:#}"
    );
    let gone_netns = gone["netns"].as_str().expect("netns");
    assert!(!Path::new("/var/run/netns").join(gone_netns).exists());
    assert!(gone_pids.iter().all(|p| !running(*p)), "{gone_pids:?}");
    let conflist = lab.dir().join(format!(
        "podman/net.d/{}.conflist",
        gone["network"].as_str().expect("network")
    ));
    assert!(!conflist.exists(), "{} left", conflist.display());
    assert_eq!(lab.json(&["status"])["healthy"], true);

    let recorded = Recorded::of(&lab, Vec::new());
    assert_eq!(recorded.cni_caches.len(), 2);

    // The lab crashes: the agent dies, and the sleeper's record is lost as if `pod create`
    // had died right after podman started it. `down` still removes everything.
    let state = lab.state();
    let agent = state["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["component"] == "agent c1-n1")
        .and_then(|p| p["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .expect("agent pid");
    kill(Pid::from_raw(agent), Signal::SIGKILL).expect("SIGKILL the agent");
    let mut state = state;
    let lost = state["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "sleeper")
        .and_then(|p| p["netns"].as_str())
        .expect("sleeper netns")
        .to_owned();
    state["pods"]
        .as_array_mut()
        .expect("pods")
        .retain(|p| p["name"] != "sleeper");
    state["netns"]
        .as_array_mut()
        .expect("netns")
        .retain(|n| *n != lost.as_str());
    state["processes"]
        .as_array_mut()
        .expect("processes")
        .retain(|p| {
            !p["component"]
                .as_str()
                .is_some_and(|c| c.ends_with("/sleeper"))
        });
    std::fs::write(lab.dir().join("state.json"), state.to_string()).expect("write state");

    lab.ok(&["down"]);
    assert_gone(&lab, &before, &recorded);
}
