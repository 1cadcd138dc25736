//! The backend conformance suite: one set of cases that every [`Backend`] must pass, so the
//! etcd backend and the in-memory backend keep the same semantics.
//!
//! A backend plugs in through a [`Harness`] (fresh clients, the passage of time, a server
//! restart, compaction), and [`conformance_tests!`] turns the harness into one `#[tokio::test]`
//! per case:
//!
//! ```text
//! kvstore::testing::conformance::conformance_tests!(MyHarness::start().await);
//! ```
//!
//! Each test builds its own harness, and a harness must be an isolated store: restarts and
//! compaction act on the whole store. Cases still use a unique key prefix each, so that a
//! failure names its case in the keys. Timeouts are generous because etcd is a real process;
//! they turn a bug into a failure rather than a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::{Instant, sleep, timeout};

use crate::backend::{
    Backend, BackendExt, CmpOp, Compare, CompareTarget, KeyValue, Revision, Txn, TxnOp, WatchEvent,
    WatchFrom, WatchStream,
};
use crate::error::Error;

/// How a backend under test is driven.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A fresh client, independent of every other (its own connection and lock session).
    async fn client(&self) -> Arc<dyn Backend>;

    /// Lets `by` of lease time pass: a real sleep for etcd; for the memory store, advancing
    /// its manual clock and processing lease expiry.
    async fn advance(&self, by: Duration);

    /// Restarts the server. Open watch streams must resume on their own; operations may fail
    /// with [`Error::Unavailable`] until the server is back, and the suite retries those.
    async fn restart(&self);

    /// Compacts the store's history up to `revision`.
    async fn compact(&self, revision: Revision);

    /// The shortest lease TTL the backend honours exactly.
    fn min_lease_ttl(&self) -> Duration;

    /// TTL of a client's lock session lease: how long a dead client's locks outlive it.
    fn lock_session_ttl(&self) -> Duration {
        Duration::from_secs(25)
    }
}

/// Expands to one `#[tokio::test]` per conformance case. The argument is an expression that
/// builds a fresh [`Harness`]; it is evaluated inside each async test, so it may `.await`.
#[doc(hidden)]
#[macro_export]
macro_rules! __kvstore_conformance_tests {
    ($make:expr) => {
        $crate::__kvstore_conformance_tests!(@cases $make;
            kv_get_put_delete,
            list_prefix_in_key_order,
            delete_prefix_deletes_only_the_prefix,
            watch_list_mode,
            watch_list_done_on_empty_prefix,
            watch_after_revision,
            watch_compacted_history_fails,
            lease_expiry_deletes_attached_keys,
            keep_alive_keeps_keys_alive,
            revoke_deletes_attached_keys,
            keep_alive_on_expired_lease_fails,
            create_only_conflicts,
            compare_and_swap_conflicts,
            put_if_exists_requires_condition_key,
            txn_compares_and_failure_branch,
            txn_prefix_compares,
            lock_mutual_exclusion_in_request_order,
            lock_same_client_waits_for_itself,
            lock_released_when_session_revoked,
            lock_released_when_holder_dies,
            watch_resumes_after_restart,
            list_watch_relists_after_compaction,
            concurrent_writers_observed_once,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make;
                $crate::testing::conformance::$case(&harness).await;
            }
        )*
    };
}

pub use crate::__kvstore_conformance_tests as conformance_tests;

/// Longest wait for one watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a lock that should become free.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lock that must stay blocked is watched for being (wrongly) granted.
const STILL_BLOCKED: Duration = Duration::from_millis(300);
/// Longest time a restarted server may take to answer again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A unique key prefix for one case.
fn prefix(case: &str) -> String {
    format!("conformance/{case}/{:016x}/", fastrand::u64(..))
}

/// Retries `op` while the backend is unavailable (a server restarting), then panics.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

async fn put(c: &dyn Backend, key: &str, value: &str) -> Revision {
    retry(&format!("put {key}"), || c.put(key, value.into(), None)).await
}

async fn get(c: &dyn Backend, key: &str) -> Option<KeyValue> {
    retry(&format!("get {key}"), || c.get(key)).await
}

async fn current_revision(c: &dyn Backend) -> Revision {
    retry("status", || c.status()).await.revision
}

/// Polls until `check` holds; the wait is bounded so that a bug fails the case.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// An event reduced to what the cases compare: kind, key relative to the case prefix, revision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Create(String, Revision),
    Modify(String, Revision),
    Delete(String, Revision),
    ListDone(Revision),
}

impl Seen {
    fn of(event: &WatchEvent, prefix: &str) -> Seen {
        let rel = |key: &str| key.strip_prefix(prefix).unwrap_or(key).to_owned();
        match event {
            WatchEvent::Create(kv) => Seen::Create(rel(&kv.key), kv.mod_revision),
            WatchEvent::Modify(kv) => Seen::Modify(rel(&kv.key), kv.mod_revision),
            WatchEvent::Delete { key, mod_revision } => Seen::Delete(rel(key), *mod_revision),
            WatchEvent::ListDone { revision } => Seen::ListDone(*revision),
        }
    }

