//! The life of a remote cluster: the configuration directory, cluster configuration checks,
//! heartbeat loss with state kept, resync sending only differences, reconnect on a changed
//! file, and draining on file removal or after the drain timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use model::identity::NumericIdentity;

const C2_POD_ID: u32 = (2 << 16) + 257;

async fn pod(backend: &dyn kvstore::Backend, ip: &str, pod: &str) {
    put(
        backend,
        &format!("cilium/state/ip/v1/default/{ip}"),
        &ip_json(ip, C2_POD_ID, "192.168.2.1", pod),
    )
    .await;
}

async fn basic_cluster(
    connector: &TestConnector,
    store: &str,
    cluster: &str,
    id: u32,
) -> Arc<dyn kvstore::Backend> {
    let backend = connector.add_store(store);
    cluster_config(&*backend, cluster, id, false, false).await;
    heartbeat(&*backend).await;
    backend
}

#[actix::test]
async fn only_valid_cluster_files_are_clusters() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    basic_cluster(&connector, "c2", "c2", 2).await;
    let mesh = start_mesh(connector, |_| {});
    let dir = mesh.dir.path();
    mesh.write_config("c2", "c2");
    mesh.write_config(LOCAL, "c2");
    mesh.write_config(".hidden", "c2");
    mesh.write_config("Bad_Name", "c2");
    std::fs::write(dir.join("notes"), "no etcd here\n").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();

    eventually("c2 connected", async || {
        mesh.status_of("c2").await.is_some_and(|s| s.connected)
    })
    .await;
    settle().await;
    let names: Vec<String> = mesh
        .status()
        .await
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, vec!["c2"]);
}

#[actix::test]
async fn invalid_cluster_configs_are_refused_with_a_failure() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    // c3 has no cluster configuration; c4 has id 0; c5 has the local id; c6 and c7 share one.
    connector.add_store("c3");
    basic_cluster(&connector, "c4", "c4", 0).await;
    basic_cluster(&connector, "c5", "c5", 1).await;
    basic_cluster(&connector, "c6", "c6", 7).await;
    basic_cluster(&connector, "c7", "c7", 7).await;
    let mesh = start_mesh(connector.clone(), |_| {});
    for cluster in ["c3", "c4", "c5", "c6", "c7"] {
        mesh.write_config(cluster, cluster);
    }

    let failed = async |cluster: &str, needle: &str| {
        mesh.status_of(cluster).await.is_some_and(|s| {
            !s.connected
                && !s.ready
                && s.num_failures >= 1
                && s.last_failure.is_some()
                && s.last_failure_message
                    .as_deref()
                    .is_some_and(|m| m.contains(needle))
        })
    };
    eventually("c3 missing", async || {
        failed("c3", "cilium/cluster-config/c3 is missing").await
    })
    .await;
    eventually("c4 id 0", async || {
        failed("c4", "invalid cluster id 0").await
    })
    .await;
    eventually("c5 local id", async || {
        failed("c5", "the id of the local cluster").await
    })
    .await;
    // Whichever of c6 and c7 connected first holds id 7; the other is refused.
    eventually("one of c6/c7 connected", async || {
        let c6 = mesh.status_of("c6").await.unwrap();
        let c7 = mesh.status_of("c7").await.unwrap();
        c6.connected != c7.connected
    })
    .await;
    let (winner, loser) = if mesh.status_of("c6").await.unwrap().connected {
        ("c6", "c7")
    } else {
        ("c7", "c6")
    };
    eventually("duplicate id refused", async || {
        failed(loser, &format!("already used by remote cluster {winner}")).await
    })
    .await;

    // The missing configuration is retried: once written, c3 connects.
    let c3 = connector.store("c3").client();
    cluster_config(&c3, "c3", 3, false, false).await;
    eventually("c3 connects", async || {
        mesh.status_of("c3")
            .await
            .is_some_and(|s| s.connected && s.ready)
    })
    .await;
}

#[actix::test]
async fn a_kvstore_that_stops_answering_fails_the_status_check_long_before_the_heartbeat() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = basic_cluster(&connector, "c2", "c2", 2).await;
    pod(&*remote, "10.2.1.1", "keep").await;
    let mesh = start_mesh(connector.clone(), |c| {
        c.status_check_interval = Duration::from_secs(5);
        c.status_check_failures = 3;
        c.backoff.initial = Duration::from_secs(60);
        c.backoff.max = Duration::from_secs(60);
    });
    mesh.write_config("c2", "c2");
    let r = &mesh.recorder;
    eventually("imported", async || r.ipcache().len() == 1).await;
    let before = r.len();

    connector.store("c2").set_unavailable(true);
    // Two failed checks are tolerated...
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(mesh.status_of("c2").await.unwrap().connected);
    // ...the third one ends the session, well inside the 2-minute heartbeat window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eventually("disconnected", async || {
        mesh.status_of("c2").await.is_some_and(|s| !s.connected)
    })
    .await;
    let status = mesh.status_of("c2").await.unwrap();
    assert!(
        status
            .last_failure_message
            .as_deref()
            .is_some_and(|m| m.contains("status checks")),
        "{status:?}"
    );
    // The imported state stays while the cluster is away.
    assert_eq!(r.len(), before);
    assert_eq!(status.num_endpoints, 1);
}

