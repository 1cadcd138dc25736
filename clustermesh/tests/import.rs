//! Importing a remote cluster's state in upstream's wire format: nodes, identities, ipcache
//! entries and services, the rejection of values claiming another cluster, sync canaries, and
//! kvstoremesh's cache prefix.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::keys::POLICY_CLUSTER;

const C2_POD_ID: u32 = (2 << 16) + 257;

/// Writes one record of each kind for cluster `c2` (id 2) below `base` prefixes.
async fn populate(backend: &dyn kvstore::Backend, cached: bool) {
    let (nodes, ids, ips, svcs) = if cached {
        (
            "cilium/cache/nodes/v1/c2",
            "cilium/cache/identities/v1/c2/id",
            "cilium/cache/ip/v1/c2",
            "cilium/cache/services/v1/c2",
        )
    } else {
        (
            "cilium/state/nodes/v1/c2",
            "cilium/state/identities/v1/id",
            "cilium/state/ip/v1/default",
            "cilium/state/services/v1/c2",
        )
    };
    put(
        backend,
        &format!("{nodes}/n1"),
        &node_json("c2", "n1", 2, "192.168.2.1", "10.2.1.0"),
    )
    .await;
    put(
        backend,
        &format!("{ids}/{C2_POD_ID}"),
        &identity_labels("web", "c2"),
    )
    .await;
    put(
        backend,
        &format!("{ips}/10.2.1.5"),
        &ip_json("10.2.1.5", C2_POD_ID, "192.168.2.1", "web-1"),
    )
    .await;
    put(
        backend,
        &format!("{svcs}/default/web"),
        &service_json("c2", "web", 2, true, "10.2.1.5"),
    )
    .await;
}

#[actix::test]
async fn upstream_records_are_imported() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = connector.add_store("c2");
    cluster_config(&*remote, "c2", 2, false, false).await;
    populate(&*remote, false).await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");

    let r = &mesh.recorder;
    eventually("everything imported", async || {
        r.nodes().len() == 1
            && r.identities().len() == 1
            && r.ipcache().len() == 1
            && r.services().len() == 1
    })
    .await;

    let node = &r.nodes()[&(name("c2"), "n1".to_owned())];
    assert_eq!(node.cluster_id, 2);
    assert_eq!(
        node.ipv4_alloc_cidr.unwrap().net().to_string(),
        "10.2.1.0/24"
    );

    let labels = &r.identities()[&NumericIdentity::new(C2_POD_ID)];
    assert_eq!(labels.get(POLICY_CLUSTER).unwrap().value, "c2");
    assert_eq!(labels.get("app").unwrap().value, "web");

    // The key uses cluster 0, as the BPF lookup does; the entry tunnels to the remote node.
    let entry = &r.ipcache()[&ip_key("10.2.1.5/32")];
    assert_eq!(entry.identity, NumericIdentity::new(C2_POD_ID));
    assert_eq!(
        entry.host_ip,
        Some("192.168.2.1".parse::<IpAddr>().unwrap())
    );
    let k8s = entry.k8s.as_ref().unwrap();
    assert_eq!(
        (k8s.namespace.as_str(), k8s.pod_name.as_str()),
        ("default", "web-1")
    );

    let svc = &r.services()[&(name("c2"), "default".to_owned(), "web".to_owned())];
    assert!(svc.shared);
    assert!(svc.backends.contains_key("10.2.1.5"));

    eventually("status synced", async || {
        mesh.status_of("c2")
            .await
            .is_some_and(|s| s.synced.nodes && s.synced.services)
    })
    .await;
    let status = mesh.status_of("c2").await.unwrap();
    assert!(status.connected && status.ready, "{status:?}");
    assert!(status.synced.identities && status.synced.endpoints);
    assert_eq!(
        (
            status.num_nodes,
            status.num_identities,
            status.num_endpoints,
            status.num_shared_services
        ),
        (1, 1, 1, 1)
    );
    let config = status.config.unwrap();
    assert_eq!(
        (config.cluster_id, config.kvstoremesh, config.sync_canaries),
        (2, false, false)
    );
    assert_eq!(status.num_failures, 0);

    // Later changes follow: a second pod, and the first one's deletion.
    put(
        &*remote,
        "cilium/state/ip/v1/default/10.2.1.6",
        &ip_json("10.2.1.6", C2_POD_ID, "192.168.2.1", "web-2"),
    )
    .await;
    remote
        .delete("cilium/state/ip/v1/default/10.2.1.5")
        .await
        .unwrap();
    eventually("ipcache follows", async || {
        let ips = r.ipcache();
        ips.len() == 1 && ips.contains_key(&ip_key("10.2.1.6/32"))
    })
    .await;

    // The status serialises with upstream's field names.
    let json = serde_json::to_value(mesh.status_of("c2").await.unwrap()).unwrap();
    assert_eq!(json["num-nodes"], 1);
    assert_eq!(json["config"]["cluster-id"], 2);
    assert_eq!(json["synced"]["endpoints"], true);
}

