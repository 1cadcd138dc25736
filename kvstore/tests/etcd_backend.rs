//! etcd-specific behaviour of the etcd backend against a private etcd per test: what the
//! backend-neutral conformance suite cannot express (etcdctl cross-checks, restarts, compaction
//! while disconnected, TLS configuration, a stopped server).

use std::time::Duration;

use futures::StreamExt;
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use kvstore::testing::etcd::EtcdServer;
use kvstore::{
    Backend, BackendExt, Compare, Error, KeyValue, LeaseId, Txn, TxnOp, WatchEvent, WatchFrom,
    WatchStream,
};

/// Upper bound for any single wait in these tests, so that a bug fails instead of hanging.
const STEP: Duration = Duration::from_secs(30);

async fn server() -> EtcdServer {
    match EtcdServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("cannot start etcd: {error}"),
    }
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(STEP, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {STEP:?}"),
    }
}

/// Asserts that nothing arrives on the stream for a short while.
async fn quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn created(event: &WatchEvent) -> &KeyValue {
    match event {
        WatchEvent::Create(kv) => kv,
        other => panic!("expected Create, got {other:?}"),
    }
}

#[tokio::test]
async fn basic_operations_match_etcdctl() {
    let server = server().await;
    let client = server.client().await;

    let rev = client.put("cilium/a", b"one".to_vec(), None).await.unwrap();
    assert!(rev > 1);
    assert_eq!(
        server
            .etcdctl(&["get", "cilium/a", "--print-value-only"])
            .await
            .unwrap(),
        "one\n"
    );

    server.etcdctl(&["put", "cilium/b", "two"]).await.unwrap();
    let b = client.get("cilium/b").await.unwrap().unwrap();
    assert_eq!(b.value, b"two");
    assert_eq!(b.create_revision, b.mod_revision);
    assert_eq!(b.create_revision, rev + 1);
    assert_eq!(b.lease, None);
    assert_eq!(client.get("cilium/missing").await.unwrap(), None);

    // A prefix lists exactly its keys, in key order, with the current revision.
    client.put("cilium/b/x", b"3".to_vec(), None).await.unwrap();
    let rev = client
        .put("ciliumz", b"outside".to_vec(), None)
        .await
        .unwrap();
    let list = client.list_prefix("cilium/").await.unwrap();
    let keys: Vec<&str> = list.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["cilium/a", "cilium/b", "cilium/b/x"]);
    assert_eq!(list.revision, rev);

    assert!(client.delete("cilium/a").await.unwrap());
    assert!(!client.delete("cilium/a").await.unwrap());
    assert_eq!(client.delete_prefix("cilium/b").await.unwrap(), 2);
    assert_eq!(
        server
            .etcdctl(&["get", "--prefix", "cilium", "--keys-only"])
            .await
            .unwrap()
            .trim(),
        "ciliumz"
    );
}

