//! The agent's [`Enricher`]: copies of the endpoint, ipcache and identity state that the flow
//! parser reads on every event.
//!
//! The parser runs on the monitor reader's path at up to hundreds of thousands of events a
//! second, while the agent changes endpoints, ipcache entries and identities a few times a
//! second at most. So the cache is shaped for reads: three maps, each behind its own
//! `std::sync::RwLock` (readers never wait on each other, and a writer holds a lock only to
//! swap or touch one entry, never across an await or an I/O call), and labels sorted once on
//! the way in so the parser need not sort them per flow.
//!
//! Writers are the agent's watchers: endpoint changes call [`EnrichmentCache::replace_endpoints`]
//! (or the per-endpoint methods), ipcache changes [`EnrichmentCache::upsert_ip`] /
//! [`EnrichmentCache::remove_ip`], identity allocation [`EnrichmentCache::replace_identities`] /
//! [`EnrichmentCache::upsert_identity`]. A lock poisoned by a panicking writer is recovered:
//! every write leaves the maps consistent, so the data behind it is still valid.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use datapath::api::EndpointId;
use model::identity::NumericIdentity;

use crate::parser::{EndpointInfo, Enricher, IpInfo};

/// Local endpoints by id, and the ids by address.
#[derive(Debug, Default)]
struct Endpoints {
    by_id: HashMap<u32, EndpointInfo>,
    by_ip: HashMap<IpAddr, u32>,
}

impl Endpoints {
    fn insert(&mut self, mut endpoint: EndpointInfo) {
        endpoint.labels.sort_unstable();
        self.remove(endpoint.id);
        for ip in &endpoint.ips {
            self.by_ip.insert(*ip, endpoint.id);
        }
        self.by_id.insert(endpoint.id, endpoint);
    }

    fn remove(&mut self, id: u32) -> Option<EndpointInfo> {
        let old = self.by_id.remove(&id)?;
        for ip in &old.ips {
            // Another endpoint may have taken the address over since.
            if self.by_ip.get(ip) == Some(&id) {
                self.by_ip.remove(ip);
            }
        }
        Some(old)
    }
}

/// Endpoint, ipcache and identity state for flow enrichment, safe to share between the
/// parser and the agent's writers (`Arc<EnrichmentCache>` coerces to `Arc<dyn Enricher>`).
#[derive(Debug, Default)]
pub struct EnrichmentCache {
    endpoints: RwLock<Endpoints>,
    ips: RwLock<HashMap<IpAddr, IpInfo>>,
    identities: RwLock<HashMap<NumericIdentity, Vec<String>>>,
    /// Names of the devices events are observed on (the endpoints' host-side veths), by
    /// ifindex.
    interfaces: RwLock<HashMap<u32, String>>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl EnrichmentCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every local endpoint (a full resync). When two endpoints claim one address,
    /// the later one in `endpoints` owns it.
    pub fn replace_endpoints(&self, endpoints: impl IntoIterator<Item = EndpointInfo>) {
        let mut fresh = Endpoints::default();
        for endpoint in endpoints {
            fresh.insert(endpoint);
        }
        // Built outside the lock: readers wait only for the swap.
        *write(&self.endpoints) = fresh;
    }

    /// Adds or replaces one local endpoint (matched by id); addresses it no longer has are
    /// forgotten.
    pub fn upsert_endpoint(&self, endpoint: EndpointInfo) {
        write(&self.endpoints).insert(endpoint);
    }

    /// Forgets a local endpoint; returns it if it was known.
    pub fn remove_endpoint(&self, id: EndpointId) -> Option<EndpointInfo> {
        write(&self.endpoints).remove(u32::from(id.get()))
    }

    /// Sets the ipcache entry of one address.
    pub fn upsert_ip(&self, ip: IpAddr, info: IpInfo) {
        write(&self.ips).insert(ip, info);
    }