#[actix::test]
async fn values_claiming_another_cluster_are_rejected() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = connector.add_store("c2");
    cluster_config(&*remote, "c2", 2, false, false).await;
    populate(&*remote, false).await;
    let c3_id = (3 << 16) + 300;
    let remote = &*remote;
    // Identities: one of cluster 3's range, one in range but labelled with another cluster,
    // one undecodable.
    put(
        remote,
        &format!("cilium/state/identities/v1/id/{c3_id}"),
        &identity_labels("evil", "c3"),
    )
    .await;
    put(
        remote,
        &format!("cilium/state/identities/v1/id/{}", C2_POD_ID + 1),
        &identity_labels("evil", "c3"),
    )
    .await;
    put(
        remote,
        &format!("cilium/state/identities/v1/id/{}", C2_POD_ID + 2),
        "not a label string",
    )
    .await;
    // ipcache: an identity of cluster 3, a local-scope (CIDR) identity, a key that is not the
    // entry's prefix; a reserved identity is fine (world), and a remote `host` is a remote node.
    put(
        remote,
        "cilium/state/ip/v1/default/10.3.0.1",
        &ip_json("10.3.0.1", c3_id, "192.168.3.1", "evil"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/10.2.9.9",
        &ip_json("10.2.9.9", (1 << 24) | 5, "192.168.2.1", "cidr"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/10.2.7.7",
        &ip_json("10.2.7.8", C2_POD_ID, "192.168.2.1", "moved"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/10.2.8.8",
        &ip_json("10.2.8.8", 2, "192.168.2.1", "world"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/192.168.2.1",
        &ip_json("192.168.2.1", 1, "192.168.2.1", "host"),
    )
    .await;
    // Nodes and services naming another cluster or cluster id.
    put(
        remote,
        "cilium/state/nodes/v1/c2/n2",
        &node_json("c3", "n2", 2, "192.168.2.2", "10.2.2.0"),
    )
    .await;
    put(
        remote,
        "cilium/state/nodes/v1/c2/n3",
        &node_json("c2", "n3", 3, "192.168.2.3", "10.2.3.0"),
    )
    .await;
    put(
        remote,
        "cilium/state/nodes/v1/c2/n4",
        &node_json("c2", "other-name", 2, "192.168.2.4", "10.2.4.0"),
    )
    .await;
    put(
        remote,
        "cilium/state/services/v1/c2/default/api",
        &service_json("c3", "api", 2, true, "10.2.1.5"),
    )
    .await;
    put(
        remote,
        "cilium/state/services/v1/c2/default/db",
        &service_json("c2", "db", 7, true, "10.2.1.5"),
    )
    .await;
    put(
        remote,
        "cilium/state/services/v1/c2/default/garbage",
        "{not json",
    )
    .await;

    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");
    eventually("synced", async || {
        mesh.status_of("c2").await.is_some_and(|s| {
            s.synced.nodes && s.synced.identities && s.synced.endpoints && s.synced.services
        })
    })
    .await;
    settle().await;

    let r = &mesh.recorder;
    let ids: Vec<u32> = r.identities().keys().map(|id| id.get()).collect();
    assert_eq!(ids, vec![C2_POD_ID]);
    let ips = r.ipcache();
    let prefixes: Vec<String> = ips.keys().map(|k| k.prefix().to_string()).collect();
    assert_eq!(
        prefixes,
        vec!["10.2.1.5/32", "10.2.8.8/32", "192.168.2.1/32"]
    );
    assert_eq!(ips[&ip_key("10.2.8.8/32")].identity, NumericIdentity::WORLD);
    assert_eq!(
        ips[&ip_key("192.168.2.1/32")].identity,
        NumericIdentity::REMOTE_NODE
    );
    let nodes: Vec<String> = r.nodes().into_keys().map(|(_, n)| n).collect();
    assert_eq!(nodes, vec!["n1"]);
    let services: Vec<String> = r.services().into_keys().map(|(_, _, n)| n).collect();
    assert_eq!(services, vec!["web"]);

    // A key that turns bad drops what it had imported; the others stay.
    put(
        remote,
        "cilium/state/nodes/v1/c2/n1",
        &node_json("c3", "n1", 2, "192.168.2.1", "10.2.1.0"),
    )
    .await;
    eventually("node dropped", async || r.nodes().is_empty()).await;
    assert_eq!(r.ipcache().len(), 3);
    assert_eq!(r.identities().len(), 1);

    // Every message sent to the identity actor stays inside cluster 2's range.
    for seen in r.log() {
        if let Seen::Identities(msg) = seen {
            assert_eq!(msg.cluster, ClusterId::new(2));
            assert!(
                msg.added
                    .iter()
                    .all(|(id, _)| ClusterId::new(2).contains(*id))
            );
        }
    }
}

#[actix::test]
async fn sync_canaries_gate_synced_but_not_the_import() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = connector.add_store("c2");
    cluster_config(&*remote, "c2", 2, true, false).await;
    populate(&*remote, false).await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");

    let r = &mesh.recorder;
    eventually("imported", async || {
        r.nodes().len() == 1 && r.ipcache().len() == 1
    })
    .await;
    settle().await;
    let status = mesh.status_of("c2").await.unwrap();
    assert!(status.connected);
    assert_eq!(status.synced, clustermesh::RemoteClusterSynced::default());
    assert!(status.config.unwrap().sync_canaries);

    canary(&*remote, "c2", "cilium/state/nodes/v1").await;
    eventually("nodes synced", async || {
        mesh.status_of("c2").await.is_some_and(|s| s.synced.nodes)
    })
    .await;
    let status = mesh.status_of("c2").await.unwrap();
    assert!(!status.synced.identities && !status.synced.endpoints && !status.synced.services);

    canary(&*remote, "c2", "cilium/state/identities/v1").await;
    canary(&*remote, "c2", "cilium/state/ip/v1").await;
    canary(&*remote, "c2", "cilium/state/services/v1").await;
    eventually("all synced", async || {
        mesh.status_of("c2")
            .await
            .is_some_and(|s| s.synced.identities && s.synced.endpoints && s.synced.services)
    })
    .await;
}

#[actix::test]
async fn kvstoremesh_cache_is_read_under_the_cache_prefix() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = connector.add_store("c2");
    cluster_config(&*remote, "c2", 2, true, true).await;
    populate(&*remote, true).await;
    // The state prefix of the store (this is a kvstoremesh etcd) is not the remote's.
    put(
        &*remote,
        "cilium/state/nodes/v1/c2/stray",
        &node_json("c2", "stray", 2, "192.168.2.9", "10.2.9.0"),
    )
    .await;
    for prefix in ["nodes/v1", "identities/v1", "ip/v1", "services/v1"] {
        canary(&*remote, "c2", &format!("cilium/cache/{prefix}")).await;
    }
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");

    eventually("synced from the cache", async || {
        mesh.status_of("c2").await.is_some_and(|s| {
            s.synced.nodes && s.synced.identities && s.synced.endpoints && s.synced.services
        })
    })
    .await;
    let r = &mesh.recorder;
    let nodes: Vec<String> = r.nodes().into_keys().map(|(_, n)| n).collect();
    assert_eq!(nodes, vec!["n1"]);
    assert_eq!(r.identities().len(), 1);
    assert!(r.ipcache().contains_key(&ip_key("10.2.1.5/32")));
    assert_eq!(r.services().len(), 1);
    assert!(
        mesh.status_of("c2")
            .await
            .unwrap()
            .config
            .unwrap()
            .kvstoremesh
    );
}

/// An entry written with a `/32` mask: its key name is `address/32`, not the address.
fn masked_ip_json(ip: &str, pod: &str) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(&ip_json(ip, C2_POD_ID, "192.168.2.1", pod)).unwrap();
    value["Mask"] = "/////w==".into();
    value.to_string()
}