#[tokio::test]
async fn transactions_map_compares_and_ops() {
    let server = server().await;
    let client = server.client().await;

    assert!(client.create_only("k", b"v1".to_vec(), None).await.unwrap());
    assert!(!client.create_only("k", b"v2".to_vec(), None).await.unwrap());
    let kv = client.get("k").await.unwrap().unwrap();
    assert_eq!(kv.value, b"v1");

    assert!(
        !client
            .compare_and_swap("k", kv.mod_revision + 100, b"x".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        client
            .compare_and_swap("k", kv.mod_revision, b"v3".to_vec(), None)
            .await
            .unwrap()
    );

    // Value compares, and the failure branch runs when a compare fails.
    let txn = Txn {
        compares: vec![
            Compare::value("k", b"v3".to_vec()),
            Compare::missing("other"),
        ],
        success: vec![TxnOp::Put {
            key: "other".into(),
            value: b"ok".to_vec(),
            lease: None,
        }],
        failure: vec![TxnOp::Put {
            key: "failed".into(),
            value: b"1".to_vec(),
            lease: None,
        }],
    };
    let response = client.txn(txn.clone()).await.unwrap();
    assert!(response.succeeded);
    assert_eq!(
        response.revision,
        client.get("other").await.unwrap().unwrap().mod_revision
    );
    let response = client.txn(txn).await.unwrap();
    assert!(!response.succeeded);
    assert_eq!(client.get("failed").await.unwrap().unwrap().value, b"1");

    // Several ops at one revision.
    let response = client
        .txn(Txn {
            compares: vec![],
            success: vec![
                TxnOp::Delete {
                    key: "other".into(),
                },
                TxnOp::Put {
                    key: "z".into(),
                    value: b"z".to_vec(),
                    lease: None,
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        client.get("z").await.unwrap().unwrap().mod_revision,
        response.revision
    );
    assert_eq!(client.get("other").await.unwrap(), None);
}

#[tokio::test]
async fn leases_attach_refresh_and_revoke() {
    let server = server().await;
    let client = server.client().await;

    let lease = client
        .grant_lease(Duration::from_millis(4500))
        .await
        .unwrap();
    client
        .put("leased", b"v".to_vec(), Some(lease))
        .await
        .unwrap();
    assert_eq!(
        client.get("leased").await.unwrap().unwrap().lease,
        Some(lease)
    );
    let lease_hex = format!("{lease}");
    let ttl = server
        .etcdctl(&["lease", "timetolive", &lease_hex])
        .await
        .unwrap();
    assert!(ttl.contains("granted with TTL(5s)"), "{ttl}");

    assert_eq!(
        client.keep_alive(lease).await.unwrap(),
        Duration::from_secs(5)
    );

    client.revoke_lease(lease).await.unwrap();
    assert_eq!(client.get("leased").await.unwrap(), None);
    assert!(matches!(client.keep_alive(lease).await, Err(Error::LeaseNotFound(l)) if l == lease));
    assert!(matches!(client.revoke_lease(lease).await, Err(Error::LeaseNotFound(l)) if l == lease));
    assert!(matches!(
        client.put("leased", b"v".to_vec(), Some(lease)).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
    assert!(matches!(
        client.create_only("leased", b"v".to_vec(), Some(lease)).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
    assert!(matches!(
        client.keep_alive(LeaseId(12345)).await,
        Err(Error::LeaseNotFound(LeaseId(12345)))
    ));
}

#[tokio::test]
async fn status_reports_version_revision_and_endpoints() {
    let server = server().await;
    let client = server.client().await;
    let rev = client.put("k", b"v".to_vec(), None).await.unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(status.kind, "etcd");
    assert_eq!(status.endpoints, vec![server.endpoint()]);
    assert!(status.version.starts_with("3."), "{}", status.version);
    assert_eq!(status.revision, rev);
}

#[tokio::test]
async fn watch_list_then_follow() {
    let server = server().await;
    let client = server.client().await;
    client.put("p/b", b"2".to_vec(), None).await.unwrap();
    let rev = client.put("p/a", b"1".to_vec(), None).await.unwrap();
    client.put("q/x", b"outside".to_vec(), None).await.unwrap();

    let mut watch = client.watch("p/", WatchFrom::List).await.unwrap();
    assert_eq!(created(&next(&mut watch).await).key, "p/a");
    assert_eq!(created(&next(&mut watch).await).key, "p/b");
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::ListDone { revision: rev + 1 }
    );

    let r1 = client.put("p/c", b"3".to_vec(), None).await.unwrap();
    let r2 = client.put("p/a", b"1'".to_vec(), None).await.unwrap();
    client.put("q/y", b"outside".to_vec(), None).await.unwrap();
    client.delete("p/b").await.unwrap();
    let c = created(&next(&mut watch).await).clone();
    assert_eq!((c.key.as_str(), c.mod_revision), ("p/c", r1));
    match next(&mut watch).await {
        WatchEvent::Modify(kv) => assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
            ("p/a", &b"1'"[..], r2)
        ),
        other => panic!("expected Modify, got {other:?}"),
    }
    match next(&mut watch).await {
        WatchEvent::Delete { key, mod_revision } => {
            assert_eq!((key.as_str(), mod_revision), ("p/b", r2 + 2))
        }
        other => panic!("expected Delete, got {other:?}"),
    }
    quiet(&mut watch).await;
}

#[tokio::test]
async fn connect_validates_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EtcdConfig::from_endpoints(vec!["https://127.0.0.1:1".into()]);
    config.trusted_ca_file = Some(dir.path().join("missing-ca.crt"));
    let error = EtcdBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(&error, Error::Config { message, .. } if message.contains("missing-ca.crt")),
        "{error}"
    );

    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    config.trusted_ca_file = Some(ca.clone());
    config.cert_file = Some(ca);
    let error = EtcdBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(&error, Error::Config { message, .. } if message.contains("key-file is missing")),
        "{error}"
    );
}

#[tokio::test]
async fn stopped_etcd_is_unavailable_without_hanging() {
    let server = server().await;
    let mut config = server.config();
    config.request_timeout = Duration::from_secs(2);
    let client = EtcdBackend::connect(&config).await.unwrap();
    client.put("k", b"v".to_vec(), None).await.unwrap();
    server.stop().await.unwrap();

    let started = std::time::Instant::now();
    let error = client.get("k").await.unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { op: "get", .. }),
        "{error}"
    );
    let error = client.put("k", b"v".to_vec(), None).await.unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { op: "put", .. }),
        "{error}"
    );
    let error = client.status().await.unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { op: "status", .. }),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // A client made while etcd is down works once it is back.
    let late = EtcdBackend::connect(&config).await.unwrap();
    server.restart().await.unwrap();
    assert_eq!(late.get("k").await.unwrap().unwrap().value, b"v");
    assert_eq!(client.get("k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let server = match EtcdServer::start_tls().await {
        Ok(server) => server,
        Err(error) => panic!("cannot start etcd with TLS: {error}"),
    };
    assert!(server.endpoint().starts_with("https://127.0.0.1:"));
    let client = server.client().await;
    client.put("secure", b"v".to_vec(), None).await.unwrap();
    assert_eq!(
        server
            .etcdctl(&["get", "secure", "--print-value-only"])
            .await
            .unwrap(),
        "v\n"
    );
    let mut watch = client.watch("secure", WatchFrom::List).await.unwrap();
    assert_eq!(created(&next(&mut watch).await).value, b"v");

    // Without a client certificate, or trusting another CA, the handshake fails: unavailable.
    let mut anonymous = server.config();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    anonymous.request_timeout = Duration::from_secs(2);
    let anonymous = EtcdBackend::connect(&anonymous).await.unwrap();
    let error = anonymous.get("secure").await.unwrap_err();
    // The server rejects the handshake; depending on timing the client sees the alert or just
    // the closed connection.
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");

    let mut wrong_ca = server.config();
    wrong_ca.trusted_ca_file = wrong_ca.cert_file.clone();
    wrong_ca.request_timeout = Duration::from_secs(2);
    let wrong_ca = EtcdBackend::connect(&wrong_ca).await.unwrap();
    let error = wrong_ca.get("secure").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}