    fn revision(&self) -> Revision {
        match self {
            Seen::Create(_, r) | Seen::Modify(_, r) | Seen::Delete(_, r) | Seen::ListDone(r) => *r,
        }
    }
}

/// A watch under test, reporting events relative to its prefix.
struct Watch {
    stream: WatchStream,
    prefix: String,
}

impl Watch {
    async fn open(c: &dyn Backend, prefix: &str, from: WatchFrom) -> Watch {
        let stream = c
            .watch(prefix, from)
            .await
            .unwrap_or_else(|err| panic!("watch {prefix:?} from {from:?}: {err}"));
        Watch {
            stream,
            prefix: prefix.to_owned(),
        }
    }

    async fn next_event(&mut self) -> WatchEvent {
        match timeout(EVENT_TIMEOUT, self.stream.next()).await {
            Err(_) => panic!("watch {:?}: no event within {EVENT_TIMEOUT:?}", self.prefix),
            Ok(None) => panic!("watch {:?}: stream ended", self.prefix),
            Ok(Some(Err(err))) => panic!("watch {:?}: {err}", self.prefix),
            Ok(Some(Ok(event))) => event,
        }
    }

    async fn next(&mut self) -> Seen {
        let event = self.next_event().await;
        Seen::of(&event, &self.prefix)
    }

    async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut seen = Vec::with_capacity(n);
        for _ in 0..n {
            seen.push(self.next().await);
        }
        seen
    }

    /// Writes a sentinel key under the prefix and returns every event before it: proof that
    /// nothing else (no duplicate, no stray key) was delivered in between.
    async fn until_sentinel(&mut self, c: &dyn Backend) -> Vec<Seen> {
        let name = format!("~sentinel-{:08x}", fastrand::u32(..));
        let key = format!("{}{name}", self.prefix);
        let revision = put(c, &key, "").await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Seen::Create(k, r) if k == name => {
                    assert_eq!(r, revision, "sentinel revision");
                    return before;
                }
                other => before.push(other),
            }
        }
    }
}

/// get, put and delete, with etcd's create and mod revisions.
pub async fn kv_get_put_delete(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("kv");
    let key = format!("{p}a");
    assert_eq!(c.get(&key).await.unwrap(), None);

    let r1 = c.put(&key, b"one".to_vec(), None).await.unwrap();
    assert!(r1 > 0);
    let kv = c.get(&key).await.unwrap().expect("key after put");
    assert_eq!(kv.key, key);
    assert_eq!(kv.value, b"one");
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r1));
    assert_eq!(kv.lease, None);

    let r2 = c.put(&key, b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1, "revisions increase: {r2} after {r1}");
    let kv = c.get(&key).await.unwrap().expect("key after second put");
    assert_eq!(kv.value, b"two");
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));

    assert!(c.delete(&key).await.unwrap(), "delete of an existing key");
    assert_eq!(c.get(&key).await.unwrap(), None);
    assert!(!c.delete(&key).await.unwrap(), "delete of a missing key");

    let r3 = c.put(&key, b"three".to_vec(), None).await.unwrap();
    assert!(r3 > r2);
    let kv = c.get(&key).await.unwrap().expect("key after re-create");
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (r3, r3),
        "create revision resets after a delete"
    );

    let status = c.status().await.unwrap();
    assert!(status.revision >= r3, "status revision {}", status.revision);
    assert!(!status.kind.is_empty() && !status.version.is_empty());
}

/// Prefix listings hold exactly the keys under the prefix, in key order, at one revision.
pub async fn list_prefix_in_key_order(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("list");
    let dir = format!("{p}dir/");
    let mut revisions = Vec::new();
    for name in ["d", "b", "a/nested", "c", "a"] {
        revisions.push(put(&*c, &format!("{dir}{name}"), name).await);
    }
    // Keys that share the string prefix but not the directory.
    for outside in ["dir", "dira", "dir0", "cir/x", "eir/x"] {
        put(&*c, &format!("{p}{outside}"), "outside").await;
    }

    let list = c.list_prefix(&dir).await.unwrap();
    let names: Vec<&str> = list
        .kvs
        .iter()
        .map(|kv| kv.key.strip_prefix(&dir).unwrap_or(&kv.key))
        .collect();
    assert_eq!(names, ["a", "a/nested", "b", "c", "d"]);
    for kv in &list.kvs {
        assert_eq!(kv.value, kv.key.strip_prefix(&dir).unwrap_or("").as_bytes());
        assert!(revisions.contains(&kv.mod_revision), "{kv:?}");
    }
    let newest = revisions.iter().max().copied().unwrap_or(0);
    assert!(
        list.revision >= newest,
        "listing revision {}",
        list.revision
    );

    let empty = c.list_prefix(&format!("{p}nothing/")).await.unwrap();
    assert!(empty.kvs.is_empty());
}

