//! The upstream connectivity-test cases for one node against the real binaries (root): one
//! `cilium-agent` in a fresh node namespace, pods created through `cilium-cni` with labels,
//! real TCP and ICMP between them. Every policy case checks both directions: the allowed
//! flow answers, the denied one does not connect within a short timeout and shows up in
//! `cilium-dbg bpf metrics list` with the upstream drop reason (133 policy denied, 181 denied
//! by a deny rule). Policies go in with `cilium-dbg policy import` and out with
//! `policy delete --all` between cases. A ClusterIP service balances across two backends
//! and survives the removal of one; CNI DEL leaves no veth, address or map entry behind.

#[path = "common/node.rs"]
mod node;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use node::{Agent, EchoServer, Netns, Node, Pod, icmp_echo_ok, tcp_ok};

const ALLOWED_WAIT: Duration = Duration::from_secs(3);
/// A dropped SYN never connects; a permitted one on a local veth takes well under 1 ms.
const DENIED_WAIT: Duration = Duration::from_millis(600);

const POLICY_DENIED: u64 = 133;
const DENY_RULE: u64 = 181;

fn allowed(from: &Netns, to: SocketAddrV4, what: &str) {
    assert!(tcp_ok(from, to, ALLOWED_WAIT), "{what}: {to} must answer");
}

/// The flow must not connect, and the agent's drop counter for `reason` must grow.
fn denied(agent: &Agent, from: &Netns, to: SocketAddrV4, reason: u64, what: &str) {
    let before = agent.drops(reason);
    assert!(
        !tcp_ok(from, to, DENIED_WAIT),
        "{what}: {to} must be dropped"
    );
    let after = agent.drops(reason);
    assert!(
        after > before,
        "{what}: no drop with reason {reason} counted ({before} -> {after})"
    );
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

/// Runs one case: imports `spec`, runs `check`, removes every rule again.
fn case(agent: &Agent, dir: &Path, name: &str, spec: &str, check: impl FnOnce()) {
    agent.import_policy(dir, &policy(name, spec));
    check();
    agent.delete_all_policies();
}

/// A namespace outside the cluster ("world") behind a veth from the node, answering on
/// two addresses of `subnet` (.10 and .20).
struct External {
    ns: Netns,
    near: Ipv4Addr,
    far: Ipv4Addr,
}

impl External {
    fn attach(node: &Node, pod_cidr: &str) -> External {
        let ns = Netns::add("cx");
        let host_if = node::unique("vx");
        let peer_if = node::unique("vy");
        node.ns.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &ns.name,
        ]);
        node.ns
            .ip(&["addr", "add", "192.168.77.1/24", "dev", &host_if]);
        node.ns.ip(&["link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", "192.168.77.10/24", "dev", &peer_if]);
        ns.ip(&["addr", "add", "192.168.77.20/24", "dev", &peer_if]);
        ns.ip(&["link", "set", &peer_if, "up"]);
        ns.ip(&["route", "add", pod_cidr, "via", "192.168.77.1"]);
        External {
            ns,
            near: Ipv4Addr::new(192, 168, 77, 10),
            far: Ipv4Addr::new(192, 168, 77, 20),
        }
    }
}

const POD_CIDR: &str = "10.203.0.0/24";