#[actix::test]
async fn key_names_other_than_the_address_are_imported_handed_over_and_drained() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = connector.add_store("c2");
    cluster_config(&*remote, "c2", 2, false, false).await;
    populate(&*remote, false).await;
    let remote = &*remote;
    // Two keys of one cluster claim 10.2.1.6/32: the address and its `/32` form. A third key
    // has a path before the address.
    put(
        remote,
        "cilium/state/ip/v1/default/10.2.1.6/32",
        &masked_ip_json("10.2.1.6", "masked"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/10.2.1.6",
        &ip_json("10.2.1.6", C2_POD_ID, "192.168.2.1", "plain"),
    )
    .await;
    put(
        remote,
        "cilium/state/ip/v1/default/extra/10.2.1.7",
        &ip_json("10.2.1.7", C2_POD_ID, "192.168.2.1", "extra"),
    )
    .await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");

    let r = &mesh.recorder;
    let pod_of = |ip: &str| {
        r.ipcache()
            .get(&ip_key(ip))
            .and_then(|e| e.k8s.clone())
            .map(|k8s| k8s.pod_name)
    };
    eventually("imported", async || r.ipcache().len() == 3).await;
    settle().await;
    // The key names of one cluster sort as strings: the address before its `/32` form.
    assert_eq!(pod_of("10.2.1.6/32").as_deref(), Some("plain"));
    assert_eq!(pod_of("10.2.1.7/32").as_deref(), Some("extra"));
    assert_eq!(mesh.status_of("c2").await.unwrap().num_endpoints, 4);

    // Deleting the effective key hands the prefix to the other one.
    remote
        .delete("cilium/state/ip/v1/default/10.2.1.6")
        .await
        .unwrap();
    eventually("handed over", async || {
        pod_of("10.2.1.6/32").as_deref() == Some("masked")
    })
    .await;
    remote
        .delete("cilium/state/ip/v1/default/extra/10.2.1.7")
        .await
        .unwrap();
    eventually("extra removed", async || pod_of("10.2.1.7/32").is_none()).await;
    assert_eq!(mesh.status_of("c2").await.unwrap().num_endpoints, 2);

    // Removing the cluster removes what every key imported.
    mesh.remove_config("c2");
    eventually("drained", async || r.ipcache().is_empty()).await;
}
