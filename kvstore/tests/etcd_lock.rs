//! etcd-specific lock behaviour: the ownership key layout, the lock-session lease and its
//! replacement, and a stopped etcd. Mutual exclusion itself is in the conformance suite.

use std::time::Duration;

use kvstore::etcd::EtcdBackend;
use kvstore::testing::etcd::EtcdServer;
use kvstore::{Backend, Error, LeaseId};

async fn server() -> EtcdServer {
    match EtcdServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("cannot start etcd: {error}"),
    }
}

/// The lease hex of an ownership key `<name>/<lease hex>`.
fn lease_of(name: &str, key: &str) -> LeaseId {
    let hex = key
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or_else(|| panic!("{key} is not {name}/<lease>"));
    LeaseId(i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{hex}: {e}")))
}

#[tokio::test]
async fn ownership_key_is_attached_to_a_25s_session_lease_that_is_replaced_when_lost() {
    let server = server().await;
    let client = server.client().await;
    let name = "cilium/state/identities/v1/locks/k8s:app=foo;";

    let first = client.lock(name).await.unwrap();
    assert_eq!(first.name, name);
    let session = lease_of(name, &first.key);
    let owner = client
        .get(&first.key)
        .await
        .unwrap()
        .expect("ownership key");
    assert_eq!(owner.lease, Some(session));
    let ttl = server
        .etcdctl(&["lease", "timetolive", &session.to_string()])
        .await
        .unwrap();
    assert!(ttl.contains("granted with TTL(25s)"), "{ttl}");

    // The same session serves the next lock.
    client.unlock(first.clone()).await.unwrap();
    assert_eq!(client.get(&first.key).await.unwrap(), None);
    let second = client.lock(name).await.unwrap();
    assert_eq!(second.key, first.key);
    client.unlock(second).await.unwrap();

    // The session lease disappears (expiry, revocation): the next lock gets a new session.
    server
        .etcdctl(&["lease", "revoke", &session.to_string()])
        .await
        .unwrap();
    let third = client.lock(name).await.unwrap();
    let renewed = lease_of(name, &third.key);
    assert_ne!(renewed, session);
    assert_eq!(
        client.keep_alive(renewed).await.unwrap(),
        Duration::from_secs(25)
    );
    client.unlock(third).await.unwrap();
}

#[tokio::test]
async fn lock_on_a_stopped_etcd_fails_instead_of_hanging() {
    let server = server().await;
    let mut config = server.config();
    config.request_timeout = Duration::from_secs(2);
    let with_session = EtcdBackend::connect(&config).await.unwrap();
    let held = with_session.lock("l").await.unwrap();
    with_session.unlock(held).await.unwrap();
    let fresh = EtcdBackend::connect(&config).await.unwrap();
    server.stop().await.unwrap();

    for (who, client) in [
        ("with a session", &with_session),
        ("without a session", &fresh),
    ] {
        match tokio::time::timeout(Duration::from_secs(15), client.lock("l")).await {
            Ok(Err(Error::Unavailable { .. })) => {}
            other => panic!("lock {who} on a stopped etcd: {other:?}"),
        }
    }
    let key = kvstore::LockKey {
        name: "l".into(),
        key: "l/1".into(),
    };
    assert!(matches!(
        with_session.unlock(key).await,
        Err(Error::Unavailable { op: "unlock", .. })
    ));
}