    /// Removes the ipcache entry of one address; returns it if there was one.
    pub fn remove_ip(&self, ip: IpAddr) -> Option<IpInfo> {
        write(&self.ips).remove(&ip)
    }

    /// Replaces the whole ipcache (a full resync).
    pub fn replace_ips(&self, entries: impl IntoIterator<Item = (IpAddr, IpInfo)>) {
        let fresh: HashMap<IpAddr, IpInfo> = entries.into_iter().collect();
        *write(&self.ips) = fresh;
    }

    /// Replaces the labels of every identity (`source:key=value` strings, in any order).
    /// Reserved identities need no entry: the parser knows their labels.
    pub fn replace_identities(
        &self,
        identities: impl IntoIterator<Item = (NumericIdentity, Vec<String>)>,
    ) {
        let fresh: HashMap<NumericIdentity, Vec<String>> = identities
            .into_iter()
            .map(|(id, mut labels)| {
                labels.sort_unstable();
                (id, labels)
            })
            .collect();
        *write(&self.identities) = fresh;
    }

    /// Sets the labels of one identity.
    pub fn upsert_identity(&self, id: NumericIdentity, mut labels: Vec<String>) {
        labels.sort_unstable();
        write(&self.identities).insert(id, labels);
    }

    /// Forgets an identity's labels; returns them if they were known.
    pub fn remove_identity(&self, id: NumericIdentity) -> Option<Vec<String>> {
        write(&self.identities).remove(&id)
    }

    /// Replaces the names of the devices events can be observed on, by ifindex (a full
    /// resync; the agent passes its endpoints' host-side veths).
    pub fn replace_interfaces(&self, interfaces: impl IntoIterator<Item = (u32, String)>) {
        let fresh: HashMap<u32, String> = interfaces.into_iter().collect();
        *write(&self.interfaces) = fresh;
    }
}

impl Enricher for EnrichmentCache {
    fn endpoint(&self, id: EndpointId) -> Option<EndpointInfo> {
        read(&self.endpoints)
            .by_id
            .get(&u32::from(id.get()))
            .cloned()
    }

    fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointInfo> {
        let endpoints = read(&self.endpoints);
        let id = endpoints.by_ip.get(&ip)?;
        endpoints.by_id.get(id).cloned()
    }

    fn ip_identity(&self, ip: IpAddr) -> Option<IpInfo> {
        read(&self.ips).get(&ip).cloned()
    }

    fn identity_labels(&self, id: NumericIdentity) -> Option<Vec<String>> {
        read(&self.identities).get(&id).cloned()
    }

