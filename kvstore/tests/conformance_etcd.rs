//! The backend conformance suite against a real etcd: one private etcd server per case.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore::testing::conformance::{Harness, conformance_tests};
use kvstore::testing::etcd::EtcdServer;
use kvstore::{Backend, Revision};

/// Drives a private etcd: real time, real restarts, compaction through etcdctl.
struct EtcdHarness {
    server: EtcdServer,
}

impl EtcdHarness {
    async fn start() -> EtcdHarness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("kvstore=info")
            .with_test_writer()
            .try_init();
        match EtcdServer::start().await {
            Ok(server) => EtcdHarness { server },
            Err(error) => panic!("cannot start etcd: {error}"),
        }
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.server.client().await)
    }

    async fn advance(&self, by: Duration) {
        // etcd's leases run on its own clock: let real time pass.
        tokio::time::sleep(by).await;
    }

    async fn restart(&self) {
        if let Err(error) = self.server.restart().await {
            panic!("cannot restart etcd: {error}");
        }
    }

    async fn compact(&self, revision: Revision) {
        if let Err(error) = self.server.compact(revision).await {
            panic!("cannot compact etcd at {revision}: {error}");
        }
    }

    fn min_lease_ttl(&self) -> Duration {
        // etcd raises shorter TTLs to 1.5 × its election timeout (1 s by default), rounded up.
        Duration::from_secs(2)
    }
}

conformance_tests!(EtcdHarness::start().await);