#[test]
fn privileged_connectivity_policy_cases() {
    let node = Node::new(POD_CIDR);
    let agent = node.start_agent("agent.log");
    let dir = node.dir.path();

    let client = Pod::add(&agent, &[("app", "client"), ("kind", "client")]);
    let client2 = Pod::add(&agent, &[("app", "client2"), ("kind", "client")]);
    let echo = Pod::add(&agent, &[("app", "echo"), ("kind", "echo")]);
    let other = Pod::add(&agent, &[("app", "other")]);
    let world = External::attach(&node, POD_CIDR);

    let _servers = [
        EchoServer::start(&echo.ns, echo.addr(8080)),
        EchoServer::start(&echo.ns, echo.addr(9090)),
        EchoServer::start(&echo.ns, echo.addr(7000)),
        EchoServer::start(&echo.ns, echo.addr(7001)),
        EchoServer::start(&echo.ns, echo.addr(7002)),
        EchoServer::start(&client.ns, client.addr(8080)),
        EchoServer::start(&client2.ns, client2.addr(8080)),
        EchoServer::start(&world.ns, SocketAddrV4::new(world.near, 8080)),
        EchoServer::start(&world.ns, SocketAddrV4::new(world.far, 8080)),
    ];

    // no-policies: everything connects, both ways, TCP and ICMP, pods and world.
    allowed(&client.ns, echo.addr(8080), "no-policies");
    allowed(&client2.ns, echo.addr(9090), "no-policies");
    allowed(&echo.ns, client.addr(8080), "no-policies");
    allowed(
        &client.ns,
        SocketAddrV4::new(world.far, 8080),
        "no-policies to world",
    );
    assert!(
        icmp_echo_ok(&client.ns, echo.ip, ALLOWED_WAIT),
        "no-policies: ping"
    );

    case(
        &agent,
        dir,
        "client-ingress",
        "  endpointSelector: {matchLabels: {app: client}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: echo}}]\n",
        || {
            allowed(&echo.ns, client.addr(8080), "client-ingress from echo");
            denied(
                &agent,
                &client2.ns,
                client.addr(8080),
                POLICY_DENIED,
                "client-ingress from client2",
            );
        },
    );

    case(
        &agent,
        dir,
        "echo-ingress",
        "  endpointSelector: {matchLabels: {app: echo}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {kind: client}}]\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n",
        || {
            allowed(&client.ns, echo.addr(8080), "echo-ingress client");
            allowed(&client2.ns, echo.addr(8080), "echo-ingress client2");
            denied(
                &agent,
                &client.ns,
                echo.addr(9090),
                POLICY_DENIED,
                "echo-ingress other port",
            );
            denied(
                &agent,
                &other.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "echo-ingress from a pod that is no client",
            );
        },
    );

    case(
        &agent,
        dir,
        "all-ingress-deny",
        "  endpointSelector: {matchLabels: {app: echo}}\n  ingress: [{}]\n",
        || {
            denied(
                &agent,
                &client.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "all-ingress-deny",
            );
            // Egress of echo is not selected; the reply comes back through conntrack.
            allowed(&echo.ns, client.addr(8080), "all-ingress-deny egress");
        },
    );

    case(
        &agent,
        dir,
        "all-egress-deny",
        "  endpointSelector: {matchLabels: {app: client}}\n  egress: [{}]\n",
        || {
            denied(
                &agent,
                &client.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "all-egress-deny to echo",
            );
            denied(
                &agent,
                &client.ns,
                SocketAddrV4::new(world.near, 8080),
                POLICY_DENIED,
                "all-egress-deny to world",
            );
            allowed(&client2.ns, echo.addr(8080), "all-egress-deny other pod");
            allowed(&echo.ns, client.addr(8080), "all-egress-deny ingress");
        },
    );

    case(
        &agent,
        dir,
        "client-egress",
        "  endpointSelector: {matchLabels: {app: client}}\n  egress:\n\
         \x20 - toEndpoints: [{matchLabels: {app: echo}}]\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n",
        || {
            allowed(&client.ns, echo.addr(8080), "client-egress port");
            denied(
                &agent,
                &client.ns,
                echo.addr(9090),
                POLICY_DENIED,
                "client-egress other port",
            );
            denied(
                &agent,
                &client.ns,
                client2.addr(8080),
                POLICY_DENIED,
                "client-egress other pod",
            );
        },
    );

    case(
        &agent,
        dir,
        "client-egress-expression",
        "  endpointSelector: {matchLabels: {app: client}}\n  egress:\n\
         \x20 - toEndpoints:\n\
         \x20   - matchExpressions:\n\
         \x20     - {key: kind, operator: In, values: [echo]}\n\
         \x20     - {key: app, operator: NotIn, values: [client2]}\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n",
        || {
            allowed(&client.ns, echo.addr(8080), "expression In");
            denied(
                &agent,
                &client.ns,
                client2.addr(8080),
                POLICY_DENIED,
                "expression not matched",
            );
        },
    );

    case(
        &agent,
        dir,
        "deny-overrides-allow",
        "  endpointSelector: {matchLabels: {app: echo}}\n  ingress:\n\
         \x20 - fromEndpoints: [{}]\n  ingressDeny:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client2}}]\n",
        || {
            allowed(&client.ns, echo.addr(8080), "allow-all ingress");
            denied(
                &agent,
                &client2.ns,
                echo.addr(8080),
                DENY_RULE,
                "ingressDeny wins",
            );
        },
    );

    case(
        &agent,
        dir,
        "echo-icmp",
        "  endpointSelector: {matchLabels: {app: echo}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client}}]\n\
         \x20   icmps: [{fields: [{type: 8, family: IPv4}]}]\n",
        || {
            assert!(
                icmp_echo_ok(&client.ns, echo.ip, ALLOWED_WAIT),
                "icmps type 8 allows ping"
            );
            let before = agent.drops(POLICY_DENIED);
            assert!(
                !icmp_echo_ok(&client2.ns, echo.ip, DENIED_WAIT),
                "ping from client2 must be dropped"
            );
            assert!(agent.drops(POLICY_DENIED) > before, "ICMP drop counted");
            denied(
                &agent,
                &client.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "ICMP rule does not allow TCP",
            );
        },
    );

    case(
        &agent,
        dir,
        "client-egress-cidr-except",
        "  endpointSelector: {matchLabels: {app: client}}\n  egress:\n\
         \x20 - toCIDRSet: [{cidr: 192.168.77.0/24, except: [192.168.77.20/32]}]\n",
        || {
            allowed(
                &client.ns,
                SocketAddrV4::new(world.near, 8080),
                "toCIDRSet inside",
            );
            denied(
                &agent,
                &client.ns,
                SocketAddrV4::new(world.far, 8080),
                POLICY_DENIED,
                "toCIDRSet except",
            );
            denied(
                &agent,
                &client.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "pods are not in the CIDR",
            );
        },
    );

    case(
        &agent,
        dir,
        "echo-port-range",
        "  endpointSelector: {matchLabels: {app: echo}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client}}]\n\
         \x20   toPorts: [{ports: [{port: '7000', endPort: 7001, protocol: TCP}]}]\n",
        || {
            allowed(&client.ns, echo.addr(7000), "range start");
            allowed(&client.ns, echo.addr(7001), "range end");
            denied(
                &agent,
                &client.ns,
                echo.addr(7002),
                POLICY_DENIED,
                "past endPort",
            );
            denied(
                &agent,
                &client.ns,
                echo.addr(8080),
                POLICY_DENIED,
                "outside the range",
            );
        },
    );

    // With every rule gone, everything connects again.
    allowed(&client2.ns, echo.addr(9090), "after the cases");
    allowed(&client2.ns, client.addr(8080), "after the cases");

    for pod in [&client, &client2, &echo, &other] {
        pod.del(&agent.socket);
    }
    assert_no_leftovers(&node, &agent, &[client.ip, client2.ip, echo.ip, other.ip]);
    agent.terminate();
}

