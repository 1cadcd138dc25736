//! Behaviour specific to the memory backend: lazy expiry, fault injection, bounded history.
//! What both backends share is in the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::timeout;

use super::{MemoryConfig, MemoryStore};
use crate::backend::{Backend, WatchEvent, WatchFrom, WatchStream};
use crate::clock::{ManualClock, TokioClock};
use crate::error::Error;

const WAIT: Duration = Duration::from_secs(5);

fn store() -> (ManualClock, MemoryStore) {
    let clock = ManualClock::new();
    let store = MemoryStore::new(Arc::new(clock.clone()));
    (clock, store)
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("an open stream")
        .expect("no error")
}

async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = timeout(Duration::from_millis(100), stream.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

fn brief(event: &WatchEvent) -> (&'static str, String) {
    let kind = match event {
        WatchEvent::Create(_) => "create",
        WatchEvent::Modify(_) => "modify",
        WatchEvent::Delete { .. } => "delete",
        WatchEvent::ListDone { .. } => "list-done",
    };
    (kind, event.key().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn expired_leases_are_processed_lazily_by_any_operation() {
    let (clock, store) = store();
    let c = store.client();
    let lease = c.grant_lease(Duration::from_secs(2)).await.unwrap();
    c.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
    let mut watch = c.watch("k", WatchFrom::AfterRevision(1)).await.unwrap();

    clock.advance(Duration::from_secs(2));
    // Nobody called expire_leases: the read itself must not see the expired key.
    assert_eq!(c.get("k").await.unwrap(), None);
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Delete {
            key: "k".into(),
            mod_revision: 2
        }
    );
    assert!(matches!(
        c.keep_alive(lease).await,
        Err(Error::LeaseNotFound(_))
    ));
}

#[tokio::test]
async fn unavailable_store_fails_operations_and_stalls_watches() {
    let (clock, store) = store();
    let c = store.client();
    let lease = c.grant_lease(Duration::from_secs(5)).await.unwrap();
    c.put("p/leased", vec![], Some(lease)).await.unwrap();
    let mut watch = c.watch("p/", WatchFrom::List).await.unwrap();
    assert!(matches!(next(&mut watch).await, WatchEvent::Create(_)));
    assert!(matches!(
        next(&mut watch).await,
        WatchEvent::ListDone { .. }
    ));

    store.set_unavailable(true);
    assert!(matches!(
        c.get("p/leased").await,
        Err(Error::Unavailable { op: "get", .. })
    ));
    assert!(matches!(
        c.put("p/x", vec![], None).await,
        Err(Error::Unavailable { op: "put", .. })
    ));
    assert!(matches!(c.status().await, Err(Error::Unavailable { .. })));
    assert!(matches!(c.lock("l").await, Err(Error::Unavailable { .. })));
    assert!(c.watch("p/", WatchFrom::List).await.is_err());
    assert_quiet(&mut watch).await;

    // An outage longer than the TTL does not expire the lease: it gets a fresh TTL after.
    clock.advance(Duration::from_secs(60));
    store.expire_leases();
    store.set_unavailable(false);
    assert!(c.get("p/leased").await.unwrap().is_some());
    c.keep_alive(lease)
        .await
        .expect("lease survived the outage");

    let r = c.put("p/after", b"x".to_vec(), None).await.unwrap();
    match next(&mut watch).await {
        WatchEvent::Create(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("p/after", r)),
        other => panic!("expected the first write after the outage, got {other:?}"),
    }
}

#[tokio::test]
async fn relist_after_compaction_emits_exactly_the_difference() {
    let (_, store) = store();
    let c = store.client();
    for key in ["p/a", "p/b", "p/c"] {
        c.put(key, b"1".to_vec(), None).await.unwrap();
    }
    let mut watch = c.watch("p/", WatchFrom::List).await.unwrap();
    for _ in 0..4 {
        next(&mut watch).await;
    }
    store.disconnect_watchers();
    c.put("p/b", b"2".to_vec(), None).await.unwrap();
    c.delete("p/c").await.unwrap();
    c.put("p/d", b"1".to_vec(), None).await.unwrap();
    c.put("p/e", b"1".to_vec(), None).await.unwrap();
    c.delete("p/e").await.unwrap();
    store.compact(store.revision()).unwrap();

    let mut diff = Vec::new();
    for _ in 0..3 {
        diff.push(brief(&next(&mut watch).await));
    }
    assert_eq!(
        diff,
        [
            ("modify", "p/b".to_owned()),
            ("delete", "p/c".to_owned()),
            ("create", "p/d".to_owned()),
        ]
    );
    assert_quiet(&mut watch).await;
    let r = c.put("p/a", b"2".to_vec(), None).await.unwrap();
    match next(&mut watch).await {
        WatchEvent::Modify(kv) => assert_eq!(kv.mod_revision, r),
        other => panic!("expected live events after the re-list, got {other:?}"),
    }
}

#[tokio::test]
async fn after_revision_watch_fails_when_history_was_compacted_while_disconnected() {
    let (_, store) = store();
    let c = store.client();
    let r = c.put("p/a", vec![], None).await.unwrap();
    let mut watch = c.watch("p/", WatchFrom::AfterRevision(r)).await.unwrap();
    store.disconnect_watchers();
    c.put("p/b", vec![], None).await.unwrap();
    c.put("p/c", vec![], None).await.unwrap();
    store.compact(store.revision()).unwrap();
    match timeout(WAIT, watch.next()).await.unwrap() {
        Some(Err(Error::Compacted {
            revision,
            compact_revision,
            ..
        })) => assert_eq!((revision, compact_revision), (r, r + 2)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(timeout(WAIT, watch.next()).await.unwrap().is_none());
}

#[tokio::test]
async fn bounded_history_reports_compaction() {
    let clock = ManualClock::new();
    let config = MemoryConfig {
        history_revisions: 10,
        ..MemoryConfig::default()
    };
    let store = MemoryStore::with_config(Arc::new(clock), config);
    let c = store.client();
    for i in 0..20 {
        c.put(&format!("k{i}"), vec![], None).await.unwrap();
    }
    let mut old = c.watch("", WatchFrom::AfterRevision(5)).await.unwrap();
    assert!(matches!(
        timeout(WAIT, old.next()).await.unwrap(),
        Some(Err(Error::Compacted {
            compact_revision: 10,
            ..
        }))
    ));
    let mut recent = c.watch("", WatchFrom::AfterRevision(10)).await.unwrap();
    assert_eq!(
        brief(&next(&mut recent).await),
        ("create", "k10".to_owned())
    );
}

#[tokio::test]
async fn slow_consumers_lose_nothing() {
    let (_, store) = store();
    let c = store.client();
    let mut watch = c.watch("k/", WatchFrom::List).await.unwrap();
    for i in 0..10_000 {
        c.put(&format!("k/{}", i % 100), i.to_string().into_bytes(), None)
            .await
            .unwrap();
    }
    assert!(matches!(
        next(&mut watch).await,
        WatchEvent::ListDone { revision: 0 }
    ));
    for expected in 1..=10_000 {
        let event = next(&mut watch).await;
        let revision = match &event {
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) => kv.mod_revision,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(revision, expected);
    }
}

#[tokio::test]
async fn watch_from_a_future_revision_skips_earlier_events() {
    let (_, store) = store();
    let c = store.client();
    let mut watch = c.watch("", WatchFrom::AfterRevision(2)).await.unwrap();
    for key in ["a", "b", "c"] {
        c.put(key, vec![], None).await.unwrap();
    }
    assert_eq!(brief(&next(&mut watch).await), ("create", "c".to_owned()));
}

#[tokio::test]
async fn an_abandoned_lock_wait_leaves_no_key_behind() {
    let (_, store) = store();
    let (a, b, c) = (store.client(), store.client(), store.client());
    let held = a.lock("l").await.unwrap();
    assert!(
        timeout(Duration::from_millis(50), b.lock("l"))
            .await
            .is_err()
    );
    let keys = a.list_prefix("l/").await.unwrap().kvs;
    assert_eq!(
        keys.len(),
        1,
        "the cancelled waiter's key is gone: {keys:?}"
    );
    a.unlock(held).await.unwrap();
    timeout(WAIT, c.lock("l")).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_waiter_whose_session_is_revoked_fails() {
    let (_, store) = store();
    let (a, b) = (store.client(), store.client());
    let held = a.lock("l").await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.lock("l").await }
    });
    let b_key = loop {
        let keys = a.list_prefix("l/").await.unwrap().kvs;
        if let Some(kv) = keys.into_iter().find(|kv| kv.key != held.key) {
            break kv;
        }
        tokio::task::yield_now().await;
    };
    b.revoke_lease(b_key.lease.expect("session lease"))
        .await
        .unwrap();
    assert!(matches!(
        timeout(WAIT, waiting).await.unwrap().unwrap(),
        Err(Error::LeaseNotFound(_))
    ));
    // The next attempt opens a new session, and waits behind a as it should.
    a.unlock(held).await.unwrap();
    let again = timeout(WAIT, b.lock("l")).await.unwrap().unwrap();
    assert_ne!(again.key, b_key.key);
}

#[tokio::test]
async fn the_reaper_expires_leases_and_stops_with_the_store() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let c = store.client();
    let lease = c.grant_lease(Duration::from_secs(1)).await.unwrap();
    c.put("k", vec![], Some(lease)).await.unwrap();
    let mut watch = c.watch("k", WatchFrom::AfterRevision(1)).await.unwrap();
    let reaper = store.spawn_reaper(Duration::from_millis(50));
    assert!(matches!(next(&mut watch).await, WatchEvent::Delete { .. }));
    drop((store, c, watch));
    timeout(WAIT, reaper).await.unwrap().unwrap();
}

#[tokio::test]
async fn status_names_the_memory_backend() {
    let (_, store) = store();
    let c = store.client();
    c.put("k", vec![], None).await.unwrap();
    let status = c.status().await.unwrap();
    assert_eq!(status.kind, "memory");
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.revision, 1);
    assert!(status.endpoints.is_empty());
}
