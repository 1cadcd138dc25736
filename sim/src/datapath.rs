//! Each node's datapath: the recording [`FakeDatapath`], behind a wrapper that counts the
//! writes that change kernel state. The count is how the harness sees that something is still
//! happening (quiescence) and how the report counts datapath work.
//!
//! The fake records every operation in a log meant for tests; a simulation of thousands of
//! nodes would keep all of it, so the wrapper empties the log as it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datapath::api::{
    CtGcStats, Datapath, DatapathError, EndpointAttachment, EndpointId, MapKey, MapName, MapValue,
    MetricEntry,
};
use datapath::fake::FakeDatapath;

/// Log entries the fake may keep before the wrapper empties its log.
const LOG_LIMIT: u64 = 256;

/// A [`Datapath`] over a [`FakeDatapath`] counting state-changing writes into a counter shared
/// by the whole simulation.
#[derive(Debug)]
pub struct CountingDatapath {
    fake: FakeDatapath,
    writes: Arc<AtomicU64>,
    ops: u64,
}

impl CountingDatapath {
    pub fn new(fake: FakeDatapath, writes: Arc<AtomicU64>) -> Self {
        CountingDatapath {
            fake,
            writes,
            ops: 0,
        }
    }

    fn op(&mut self, write: bool) {
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        self.ops += 1;
        if self.ops.is_multiple_of(LOG_LIMIT) {
            self.fake.clear_log();
        }
    }
}

impl Datapath for CountingDatapath {
    fn update(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
        self.op(true);
        self.fake.update(key, value)
    }

    fn delete(&mut self, key: &MapKey) -> Result<bool, DatapathError> {
        self.op(true);
        self.fake.delete(key)
    }

    fn list(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError> {
        self.fake.list(map)
    }

    fn policy_maps(&self) -> Result<Vec<EndpointId>, DatapathError> {
        self.fake.policy_maps()
    }

    fn create_policy_map(&mut self, endpoint: EndpointId) -> Result<(), DatapathError> {
        self.op(true);
        self.fake.create_policy_map(endpoint)
    }

    fn remove_policy_map(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        self.op(true);
        self.fake.remove_policy_map(endpoint)
    }

    fn attach_endpoint(&mut self, attachment: &EndpointAttachment) -> Result<(), DatapathError> {
        self.op(true);
        self.fake.attach_endpoint(attachment)
    }

    fn detach_endpoint(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        self.op(true);
        self.fake.detach_endpoint(endpoint)
    }

    fn conntrack_gc(&mut self) -> Result<CtGcStats, DatapathError> {
        // Periodic housekeeping, not a reaction to a change: not counted.
        self.op(false);
        self.fake.conntrack_gc()
    }

    fn read_metrics(&self) -> Result<Vec<MetricEntry>, DatapathError> {
        self.fake.read_metrics()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use datapath::api::{IpcacheKey, MapKey, MapValue, RemoteEndpointInfo};

    /// Every simulated node holds, for every address of its cluster (of the mesh), an ipcache
    /// row in the Datapath actor (key and value, desired and actual) and an entry in its fake
    /// datapath: 30 million of each in a 1000-node x 30-pod run. These bounds are what that
    /// run was sized with (see the per-entry bounds next to the ipcache claims, the fake's
    /// ipcache table and the memory kvstore's watch names); growing the types breaks it.
    #[test]
    fn per_address_datapath_entries_stay_small() {
        assert!(size_of::<IpcacheKey>() + size_of::<RemoteEndpointInfo>() <= 44);
        assert!(size_of::<MapKey>() <= 20);
        assert!(size_of::<MapValue>() <= 48);
    }
}