#[test]
fn privileged_connectivity_cluster_ip_service() {
    let node = Node::new(POD_CIDR);
    let agent = node.start_agent("agent.log");

    let client = Pod::add(&agent, &[("app", "client")]);
    let backend_a = Pod::add(&agent, &[("app", "echo")]);
    let backend_b = Pod::add(&agent, &[("app", "echo")]);
    let server_a = EchoServer::start(&backend_a.ns, backend_a.addr(8080));
    let server_b = EchoServer::start(&backend_b.ns, backend_b.addr(8080));

    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let both = format!("{},{}", backend_a.addr(8080), backend_b.addr(8080));
    let vip_text = vip.to_string();
    agent.json(&[
        "service",
        "update",
        "--id",
        "7",
        "--frontend",
        &vip_text,
        "--backends",
        &both,
    ]);
    let lb = agent.json(&["bpf", "lb", "list"]);
    assert!(
        lb.to_string().contains("10.96.0.10"),
        "VIP in the LB maps: {lb}"
    );

    for n in 0..24 {
        allowed(&client.ns, vip, &format!("VIP connection {n}"));
    }
    let (a, b) = (server_a.accepted(), server_b.accepted());
    assert_eq!(a + b, 24, "every VIP connection reached a backend");
    assert!(a > 0 && b > 0, "both backends serve: {a} / {b}");

    // Remove backend b: the service keeps answering, only from a.
    let only_a = backend_a.addr(8080).to_string();
    agent.json(&[
        "service",
        "update",
        "--id",
        "7",
        "--frontend",
        &vip_text,
        "--backends",
        &only_a,
    ]);
    for n in 0..12 {
        allowed(&client.ns, vip, &format!("VIP after removal {n}"));
    }
    assert_eq!(server_a.accepted(), a + 12, "the remaining backend serves");
    assert_eq!(server_b.accepted(), b, "the removed backend gets nothing");
    let services = agent.json(&["service", "list"]);
    assert!(
        !services.to_string().contains(&backend_b.ip.to_string()),
        "removed backend still listed: {services}"
    );

    agent.json(&["service", "delete", "7"]);
    let lb = agent.json(&["bpf", "lb", "list"]);
    assert!(
        !lb.to_string().contains("10.96.0.10"),
        "VIP left in the LB maps: {lb}"
    );
    assert!(
        !tcp_ok(&client.ns, vip, DENIED_WAIT),
        "a deleted VIP does not answer"
    );

    drop((server_a, server_b));
    for pod in [&client, &backend_a, &backend_b] {
        pod.del(&agent.socket);
    }
    assert_no_leftovers(&node, &agent, &[client.ip, backend_a.ip, backend_b.ip]);
    agent.terminate();
}