#[actix::test]
async fn heartbeat_loss_keeps_state_and_the_resync_sends_only_differences() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = basic_cluster(&connector, "c2", "c2", 2).await;
    put(
        &*remote,
        &format!("cilium/state/identities/v1/id/{C2_POD_ID}"),
        &identity_labels("web", "c2"),
    )
    .await;
    pod(&*remote, "10.2.1.1", "keep").await;
    pod(&*remote, "10.2.1.2", "change").await;
    pod(&*remote, "10.2.1.3", "remove").await;
    let mesh = start_mesh(connector.clone(), |c| {
        c.heartbeat_timeout = Duration::from_secs(30);
        // This test is about the heartbeat: the status check stays out of the way.
        c.status_check_interval = Duration::from_secs(3600);
        // Long enough that the status still shows the heartbeat failure, not a retry's.
        c.backoff.initial = Duration::from_secs(5);
        c.backoff.max = Duration::from_secs(5);
    });
    mesh.write_config("c2", "c2");
    let r = &mesh.recorder;
    eventually("imported", async || {
        r.ipcache().len() == 3 && r.identities().len() == 1
    })
    .await;

    // The remote etcd stops answering: watches stall, the heartbeat goes silent.
    let store = connector.store("c2");
    store.set_unavailable(true);
    let before = r.len();
    tokio::time::sleep(Duration::from_secs(31)).await;
    eventually("disconnected", async || {
        mesh.status_of("c2")
            .await
            .is_some_and(|s| !s.connected && s.num_failures >= 1)
    })
    .await;
    let status = mesh.status_of("c2").await.unwrap();
    assert!(
        status.last_failure_message.unwrap().contains("heartbeat"),
        "{:?}",
        status.status
    );
    // Imported state is kept while disconnected.
    assert_eq!(r.len(), before, "{:?}", r.since(before));
    assert_eq!(status.num_endpoints, 3);

    // While it is away, its state changes.
    connector.refuse("c2");
    store.set_unavailable(false);
    pod(&*remote, "10.2.1.2", "changed").await;
    remote
        .delete("cilium/state/ip/v1/default/10.2.1.3")
        .await
        .unwrap();
    pod(&*remote, "10.2.1.4", "new").await;
    heartbeat(&*remote).await;
    connector.allow("c2");

    eventually("reconnected and synced", async || {
        mesh.status_of("c2")
            .await
            .is_some_and(|s| s.connected && s.synced.endpoints)
    })
    .await;
    settle().await;
    let mut resync: Vec<(String, bool)> = r
        .since(before)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Upsert(m) => Some((m.key.prefix().to_string(), true)),
            Seen::Delete(m) => Some((m.key.prefix().to_string(), false)),
            Seen::Identities(m) => panic!("identities resent: {m:?}"),
            _ => None,
        })
        .collect();
    resync.sort();
    assert_eq!(
        resync,
        vec![
            ("10.2.1.2/32".to_owned(), true),
            ("10.2.1.3/32".to_owned(), false),
            ("10.2.1.4/32".to_owned(), true),
        ]
    );
    let pods: Vec<String> = r
        .ipcache()
        .values()
        .map(|e| e.k8s.clone().unwrap().pod_name)
        .collect();
    assert_eq!(pods, vec!["keep", "changed", "new"]);
}

#[actix::test]
async fn removing_the_config_file_drains_the_cluster() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = basic_cluster(&connector, "c2", "c2", 2).await;
    put(
        &*remote,
        "cilium/state/nodes/v1/c2/n1",
        &node_json("c2", "n1", 2, "192.168.2.1", "10.2.1.0"),
    )
    .await;
    put(
        &*remote,
        &format!("cilium/state/identities/v1/id/{C2_POD_ID}"),
        &identity_labels("web", "c2"),
    )
    .await;
    pod(&*remote, "10.2.1.1", "a").await;
    put(
        &*remote,
        "cilium/state/services/v1/c2/default/web",
        &service_json("c2", "web", 2, true, "10.2.1.1"),
    )
    .await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");
    let r = &mesh.recorder;
    let imported = async || {
        r.nodes().len() == 1
            && r.identities().len() == 1
            && r.ipcache().len() == 1
            && r.services().len() == 1
    };
    eventually("imported", imported).await;

    mesh.remove_config("c2");
    eventually("drained", async || {
        r.nodes().is_empty()
            && r.identities().is_empty()
            && r.ipcache().is_empty()
            && r.services().is_empty()
    })
    .await;
    assert!(mesh.status().await.is_empty());
    let removed_ids: Vec<NumericIdentity> = r
        .log()
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Identities(m) => Some(m.removed),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(removed_ids, vec![NumericIdentity::new(C2_POD_ID)]);

    // Adding it back imports it again (after the removals, never before).
    mesh.write_config("c2", "c2");
    eventually("imported again", imported).await;
}

