//! The backend conformance suite against the in-memory backend, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore::clock::ManualClock;
use kvstore::memory::{MemoryBackend, MemoryStore};
use kvstore::testing::conformance::{Harness, conformance_tests};
use kvstore::{Backend, Revision};

/// A store whose time moves only when the suite lets it; a restart cuts every watcher off.
struct MemoryHarness {
    clock: ManualClock,
    store: MemoryStore,
}

impl MemoryHarness {
    fn new() -> Self {
        let clock = ManualClock::new();
        let store = MemoryStore::new(Arc::new(clock.clone()));
        MemoryHarness { clock, store }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        let client: MemoryBackend = self.store.client();
        Arc::new(client)
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.store.expire_leases();
    }

    async fn restart(&self) {
        self.store.disconnect_watchers();
    }

    async fn compact(&self, revision: Revision) {
        self.store
            .compact(revision)
            .expect("compact the memory store");
    }

    fn min_lease_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }
}

conformance_tests!(MemoryHarness::new());