/// After DEL of every pod: no host veth, no endpoint, no lxc or ipcache entry, no pod route,
/// no per-endpoint policy map pin, and IPAM has every address back.
fn assert_no_leftovers(node: &Node, agent: &Agent, ips: &[Ipv4Addr]) {
    assert_eq!(node.host_veths(), 0, "no veth left");
    let endpoints = agent.json(&["endpoint", "list"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(0), "{endpoints}");
    let lxc = agent.json(&["bpf", "endpoint", "list"]);
    assert_eq!(lxc["cache"].as_array().map(Vec::len), Some(0), "{lxc}");
    let status = agent.json(&["status"]);
    assert_eq!(status["ipam"]["allocated"], 0, "addresses released");
    let ipcache = agent.json(&["bpf", "ipcache", "list"]);
    let ipcache_ips: Vec<String> = ipcache["cache"]
        .as_array()
        .expect("ipcache entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .map(|k| k.split('/').next().unwrap_or(k).to_owned())
        .collect();
    let routes = node.ns.ip(&["route", "show"]);
    let addrs = node.ns.ip(&["-o", "addr", "show"]);
    for ip in ips {
        let bare = ip.to_string();
        assert!(
            !ipcache_ips.contains(&bare),
            "{ip} left in the ipcache: {ipcache}"
        );
        assert!(
            !routes
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&bare)),
            "pod route left: {routes}"
        );
        assert!(!addrs.contains(&bare), "pod address left: {addrs}");
    }
    let globals = node.fs.path().join("tc").join("globals");
    let policy_pins: Vec<String> = std::fs::read_dir(&globals)
        .expect("pin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("cilium_policy_v2_"))
        .collect();
    assert!(
        policy_pins.is_empty(),
        "endpoint policy maps left: {policy_pins:?}"
    );
}