/// delete_prefix removes only the prefix, at one revision, with one Delete event per key.
pub async fn delete_prefix_deletes_only_the_prefix(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("delete-prefix");
    for name in ["dir/b", "dir/a", "dir/c/d", "dira"] {
        put(&*c, &format!("{p}{name}"), "v").await;
    }
    let mut watch = Watch::open(
        &*c,
        &p,
        WatchFrom::AfterRevision(current_revision(&*c).await),
    )
    .await;

    assert_eq!(c.delete_prefix(&format!("{p}dir/")).await.unwrap(), 3);
    let remaining = c.list_prefix(&p).await.unwrap();
    assert_eq!(remaining.kvs.len(), 1);
    assert_eq!(remaining.kvs[0].key, format!("{p}dira"));

    let events = watch.until_sentinel(&*c).await;
    let revision = events.first().map_or(0, Seen::revision);
    assert_eq!(
        events,
        vec![
            Seen::Delete("dir/a".into(), revision),
            Seen::Delete("dir/b".into(), revision),
            Seen::Delete("dir/c/d".into(), revision),
        ],
        "one revision, key order"
    );
    assert_eq!(c.delete_prefix(&format!("{p}dir/")).await.unwrap(), 0);
}

/// A List watch: existing keys as Create in key order, ListDone at the listing revision, then
/// live changes in order.
pub async fn watch_list_mode(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("watch-list");
    let rb = put(&*c, &format!("{p}b"), "b").await;
    let ra = put(&*c, &format!("{p}a"), "a").await;
    let rc = put(&*c, &format!("{p}c"), "c").await;
    // The prefix itself is a key under the prefix, as in etcd.
    put(&*c, &p, "self").await;
    let mut watch = Watch::open(&*c, &p, WatchFrom::List).await;
    let mut listed = Vec::new();
    for _ in 0..4 {
        listed.push(watch.next_event().await);
    }
    let keys: Vec<Option<&str>> = listed.iter().map(WatchEvent::key).collect();
    let expected_keys = [
        Some(p.clone()),
        Some(format!("{p}a")),
        Some(format!("{p}b")),
        Some(format!("{p}c")),
    ];
    assert_eq!(
        keys,
        expected_keys
            .iter()
            .map(Option::as_deref)
            .collect::<Vec<_>>()
    );
    for event in &listed {
        assert!(matches!(event, WatchEvent::Create(_)), "{event:?}");
    }
    if let WatchEvent::Create(kv) = &listed[1] {
        assert_eq!(
            (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
            (&b"a"[..], ra, ra)
        );
    }
    let list_revision = match watch.next().await {
        Seen::ListDone(revision) => revision,
        other => panic!("expected ListDone, got {other:?}"),
    };
    assert!(list_revision >= ra.max(rb).max(rc));

    let rd = put(&*c, &format!("{p}d"), "d").await;
    let ra2 = put(&*c, &format!("{p}a"), "a2").await;
    assert!(c.delete(&format!("{p}b")).await.unwrap());
    put(&*c, &format!("{}-sibling", p.trim_end_matches('/')), "x").await;

    match watch.next_event().await {
        WatchEvent::Create(kv) => {
            assert_eq!(kv.key, format!("{p}d"));
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"d"[..], rd));
        }
        other => panic!("expected Create of d, got {other:?}"),
    }
    match watch.next_event().await {
        WatchEvent::Modify(kv) => {
            assert_eq!(kv.key, format!("{p}a"));
            assert_eq!(kv.value, b"a2");
            assert_eq!((kv.create_revision, kv.mod_revision), (ra, ra2));
        }
        other => panic!("expected Modify of a, got {other:?}"),
    }
    match watch.next().await {
        Seen::Delete(key, revision) => {
            assert_eq!(key, "b");
            assert!(revision > ra2);
        }
        other => panic!("expected Delete of b, got {other:?}"),
    }
    assert_eq!(watch.until_sentinel(&*c).await, vec![], "no further events");
}

/// On an empty prefix the first event is ListDone, and it comes only once.
pub async fn watch_list_done_on_empty_prefix(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("list-done");
    let before = put(&*c, &format!("{p}-outside"), "x").await;
    let mut watch = Watch::open(&*c, &format!("{p}dir/"), WatchFrom::List).await;
    match watch.next().await {
        Seen::ListDone(revision) => assert!(revision >= before, "{revision} < {before}"),
        other => panic!("expected ListDone first, got {other:?}"),
    }
    let r = put(&*c, &format!("{p}dir/a"), "a").await;
    assert_eq!(watch.next().await, Seen::Create("a".into(), r));
    assert_eq!(watch.until_sentinel(&*c).await, vec![]);
}

