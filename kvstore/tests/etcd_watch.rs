//! Watch resilience of the etcd backend: reconnect and resume after etcd restarts, re-list after
//! compaction, and clean cancellation. Each test runs its own etcd.

use std::time::Duration;

use futures::StreamExt;
use kvstore::testing::etcd::EtcdServer;
use kvstore::{Backend, Error, Txn, TxnOp, WatchEvent, WatchFrom, WatchStream};

const STEP: Duration = Duration::from_secs(30);

async fn server() -> EtcdServer {
    // Reconnect and re-list logs show up in the output of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kvstore=debug")
        .with_test_writer()
        .try_init();
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

async fn quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

/// A compact, comparable form of an event: kind, key, value.
fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Create(kv) => {
            format!("create {}={}", kv.key, String::from_utf8_lossy(&kv.value))
        }
        WatchEvent::Modify(kv) => {
            format!("modify {}={}", kv.key, String::from_utf8_lossy(&kv.value))
        }
        WatchEvent::Delete { key, .. } => format!("delete {key}"),
        WatchEvent::ListDone { .. } => "list-done".to_owned(),
    }
}

async fn take(stream: &mut WatchStream, n: usize) -> Vec<String> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(describe(&next(stream).await));
    }
    events
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

#[tokio::test]
async fn one_transaction_delivers_all_its_events() {
    let server = server().await;
    let client = server.client().await;
    let mut watch = client.watch("t/", WatchFrom::List).await.unwrap();
    assert_eq!(take(&mut watch, 1).await, ["list-done"]);
    let response = client
        .txn(Txn {
            compares: vec![],
            success: vec![put("t/a", "1"), put("t/b", "2"), put("t/c", "3")],
            failure: vec![],
        })
        .await
        .unwrap();
    let mut revisions = Vec::new();
    for expected in ["t/a", "t/b", "t/c"] {
        match next(&mut watch).await {
            WatchEvent::Create(kv) => {
                assert_eq!(kv.key, expected);
                revisions.push(kv.mod_revision);
            }
            other => panic!("expected Create, got {other:?}"),
        }
    }
    assert_eq!(revisions, vec![response.revision; 3]);
    quiet(&mut watch).await;
}