#[actix::test]
async fn a_cluster_disconnected_past_the_drain_timeout_is_drained() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let remote = basic_cluster(&connector, "c2", "c2", 2).await;
    pod(&*remote, "10.2.1.1", "a").await;
    let mesh = start_mesh(connector.clone(), |c| {
        c.heartbeat_timeout = Duration::from_secs(30);
        c.drain_timeout = Some(Duration::from_secs(120));
    });
    mesh.write_config("c2", "c2");
    let r = &mesh.recorder;
    eventually("imported", async || r.ipcache().len() == 1).await;

    connector.store("c2").set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!mesh.status_of("c2").await.unwrap().connected);
    assert_eq!(r.ipcache().len(), 1, "kept within the drain timeout");

    tokio::time::sleep(Duration::from_secs(120)).await;
    eventually("drained", async || r.ipcache().is_empty()).await;
    assert_eq!(mesh.status_of("c2").await.unwrap().num_endpoints, 0);

    // When it comes back, it is imported again.
    connector.store("c2").set_unavailable(false);
    heartbeat(&*remote).await;
    eventually("back", async || r.ipcache().len() == 1).await;
}

#[actix::test]
async fn a_changed_config_file_reconnects_with_the_new_config() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let old = basic_cluster(&connector, "c2-old", "c2", 2).await;
    let new = basic_cluster(&connector, "c2-new", "c2", 2).await;
    pod(&*old, "10.2.1.1", "both").await;
    pod(&*old, "10.2.1.2", "old-only").await;
    pod(&*new, "10.2.1.1", "both").await;
    pod(&*new, "10.2.1.3", "new-only").await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2-old");
    let r = &mesh.recorder;
    eventually("old imported", async || r.ipcache().len() == 2).await;
    let before = r.len();

    mesh.write_config("c2", "c2-new");
    eventually("new imported", async || {
        let pods: Vec<String> = r
            .ipcache()
            .values()
            .map(|e| e.k8s.clone().unwrap().pod_name)
            .collect();
        pods == ["both", "new-only"]
    })
    .await;
    settle().await;
    // Only the difference: the shared pod is not sent again.
    let mut sent: Vec<String> = r
        .since(before)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Upsert(m) => Some(format!("+{}", m.key.prefix())),
            Seen::Delete(m) => Some(format!("-{}", m.key.prefix())),
            _ => None,
        })
        .collect();
    sent.sort();
    assert_eq!(sent, vec!["+10.2.1.3/32", "-10.2.1.2/32"]);
    let status = mesh.status_of("c2").await.unwrap();
    assert!(status.connected);
    assert_eq!(status.num_failures, 0);
}

#[actix::test]
async fn two_clusters_claiming_one_prefix_hand_it_over() {
    tokio::time::pause();
    let connector = Arc::new(TestConnector::default());
    let c2 = basic_cluster(&connector, "c2", "c2", 2).await;
    let c3 = basic_cluster(&connector, "c3", "c3", 3).await;
    put(
        &*c2,
        "cilium/state/ip/v1/default/10.9.0.1",
        &ip_json("10.9.0.1", C2_POD_ID, "192.168.2.1", "from-c2"),
    )
    .await;
    put(
        &*c3,
        "cilium/state/ip/v1/default/10.9.0.1",
        &ip_json("10.9.0.1", (3 << 16) + 257, "192.168.3.1", "from-c3"),
    )
    .await;
    let mesh = start_mesh(connector, |_| {});
    mesh.write_config("c2", "c2");
    mesh.write_config("c3", "c3");
    let r = &mesh.recorder;
    let owner = || {
        r.ipcache()
            .get(&ip_key("10.9.0.1/32"))
            .map(|e| e.k8s.clone().unwrap().pod_name)
    };
    eventually("both connected", async || {
        mesh.status()
            .await
            .iter()
            .all(|s| s.connected && s.num_endpoints == 1)
    })
    .await;
    assert_eq!(owner().as_deref(), Some("from-c2"));

    // c2's entry goes: the prefix passes to c3's claim instead of being deleted.
    c2.delete("cilium/state/ip/v1/default/10.9.0.1")
        .await
        .unwrap();
    eventually("handed over", async || {
        owner().as_deref() == Some("from-c3")
    })
    .await;
    c3.delete("cilium/state/ip/v1/default/10.9.0.1")
        .await
        .unwrap();
    eventually("deleted", async || owner().is_none()).await;
}
