//! [`NetlinkLinks`] against the kernel (root): a "node" namespace in which the calls run (as
//! the agent runs in the node's namespace) and a pod namespace. Checks the configuration with
//! `ip`, and that deletion and failed creations leave nothing behind. No programs are
//! attached, so no traffic is checked here (that is `privileged_traffic`'s job).

mod privileged_common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use datapath::api::{EndpointId, EndpointLinkSpec, EndpointLinks, LinkError, MacAddr};
use datapath::link::NetlinkLinks;
use privileged_common::{Netns, unique};

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

/// Runs `f` with the links on a current-thread runtime inside the node namespace.
fn in_node<T: Send>(node: &Netns, f: impl AsyncFnOnce(&NetlinkLinks) -> T + Send) -> T {
    node.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let links = NetlinkLinks::new();
        runtime.block_on(f(&links))
    })
}

fn spec(pod: &Netns, host_ifname: &str, pod_ip: Ipv4Addr) -> EndpointLinkSpec {
    EndpointLinkSpec {
        endpoint: EndpointId::new(17),
        host_ifname: host_ifname.to_owned(),
        pod_netns: pod.path(),
        pod_ifname: "eth0".to_owned(),
        pod_ip,
        gateway: Ipv4Addr::new(10, 77, 0, 1),
        mtu: 1450,
    }
}

/// Whether some line of `routes` starts with `prefix` and contains `scope link` when asked.
fn has_route(routes: &str, prefix: &str, scope_link: bool) -> bool {
    routes
        .lines()
        .any(|line| line.starts_with(prefix) && (!scope_link || line.contains("scope link")))
}

fn links_of(ns: &Netns) -> String {
    ip_out(&["-n", &ns.name, "-o", "link", "show"])
}

#[test]
fn privileged_create_configures_both_sides_and_delete_leaves_nothing() {
    let node = Netns::add("lkn");
    let pod = Netns::add("lkp");
    let host = unique("lxc");
    let pod_ip = Ipv4Addr::new(10, 77, 0, 23);
    let spec = spec(&pod, &host, pod_ip);

    let (info, again, got) = in_node(&node, async |links| {
        let info = links.create(&spec).await.expect("create");
        let again = links.create(&spec).await;
        let got = links.get(&host).await.expect("get");
        (info, again, got)
    });
    assert!(
        matches!(again, Err(LinkError::Exists { ref ifname }) if *ifname == host),
        "{again:?}"
    );

    // Node side: up, MTU, MAC, route to the pod, permanent neighbour entry, rp_filter off.
    let host_link = ip_out(&["-n", &node.name, "-o", "link", "show", &host]);
    assert!(host_link.contains("mtu 1450"), "{host_link}");
    assert!(host_link.contains(",UP"), "{host_link}");
    assert_eq!(info.host_ifindex, node.ifindex(&host));
    assert_eq!(info.host_mac, MacAddr(node.mac(&host)));
    let node_routes = ip_out(&["-n", &node.name, "-4", "route", "show"]);
    assert!(
        has_route(&node_routes, &format!("{pod_ip} dev {host} "), true),
        "{node_routes}"
    );
    let neigh = ip_out(&["-n", &node.name, "neigh", "show", "dev", &host]);
    assert!(
        neigh.contains(&format!("{pod_ip} lladdr {} PERMANENT", info.pod_mac)),
        "{neigh}"
    );
    let rp_filter = node.run(|| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{host}/rp_filter"))
            .expect("rp_filter")
    });
    assert_eq!(rp_filter.trim(), "0");
    let forward = node.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"));
    assert_eq!(forward.expect("ip_forward").trim(), "1");

    // Pod side: eth0 up with the /32, link route to the gateway, default via it, no IPv6.
    assert_eq!(info.pod_mac, MacAddr(pod.mac("eth0")));
    assert_eq!(info.pod_ifindex, pod.ifindex("eth0"));
    let addrs = ip_out(&["-n", &pod.name, "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {pod_ip}/32")), "{addrs}");
    assert!(!addrs.contains("inet6"), "IPv6 left on: {addrs}");
    let pod_routes = ip_out(&["-n", &pod.name, "-4", "route", "show"]);
    assert!(
        has_route(&pod_routes, "default via 10.77.0.1 dev eth0", false),
        "{pod_routes}"
    );
    assert!(
        has_route(&pod_routes, "10.77.0.1 dev eth0 ", true),
        "{pod_routes}"
    );
    assert!(
        !links_of(&pod).contains("tmp"),
        "the temporary name is gone"
    );

    // get finds the pair again from the node side, with the pod's MAC.
    let got = got.expect("pair found");
    assert_eq!(got.host_ifindex, info.host_ifindex);
    assert_eq!(got.pod_mac, info.pod_mac);
    assert_eq!(got.mtu, 1450);

    let (deleted, deleted_again, gone) = in_node(&node, async |links| {
        (
            links.delete(&host).await.expect("delete"),
            links.delete(&host).await.expect("delete again"),
            links.get(&host).await.expect("get"),
        )
    });
    assert!(deleted);
    assert!(!deleted_again);
    assert!(gone.is_none());
    assert!(!links_of(&node).contains(&host));
    assert!(!links_of(&pod).contains("eth0"));
    let node_routes = ip_out(&["-n", &node.name, "-4", "route", "show"]);
    assert!(!node_routes.contains(&pod_ip.to_string()), "{node_routes}");
}

#[test]
fn privileged_a_failed_create_leaves_nothing() {
    let node = Netns::add("lkn");
    let pod = Netns::add("lkp");
    // The pod already has an eth0: renaming the peer fails inside the pod namespace.
    let other = unique("oth");
    pod.exec(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", &other,
    ]);
    let host = unique("lxc");
    let spec = spec(&pod, &host, Ipv4Addr::new(10, 77, 0, 24));
    let result = in_node(&node, async |links| links.create(&spec).await);
    assert!(
        matches!(result, Err(LinkError::Netlink { step, .. }) if step == "renaming the pod interface"),
        "{result:?}"
    );
    assert!(!links_of(&node).contains(&host));
    let pod_links = links_of(&pod);
    assert!(!pod_links.contains("tmp"), "{pod_links}");

    // A namespace that does not exist fails before anything is created.
    let mut missing = spec.clone();
    missing.pod_netns = PathBuf::from("/var/run/netns").join(unique("none"));
    let result = in_node(&node, async |links| links.create(&missing).await);
    assert!(matches!(result, Err(LinkError::Netns { .. })), "{result:?}");
    assert!(!links_of(&node).contains(&host));
}