#[tokio::test]
async fn restart_mid_watch_loses_and_repeats_nothing() {
    let server = server().await;
    let client = server.client().await;
    client.put("w/a", b"1".to_vec(), None).await.unwrap();
    let mut list_watch = client.watch("w/", WatchFrom::List).await.unwrap();
    assert_eq!(
        take(&mut list_watch, 2).await,
        ["create w/a=1", "list-done"]
    );
    let from = client.put("w/b", b"1".to_vec(), None).await.unwrap();
    let mut after_watch = client
        .watch("w/", WatchFrom::AfterRevision(from - 1))
        .await
        .unwrap();
    assert_eq!(take(&mut list_watch, 1).await, ["create w/b=1"]);
    assert_eq!(take(&mut after_watch, 1).await, ["create w/b=1"]);

    // Plain restart: the watches reconnect and see later changes once.
    server.restart().await.unwrap();
    client.put("w/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(take(&mut list_watch, 1).await, ["modify w/a=2"]);
    assert_eq!(take(&mut after_watch, 1).await, ["modify w/a=2"]);

    // Changes made while the watches cannot reach etcd arrive after they reconnect, in order.
    server
        .while_unreachable(|side| async move {
            side.put("w/c", b"1".to_vec(), None).await.unwrap();
            side.delete("w/b").await.unwrap();
            side.txn(Txn {
                compares: vec![],
                success: vec![put("w/a", "3"), put("w/d", "1")],
                failure: vec![],
            })
            .await
            .unwrap();
        })
        .await
        .unwrap();
    let expected = ["create w/c=1", "delete w/b", "modify w/a=3", "create w/d=1"];
    assert_eq!(take(&mut list_watch, 4).await, expected);
    assert_eq!(take(&mut after_watch, 4).await, expected);
    client.put("w/e", b"1".to_vec(), None).await.unwrap();
    assert_eq!(take(&mut list_watch, 1).await, ["create w/e=1"]);
    assert_eq!(take(&mut after_watch, 1).await, ["create w/e=1"]);
    quiet(&mut list_watch).await;
    quiet(&mut after_watch).await;
}

#[tokio::test]
async fn compaction_while_disconnected_relists_the_difference() {
    let server = server().await;
    let client = server.client().await;
    for key in ["c/same", "c/changed", "c/gone", "c/recreated"] {
        client.put(key, b"1".to_vec(), None).await.unwrap();
    }
    let mut watch = client.watch("c/", WatchFrom::List).await.unwrap();
    assert_eq!(
        take(&mut watch, 5).await,
        [
            "create c/changed=1",
            "create c/gone=1",
            "create c/recreated=1",
            "create c/same=1",
            "list-done"
        ]
    );

    let server = &server;
    server
        .while_unreachable(|side| async move {
            side.put("c/changed", b"2".to_vec(), None).await.unwrap();
            side.delete("c/gone").await.unwrap();
            side.delete("c/recreated").await.unwrap();
            side.put("c/recreated", b"1".to_vec(), None).await.unwrap();
            side.put("c/new", b"1".to_vec(), None).await.unwrap();
            side.put("c/transient", b"1".to_vec(), None).await.unwrap();
            side.delete("c/transient").await.unwrap();
            let revision = side.put("other", b"x".to_vec(), None).await.unwrap();
            server.compact(revision).await
        })
        .await
        .unwrap()
        .unwrap();

    // Only the difference, in key order; "c/same" and "c/transient" produce nothing.
    let events = take(&mut watch, 4).await;
    assert_eq!(
        events,
        [
            "modify c/changed=2",
            "delete c/gone",
            "create c/new=1",
            "modify c/recreated=1"
        ]
    );
    // And the watch follows on from the re-list.
    client.put("c/same", b"2".to_vec(), None).await.unwrap();
    assert_eq!(take(&mut watch, 1).await, ["modify c/same=2"]);
    quiet(&mut watch).await;
}

#[tokio::test]
async fn after_revision_reports_compaction_and_ends() {
    let server = server().await;
    let client = server.client().await;
    let first = client.put("x/a", b"1".to_vec(), None).await.unwrap();
    let last = client.put("x/a", b"2".to_vec(), None).await.unwrap();
    server.compact(last).await.unwrap();

    let mut watch = client
        .watch("x/", WatchFrom::AfterRevision(first - 1))
        .await
        .unwrap();
    match tokio::time::timeout(STEP, watch.next()).await {
        Ok(Some(Err(Error::Compacted {
            prefix,
            revision,
            compact_revision,
        }))) => {
            assert_eq!(prefix, "x/");
            assert_eq!(revision, first - 1);
            assert_eq!(compact_revision, last);
        }
        other => panic!("expected a compaction error, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(STEP, watch.next())
            .await
            .unwrap()
            .is_none()
    );

    // From the compaction revision on, history is available.
    let mut watch = client
        .watch("x/", WatchFrom::AfterRevision(last - 1))
        .await
        .unwrap();
    assert_eq!(take(&mut watch, 1).await, ["modify x/a=2"]);
}

#[tokio::test]
async fn after_revision_compacted_while_disconnected_reports_compaction() {
    let server = server().await;
    let client = server.client().await;
    let revision = client.put("y/a", b"1".to_vec(), None).await.unwrap();
    let mut watch = client
        .watch("y/", WatchFrom::AfterRevision(revision - 1))
        .await
        .unwrap();
    assert_eq!(take(&mut watch, 1).await, ["create y/a=1"]);
    let server = &server;
    server
        .while_unreachable(|side| async move {
            side.put("y/a", b"2".to_vec(), None).await.unwrap();
            let revision = side.put("y/a", b"3".to_vec(), None).await.unwrap();
            server.compact(revision).await
        })
        .await
        .unwrap()
        .unwrap();
    match tokio::time::timeout(STEP, watch.next()).await {
        Ok(Some(Err(Error::Compacted { revision: r, .. }))) => assert_eq!(r, revision),
        other => panic!("expected a compaction error, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(STEP, watch.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn prefix_is_a_plain_byte_prefix_and_empty_prefix_watches_everything() {
    let server = server().await;
    let client = server.client().await;
    let mut all = client.watch("", WatchFrom::List).await.unwrap();
    assert_eq!(take(&mut all, 1).await, ["list-done"]);
    let mut narrow = client.watch("ab", WatchFrom::List).await.unwrap();
    assert_eq!(take(&mut narrow, 1).await, ["list-done"]);
    for key in ["a", "ab", "abc", "ac"] {
        client.put(key, b"v".to_vec(), None).await.unwrap();
    }
    assert_eq!(
        take(&mut all, 4).await,
        ["create a=v", "create ab=v", "create abc=v", "create ac=v"]
    );
    assert_eq!(take(&mut narrow, 2).await, ["create ab=v", "create abc=v"]);
    quiet(&mut narrow).await;
}

/// A minimal HTTP/1.0 GET (etcd serves /metrics on its client URL).
async fn http_get(endpoint: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_etcd_watch() {
    let server = server().await;
    let client = server.client().await;
    let watch = client.watch("d/", WatchFrom::List).await.unwrap();
    let metric = || async {
        let text = http_get(&server.endpoint(), "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no watcher metric in:\n{text}"))
    };
    let deadline = tokio::time::Instant::now() + STEP;
    while metric().await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(watch);
    while metric().await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch not cancelled after drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