/// AfterRevision replays exactly the changes after the revision (deletes included), then
/// follows live changes.
pub async fn watch_after_revision(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("watch-after");
    let r1 = put(&*c, &format!("{p}a"), "1").await;
    let r2 = put(&*c, &format!("{p}b"), "1").await;
    assert!(c.delete(&format!("{p}a")).await.unwrap());
    let r4 = put(&*c, &format!("{p}b"), "2").await;

    let mut watch = Watch::open(&*c, &p, WatchFrom::AfterRevision(r1)).await;
    let replay = watch.take(3).await;
    let r3 = replay.get(1).map_or(0, Seen::revision);
    assert!(
        r2 < r3 && r3 < r4,
        "delete revision {r3} between {r2} and {r4}"
    );
    assert_eq!(
        replay,
        vec![
            Seen::Create("b".into(), r2),
            Seen::Delete("a".into(), r3),
            Seen::Modify("b".into(), r4),
        ]
    );
    let r5 = put(&*c, &format!("{p}c"), "1").await;
    assert_eq!(watch.next().await, Seen::Create("c".into(), r5));
    assert_eq!(watch.until_sentinel(&*c).await, vec![]);

    // A watch that starts at the current revision sees only what comes later.
    let now = current_revision(&*c).await;
    assert!(now > r5);
    let mut late = Watch::open(&*c, &p, WatchFrom::AfterRevision(now)).await;
    let r6 = put(&*c, &format!("{p}a"), "again").await;
    assert_eq!(late.next().await, Seen::Create("a".into(), r6));
}

/// A watch from a compacted revision fails with Compacted and ends; one from the compaction
/// revision works.
pub async fn watch_compacted_history_fails(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("compacted");
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(put(&*c, &format!("{p}k"), &i.to_string()).await);
    }
    let first = revisions[0];
    let last = revisions[4];
    h.compact(last).await;

    let mut stream = c.watch(&p, WatchFrom::AfterRevision(first)).await.unwrap();
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Err(Error::Compacted {
            revision,
            compact_revision,
            ..
        }))) => {
            assert_eq!(revision, first);
            assert!(
                compact_revision >= last - 1,
                "compact revision {compact_revision}"
            );
        }
        other => panic!("expected a Compacted error, got {other:?}"),
    }
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(None) => {}
        other => panic!("the stream must end after Compacted, got {other:?}"),
    }

    let mut watch = Watch::open(&*c, &p, WatchFrom::AfterRevision(last)).await;
    let r = put(&*c, &format!("{p}k"), "after").await;
    assert_eq!(watch.next().await, Seen::Modify("k".into(), r));
}