    fn interface_name(&self, ifindex: u32) -> Option<String> {
        read(&self.interfaces).get(&ifindex).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn endpoint(id: u32, ips: Vec<IpAddr>, labels: &[&str]) -> EndpointInfo {
        EndpointInfo {
            id,
            identity: 1000 + id,
            namespace: "default".into(),
            pod_name: format!("pod-{id}"),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            ips,
        }
    }

    #[test]
    fn replace_endpoints_indexes_by_id_and_every_address_and_sorts_labels() {
        let cache = EnrichmentCache::new();
        cache.replace_endpoints([
            endpoint(1, vec![ip(1), ip(2)], &["k8s:b=2", "k8s:a=1"]),
            endpoint(2, vec![ip(3)], &[]),
        ]);
        let one = cache.endpoint(EndpointId::new(1)).expect("endpoint 1");
        assert_eq!(one.pod_name, "pod-1");
        assert_eq!(one.labels, ["k8s:a=1", "k8s:b=2"]);
        assert_eq!(cache.endpoint_by_ip(ip(2)), Some(one));
        assert_eq!(cache.endpoint_by_ip(ip(3)).map(|e| e.id), Some(2));
        assert_eq!(cache.endpoint_by_ip(ip(9)), None);

        // A resync drops what it no longer lists, addresses included.
        cache.replace_endpoints([endpoint(2, vec![ip(3)], &[])]);
        assert_eq!(cache.endpoint(EndpointId::new(1)), None);
        assert_eq!(cache.endpoint_by_ip(ip(1)), None);
        assert_eq!(cache.endpoint_by_ip(ip(3)).map(|e| e.id), Some(2));
    }

    #[test]
    fn upsert_endpoint_forgets_addresses_it_lost_and_remove_keeps_a_new_owner() {
        let cache = EnrichmentCache::new();
        cache.upsert_endpoint(endpoint(1, vec![ip(1), ip(2)], &[]));
        cache.upsert_endpoint(endpoint(1, vec![ip(2)], &[]));
        assert_eq!(cache.endpoint_by_ip(ip(1)), None);
        assert_eq!(cache.endpoint_by_ip(ip(2)).map(|e| e.id), Some(1));

        // Endpoint 2 takes ip(2) over; removing endpoint 1 must not unmap it.
        cache.upsert_endpoint(endpoint(2, vec![ip(2)], &[]));
        assert_eq!(
            cache.remove_endpoint(EndpointId::new(1)).map(|e| e.id),
            Some(1)
        );
        assert_eq!(cache.endpoint_by_ip(ip(2)).map(|e| e.id), Some(2));
        assert_eq!(cache.remove_endpoint(EndpointId::new(1)), None);
    }

    #[test]
    fn ip_entries_are_set_replaced_and_removed() {
        let cache = EnrichmentCache::new();
        let info = IpInfo {
            identity: 5678,
            namespace: "ns".into(),
            pod_name: "server".into(),
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))),
        };
        cache.upsert_ip(ip(7), info.clone());
        assert_eq!(cache.ip_identity(ip(7)), Some(info.clone()));
        assert_eq!(cache.remove_ip(ip(7)), Some(info.clone()));
        assert_eq!(cache.ip_identity(ip(7)), None);

        cache.upsert_ip(ip(7), info.clone());
        cache.replace_ips([(ip(8), info.clone())]);
        assert_eq!(cache.ip_identity(ip(7)), None);
        assert_eq!(cache.ip_identity(ip(8)), Some(info));
    }

    #[test]
    fn identity_labels_are_sorted_on_the_way_in() {
        let cache = EnrichmentCache::new();
        let id = NumericIdentity::new(4242);
        cache.replace_identities([(id, vec!["k8s:z=1".to_owned(), "k8s:a=1".to_owned()])]);
        assert_eq!(
            cache.identity_labels(id),
            Some(vec!["k8s:a=1".to_owned(), "k8s:z=1".to_owned()])
        );
        cache.upsert_identity(NumericIdentity::new(7), vec!["k8s:x".into()]);
        assert_eq!(
            cache.remove_identity(NumericIdentity::new(7)),
            Some(vec!["k8s:x".to_owned()])
        );
        cache.replace_identities(std::iter::empty());
        assert_eq!(cache.identity_labels(id), None);
    }

    #[test]
    fn readers_and_writers_run_concurrently() {
        let cache = Arc::new(EnrichmentCache::new());
        cache.replace_endpoints([endpoint(1, vec![ip(1)], &[])]);
        let writer = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for round in 0..200u32 {
                    cache.replace_endpoints([endpoint(round % 7 + 1, vec![ip(1)], &[])]);
                }
            })
        };
        for _ in 0..200 {
            // Whatever the writer is doing, the address maps to a whole, consistent endpoint:
            // a resync swaps the maps at once, never leaving the address unmapped.
            let ep = cache
                .endpoint_by_ip(ip(1))
                .expect("address mapped throughout");
            assert_eq!(ep.pod_name, format!("pod-{}", ep.id));
            assert_eq!(ep.identity, 1000 + ep.id);
        }
        writer.join().expect("writer thread");
        assert_eq!(cache.endpoint_by_ip(ip(1)).map(|e| e.id), Some(199 % 7 + 1));
    }
}