/// Keys attached to a lease are deleted (with Delete events) when it expires; others stay.
pub async fn lease_expiry_deletes_attached_keys(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("lease-expiry");
    let ttl = h.min_lease_ttl();
    let lease = c.grant_lease(ttl).await.unwrap();
    c.put(&format!("{p}a"), b"a".to_vec(), Some(lease))
        .await
        .unwrap();
    c.put(&format!("{p}b"), b"b".to_vec(), Some(lease))
        .await
        .unwrap();
    put(&*c, &format!("{p}c"), "unleased").await;
    let kv = get(&*c, &format!("{p}a")).await.expect("leased key");
    assert_eq!(kv.lease, Some(lease));

    let mut watch = Watch::open(
        &*c,
        &p,
        WatchFrom::AfterRevision(current_revision(&*c).await),
    )
    .await;
    h.advance(ttl * 2 + Duration::from_secs(1)).await;
    let deletes = watch.take(2).await;
    let revision = deletes.first().map_or(0, Seen::revision);
    assert_eq!(
        deletes,
        vec![
            Seen::Delete("a".into(), revision),
            Seen::Delete("b".into(), revision)
        ],
        "one revision for the whole lease"
    );
    assert_eq!(get(&*c, &format!("{p}a")).await, None);
    assert!(get(&*c, &format!("{p}c")).await.is_some());
    assert_eq!(watch.until_sentinel(&*c).await, vec![]);
    assert!(matches!(
        c.keep_alive(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
}

/// Keep-alives carry a lease (and its keys) across several TTLs; without them it expires.
pub async fn keep_alive_keeps_keys_alive(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("keep-alive");
    let ttl = h.min_lease_ttl();
    let lease = c.grant_lease(ttl).await.unwrap();
    let key = format!("{p}k");
    c.put(&key, b"v".to_vec(), Some(lease)).await.unwrap();
    for round in 0..6 {
        h.advance(ttl / 2).await;
        let granted = c
            .keep_alive(lease)
            .await
            .unwrap_or_else(|err| panic!("keep-alive round {round}: {err}"));
        assert!(
            granted >= ttl,
            "keep-alive reports TTL {granted:?} < {ttl:?}"
        );
        assert!(get(&*c, &key).await.is_some(), "key gone in round {round}");
    }
    h.advance(ttl * 2 + Duration::from_secs(1)).await;
    let c2 = Arc::clone(&c);
    let key2 = key.clone();
    eventually("the lease to expire without keep-alives", move || {
        let c = Arc::clone(&c2);
        let key = key2.clone();
        async move { matches!(c.get(&key).await, Ok(None)) }
    })
    .await;
}

/// Revoking a lease deletes its keys; the lease is gone afterwards.
pub async fn revoke_deletes_attached_keys(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("revoke");
    let lease = c.grant_lease(Duration::from_secs(60)).await.unwrap();
    for name in ["b", "a"] {
        c.put(&format!("{p}{name}"), name.into(), Some(lease))
            .await
            .unwrap();
    }
    let mut watch = Watch::open(
        &*c,
        &p,
        WatchFrom::AfterRevision(current_revision(&*c).await),
    )
    .await;
    c.revoke_lease(lease).await.unwrap();
    let deletes = watch.take(2).await;
    let revision = deletes.first().map_or(0, Seen::revision);
    assert_eq!(
        deletes,
        vec![
            Seen::Delete("a".into(), revision),
            Seen::Delete("b".into(), revision)
        ]
    );
    assert!(c.list_prefix(&p).await.unwrap().kvs.is_empty());
    assert!(matches!(
        c.keep_alive(lease).await,
        Err(Error::LeaseNotFound(_))
    ));
    assert!(matches!(
        c.revoke_lease(lease).await,
        Err(Error::LeaseNotFound(_))
    ));
    assert!(matches!(
        c.put(&format!("{p}late"), b"x".to_vec(), Some(lease)).await,
        Err(Error::LeaseNotFound(_))
    ));
    assert_eq!(get(&*c, &format!("{p}late")).await, None);
}

/// A keep-alive after the lease expired reports LeaseNotFound.
pub async fn keep_alive_on_expired_lease_fails(h: &impl Harness) {
    let c = h.client().await;
    let ttl = h.min_lease_ttl();
    let lease = c.grant_lease(ttl).await.unwrap();
    c.keep_alive(lease).await.expect("fresh lease");
    h.advance(ttl * 2 + Duration::from_secs(1)).await;
    match c.keep_alive(lease).await {
        Err(Error::LeaseNotFound(l)) => assert_eq!(l, lease),
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
}

/// create_only succeeds once and never overwrites.
pub async fn create_only_conflicts(h: &impl Harness) {
    let c = h.client().await;
    let key = format!("{}k", prefix("create-only"));
    assert!(c.create_only(&key, b"first".to_vec(), None).await.unwrap());
    assert!(!c.create_only(&key, b"second".to_vec(), None).await.unwrap());
    assert_eq!(get(&*c, &key).await.expect("key").value, b"first");
    assert!(c.delete(&key).await.unwrap());
    assert!(c.create_only(&key, b"third".to_vec(), None).await.unwrap());
    assert_eq!(get(&*c, &key).await.expect("key").value, b"third");
}

/// compare_and_swap: a stale revision loses, the current one wins; 0 means "missing".
pub async fn compare_and_swap_conflicts(h: &impl Harness) {
    let c = h.client().await;
    let key = format!("{}k", prefix("cas"));
    assert!(
        c.compare_and_swap(&key, 0, b"v0".to_vec(), None)
            .await
            .unwrap()
    );
    let r0 = get(&*c, &key).await.expect("created").mod_revision;
    assert!(
        !c.compare_and_swap(&key, 0, b"x".to_vec(), None)
            .await
            .unwrap()
    );

    assert!(
        c.compare_and_swap(&key, r0, b"v1".to_vec(), None)
            .await
            .unwrap()
    );
    let kv = get(&*c, &key).await.expect("swapped");
    assert_eq!(kv.value, b"v1");
    assert!(kv.mod_revision > r0);

    assert!(
        !c.compare_and_swap(&key, r0, b"stale".to_vec(), None)
            .await
            .unwrap()
    );
    assert_eq!(get(&*c, &key).await.expect("kept").value, b"v1");

    assert!(!c.delete_if_unchanged(&key, r0).await.unwrap());
    assert!(c.delete_if_unchanged(&key, kv.mod_revision).await.unwrap());
    assert_eq!(get(&*c, &key).await, None);
}

/// put_if_exists writes only while the condition key exists.
pub async fn put_if_exists_requires_condition_key(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("put-if-exists");
    let (master, slave) = (format!("{p}master"), format!("{p}slave"));
    assert!(
        !c.put_if_exists(&master, &slave, b"s".to_vec(), None)
            .await
            .unwrap()
    );
    assert_eq!(get(&*c, &slave).await, None);
    put(&*c, &master, "m").await;
    assert!(
        c.put_if_exists(&master, &slave, b"s".to_vec(), None)
            .await
            .unwrap()
    );
    assert_eq!(get(&*c, &slave).await.expect("slave").value, b"s");
}

/// Prefix-scoped compares: an empty prefix compares like a missing key, a populated one must
/// hold for every key under it (the identity allocator relies on "no slave key yet").
pub async fn txn_prefix_compares(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("txn-prefix");
    let scope = format!("{p}scope/");
    let marker = format!("{p}marker");
    let empty_then_mark = || Txn {
        compares: vec![Compare::prefix_empty(scope.clone())],
        success: vec![TxnOp::Put {
            key: marker.clone(),
            value: b"m".to_vec(),
            lease: None,
        }],
        failure: vec![],
    };
    // A key that shares the prefix text but sits outside the scope does not count.
    put(&*c, &format!("{p}scopeless"), "x").await;
    assert!(c.txn(empty_then_mark()).await.unwrap().succeeded);
    assert!(c.delete(&marker).await.unwrap());

    put(&*c, &format!("{scope}a"), "1").await;
    assert!(!c.txn(empty_then_mark()).await.unwrap().succeeded);
    assert_eq!(get(&*c, &marker).await, None);

    // Every key under the prefix must satisfy a ranged compare.
    let all_exist = |value: &[u8]| Txn {
        compares: vec![Compare {
            key: scope.clone(),
            target: CompareTarget::Value(CmpOp::Equal, value.to_vec()),
            prefix: true,
        }],
        success: vec![],
        failure: vec![],
    };
    put(&*c, &format!("{scope}b"), "1").await;
    assert!(c.txn(all_exist(b"1")).await.unwrap().succeeded);
    put(&*c, &format!("{scope}b"), "2").await;
    assert!(!c.txn(all_exist(b"1")).await.unwrap().succeeded);
}

/// Transactions: etcd's compare rules and the failure branch, each branch at one revision.
pub async fn txn_compares_and_failure_branch(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("txn");
    let (cond, a, b) = (format!("{p}cond"), format!("{p}a"), format!("{p}b"));
    let rc = put(&*c, &cond, "x").await;

    let response = c
        .txn(Txn {
            compares: vec![Compare::value(&cond, "y")],
            success: vec![TxnOp::Put {
                key: a.clone(),
                value: b"a".to_vec(),
                lease: None,
            }],
            failure: vec![
                TxnOp::Put {
                    key: b.clone(),
                    value: b"b".to_vec(),
                    lease: None,
                },
                TxnOp::Delete { key: cond.clone() },
            ],
        })
        .await
        .unwrap();
    assert!(!response.succeeded);
    assert_eq!(get(&*c, &a).await, None);
    assert_eq!(get(&*c, &cond).await, None);
    let kv = get(&*c, &b).await.expect("failure branch applied");
    assert_eq!(kv.mod_revision, response.revision, "one revision per txn");
    assert!(response.revision > rc);

    // Every kind of compare holding on an existing key.
    let holds = |target| Compare {
        key: b.clone(),
        target,
        prefix: false,
    };
    let response = c
        .txn(Txn {
            compares: vec![
                holds(CompareTarget::CreateRevision(CmpOp::Greater, 0)),
                holds(CompareTarget::ModRevision(CmpOp::Less, kv.mod_revision + 1)),
                holds(CompareTarget::ModRevision(CmpOp::Equal, kv.mod_revision)),
                holds(CompareTarget::Value(CmpOp::NotEqual, b"z".to_vec())),
                holds(CompareTarget::Value(CmpOp::Greater, b"a".to_vec())),
                holds(CompareTarget::Value(CmpOp::Less, b"c".to_vec())),
            ],
            success: vec![TxnOp::Put {
                key: a.clone(),
                value: b"ok".to_vec(),
                lease: None,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(response.succeeded);
    assert_eq!(get(&*c, &a).await.expect("success branch").value, b"ok");

    // Value compares on a missing key are false, whatever the operator; the failure branch
    // here is empty and the store revision does not move.
    let before = current_revision(&*c).await;
    for op in [CmpOp::Equal, CmpOp::NotEqual] {
        let response = c
            .txn(Txn {
                compares: vec![Compare {
                    key: format!("{p}missing"),
                    target: CompareTarget::Value(op, b"x".to_vec()),
                    prefix: false,
                }],
                success: vec![TxnOp::Delete { key: a.clone() }],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(!response.succeeded, "{op:?} on a missing key");
        assert_eq!(response.revision, before, "a txn that changes nothing");
    }
    assert!(get(&*c, &a).await.is_some());
}

async fn lock_with_timeout(c: &dyn Backend, name: &str) -> crate::backend::LockKey {
    match timeout(LOCK_TIMEOUT, c.lock(name)).await {
        Ok(Ok(lock)) => lock,
        Ok(Err(err)) => panic!("lock {name}: {err}"),
        Err(_) => panic!("lock {name} not acquired within {LOCK_TIMEOUT:?}"),
    }
}

type LockTask = tokio::task::JoinHandle<Result<crate::backend::LockKey, Error>>;

fn spawn_lock(c: &Arc<dyn Backend>, name: &str) -> LockTask {
    let c = Arc::clone(c);
    let name = name.to_owned();
    tokio::spawn(async move { c.lock(&name).await })
}

async fn assert_blocked(task: &mut LockTask, who: &str) {
    if let Ok(result) = timeout(STILL_BLOCKED, task).await {
        panic!("{who} got the lock while it is held: {result:?}");
    }
}

async fn acquired(task: &mut LockTask, who: &str) -> crate::backend::LockKey {
    match timeout(LOCK_TIMEOUT, task).await {
        Ok(Ok(Ok(lock))) => lock,
        other => panic!("{who} did not get the lock: {other:?}"),
    }
}

/// Waits until `n` clients hold or wait for the lock `name` (their ownership keys exist).
async fn lock_keys(c: &Arc<dyn Backend>, name: &str, n: usize) {
    let c = Arc::clone(c);
    let dir = format!("{name}/");
    eventually(&format!("{n} ownership keys under {dir}"), move || {
        let c = Arc::clone(&c);
        let dir = dir.clone();
        async move { c.list_prefix(&dir).await.is_ok_and(|l| l.kvs.len() == n) }
    })
    .await;
}

/// Two clients never hold a lock at once, and waiters get it in request order.
pub async fn lock_mutual_exclusion_in_request_order(h: &impl Harness) {
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let name = format!("{}lock", prefix("lock"));
    let la = lock_with_timeout(&*a, &name).await;
    assert_eq!(la.name, name);
    assert!(la.key.starts_with(&format!("{name}/")), "{}", la.key);
    assert!(get(&*a, &la.key).await.is_some(), "ownership key exists");

    let mut tb = spawn_lock(&b, &name);
    lock_keys(&a, &name, 2).await;
    let mut tc = spawn_lock(&c, &name);
    lock_keys(&a, &name, 3).await;
    assert_blocked(&mut tb, "b").await;
    assert_blocked(&mut tc, "c").await;

    a.unlock(la.clone()).await.unwrap();
    let lb = acquired(&mut tb, "b").await;
    assert_ne!(lb.key, la.key);
    assert_blocked(&mut tc, "c (queued after b)").await;

    b.unlock(lb).await.unwrap();
    let lc = acquired(&mut tc, "c").await;
    c.unlock(lc).await.unwrap();
    lock_keys(&a, &name, 0).await;
}

/// Two tasks sharing one client are serialised as well.
pub async fn lock_same_client_waits_for_itself(h: &impl Harness) {
    let a = h.client().await;
    let name = format!("{}lock", prefix("lock-self"));
    let first = lock_with_timeout(&*a, &name).await;
    let mut second = spawn_lock(&a, &name);
    assert_blocked(&mut second, "a second task of the same client").await;
    a.unlock(first).await.unwrap();
    let again = acquired(&mut second, "the second task").await;
    a.unlock(again).await.unwrap();
}

/// Revoking the holder's lock session lease releases its lock.
pub async fn lock_released_when_session_revoked(h: &impl Harness) {
    let (a, b) = (h.client().await, h.client().await);
    let name = format!("{}lock", prefix("lock-revoke"));
    let la = lock_with_timeout(&*a, &name).await;
    let session = get(&*a, &la.key)
        .await
        .and_then(|kv| kv.lease)
        .expect("the ownership key is attached to the lock session lease");
    let mut tb = spawn_lock(&b, &name);
    lock_keys(&a, &name, 2).await;
    assert_blocked(&mut tb, "b").await;
    h.client().await.revoke_lease(session).await.unwrap();
    let lb = acquired(&mut tb, "b").await;
    assert_eq!(get(&*b, &la.key).await, None, "a's ownership key is gone");
    b.unlock(lb).await.unwrap();
}

/// A holder that goes away without unlocking releases the lock once its session expires.
pub async fn lock_released_when_holder_dies(h: &impl Harness) {
    let (a, b) = (h.client().await, h.client().await);
    let name = format!("{}lock", prefix("lock-dies"));
    let la = lock_with_timeout(&*a, &name).await;
    let mut tb = spawn_lock(&b, &name);
    lock_keys(&b, &name, 2).await;
    assert_blocked(&mut tb, "b").await;
    drop(a);
    h.advance(h.lock_session_ttl() + Duration::from_secs(2))
        .await;
    let lb = acquired(&mut tb, "b").await;
    assert_eq!(get(&*b, &la.key).await, None);
    b.unlock(lb).await.unwrap();
}

/// A List watch survives a server restart: every change arrives exactly once, in order.
pub async fn watch_resumes_after_restart(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("restart");
    let mut watch = Watch::open(&*c, &p, WatchFrom::List).await;
    assert!(matches!(watch.next().await, Seen::ListDone(_)));

    let mut expected = Vec::new();
    for i in 0..5 {
        let key = format!("k{i}");
        expected.push(Seen::Create(
            key.clone(),
            put(&*c, &format!("{p}{key}"), "v").await,
        ));
    }
    // Two delivered before the restart, three still in flight.
    assert_eq!(watch.take(2).await, expected[..2]);

    h.restart().await;
    for i in 5..10 {
        let key = format!("k{i}");
        expected.push(Seen::Create(
            key.clone(),
            put(&*c, &format!("{p}{key}"), "v").await,
        ));
    }
    let r = put(&*c, &format!("{p}k0"), "changed").await;
    expected.push(Seen::Modify("k0".into(), r));
    let k1 = format!("{p}k1");
    assert!(retry("delete k1", || c.delete(&k1)).await);
    let deleted = current_revision(&*c).await;
    expected.push(Seen::Delete("k1".into(), deleted));

    let mut seen = watch.take(2).await;
    seen.extend(watch.until_sentinel(&*c).await);
    assert_eq!(
        seen,
        expected[2..],
        "every change once, in order, across the restart"
    );
}

/// After a restart during which history was compacted, a List watch re-lists and delivers
/// only what changed: its consumer ends with the store's state, never a duplicate or a gap.
pub async fn list_watch_relists_after_compaction(h: &impl Harness) {
    let c = h.client().await;
    let p = prefix("relist");
    for name in ["a", "b", "c"] {
        put(&*c, &format!("{p}{name}"), "1").await;
    }
    let mut watch = Watch::open(&*c, &p, WatchFrom::List).await;
    let mut model: BTreeMap<String, Revision> = BTreeMap::new();
    for _ in 0..3 {
        match watch.next().await {
            Seen::Create(key, revision) => {
                model.insert(key, revision);
            }
            other => panic!("expected the listing, got {other:?}"),
        }
    }
    assert!(matches!(watch.next().await, Seen::ListDone(_)));

    h.restart().await;
    put(&*c, &format!("{p}b"), "2").await;
    let gone = format!("{p}c");
    assert!(retry("delete c", || c.delete(&gone)).await);
    put(&*c, &format!("{p}d"), "1").await;
    put(&*c, &format!("{p}e"), "transient").await;
    let transient = format!("{p}e");
    assert!(retry("delete e", || c.delete(&transient)).await);
    h.compact(current_revision(&*c).await).await;

    let events = watch.until_sentinel(&*c).await;
    let mut e_events = Vec::new();
    for event in &events {
        match event {
            Seen::Create(key, revision) => {
                assert!(
                    !model.contains_key(key),
                    "Create of a key already held: {event:?}"
                );
                model.insert(key.clone(), *revision);
            }
            Seen::Modify(key, revision) => {
                let held = model.get(key).copied();
                assert!(
                    held.is_some_and(|r| r < *revision),
                    "Modify must change a held key: {event:?} (held at {held:?})"
                );
                model.insert(key.clone(), *revision);
            }
            Seen::Delete(key, _) => {
                assert!(
                    model.remove(key).is_some(),
                    "Delete of a key not held: {event:?}"
                );
            }
            Seen::ListDone(_) => panic!("a second ListDone: {events:?}"),
        }
        match event {
            Seen::Create(key, _) | Seen::Modify(key, _) | Seen::Delete(key, _) => {
                assert_ne!(
                    key, "a",
                    "an unchanged key must not be re-delivered: {events:?}"
                );
                if key == "e" {
                    e_events.push(event.clone());
                }
            }
            Seen::ListDone(_) => {}
        }
    }
    assert!(
        e_events.is_empty() || (e_events.len() == 2 && matches!(e_events[1], Seen::Delete(..))),
        "a key created and deleted while disconnected: nothing, or Create then Delete: {e_events:?}"
    );
    let store: BTreeMap<String, Revision> = c
        .list_prefix(&p)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key.strip_prefix(&p).unwrap_or(&kv.key).to_owned(),
                kv.mod_revision,
            )
        })
        .filter(|(key, _)| !key.starts_with("~sentinel"))
        .collect();
    assert_eq!(model, store, "the consumer's view after the resume");
    assert_eq!(
        model.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "d"]
    );
}

/// Many writers at once: a watcher sees every write exactly once, in revision order.
pub async fn concurrent_writers_observed_once(h: &impl Harness) {
    const WRITERS: usize = 8;
    const PUTS: usize = 50;
    let p = prefix("concurrent");
    let watcher = h.client().await;
    let mut watch = Watch::open(&*watcher, &p, WatchFrom::List).await;
    assert!(matches!(watch.next().await, Seen::ListDone(_)));

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = h.client().await;
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::with_capacity(PUTS);
            for i in 0..PUTS {
                let key = format!("w{w}/{i:03}");
                let revision = c
                    .put(&format!("{p}{key}"), vec![0; 16], None)
                    .await
                    .unwrap_or_else(|err| panic!("writer {w} put {i}: {err}"));
                written.push(Seen::Create(key, revision));
            }
            written
        }));
    }
    let mut written = BTreeSet::new();
    for task in tasks {
        let mine = task.await.expect("writer task");
        assert!(mine.windows(2).all(|w| w[0].revision() < w[1].revision()));
        written.extend(mine);
    }
    assert_eq!(
        written.len(),
        WRITERS * PUTS,
        "every put has its own revision"
    );

    let seen = watch.take(WRITERS * PUTS).await;
    assert!(
        seen.windows(2).all(|w| w[0].revision() < w[1].revision()),
        "events in revision order"
    );
    let seen_set: BTreeSet<Seen> = seen.into_iter().collect();
    assert_eq!(seen_set, written, "each write seen once");
    assert_eq!(watch.until_sentinel(&*watcher).await, vec![]);
}
