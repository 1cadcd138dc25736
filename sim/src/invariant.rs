//! Invariants checked continuously, not only at quiescent points: while a step runs, the world
//! driver feeds every answer of the harness's operations to [`Invariants`] and, every
//! [`Scenario::invariant_interval`](crate::Scenario) of virtual time, a few nodes' datapaths
//! in turn. The first broken invariant stops the run; the report names it with the seed.
//!
//! - no identity number stands for two different label sets in a cluster, across the whole
//!   run (pod creations' answers and the kvstore's master keys at every quiescent point);
//! - no pod address is given to two live pods (anywhere: every node's pod CIDR is its own);
//! - every pod address in a node's ipcache maps to an identity of the range of the cluster
//!   that owns the address (remote identities stay inside their cluster's range);
//! - a kvstore loss (outage, restart, partition, short mesh disconnect) never shrinks the
//!   maps of a node that lost its kvstore: the datapath is not flushed while its source is
//!   gone.
//!
//! The checker is plain data in, [`Violation`] out, so each invariant is unit-tested by
//! feeding it a bad state.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use model::identity::{ClusterId, NumericIdentity};

use crate::oracle::{POD_SUPERNET, Violation};

/// How many entries each kind of map of one node holds.
pub type MapSizes = BTreeMap<String, usize>;

/// The nodes whose maps must not shrink, with their sizes when their kvstore went away.
#[derive(Debug, Clone)]
struct FlushGuard {
    why: String,
    baseline: BTreeMap<String, MapSizes>,
}

/// What the continuous checks remember across the run. See the module docs.
#[derive(Debug, Default)]
pub struct Invariants {
    /// Per cluster index: every identity seen, with the labels it stood for and where that
    /// was seen first.
    identities: BTreeMap<usize, BTreeMap<NumericIdentity, (String, String)>>,
    /// Every live pod's address, with the pod.
    addresses: BTreeMap<Ipv4Addr, String>,
    /// The cluster owning each node's pod CIDR.
    cidrs: BTreeMap<Ipv4Net, (String, ClusterId)>,
    guard: Option<FlushGuard>,
}

impl Invariants {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node of `cluster` (named `cluster_name`) hands out addresses of `pod_cidr`.
    pub fn node_started(&mut self, pod_cidr: Ipv4Net, cluster_name: &str, cluster: ClusterId) {
        self.cidrs
            .insert(pod_cidr.trunc(), (cluster_name.to_owned(), cluster));
    }

    /// `labels` (their kvstore form) stand for `identity` in the cluster with index
    /// `cluster`, as `seen_at` says (a pod, a master key).
    pub fn identity_seen(
        &mut self,
        cluster: usize,
        identity: NumericIdentity,
        labels: &str,
        seen_at: &str,
    ) -> Result<(), Violation> {
        let known = self.identities.entry(cluster).or_default();
        match known.get(&identity) {
            Some((before, first)) if before != labels => Err(Violation {
                node: None,
                what: format!(
                    "invariant: identity {identity} of cluster {} stands for {before} ({first}) and for {labels} ({seen_at})",
                    cluster + 1
                ),
            }),
            Some(_) => Ok(()),
            None => {
                known.insert(identity, (labels.to_owned(), seen_at.to_owned()));
                Ok(())
            }
        }
    }

    /// A pod got `ip`; `releasing` says whether a pod is being deleted (its address may be
    /// handed out again before its deletion is answered).
    pub fn address_given(
        &mut self,
        ip: Ipv4Addr,
        pod: &str,
        releasing: impl Fn(&str) -> bool,
    ) -> Result<(), Violation> {
        match self.addresses.get(&ip) {
            Some(holder) if holder != pod && !releasing(holder) => Err(Violation {
                node: None,
                what: format!("invariant: address {ip} is given to {holder} and to {pod}"),
            }),
            _ => {
                self.addresses.insert(ip, pod.to_owned());
                Ok(())
            }
        }
    }

    /// `pod` no longer holds `ip` (deleted, or lost with its node).
    pub fn address_released(&mut self, ip: Ipv4Addr, pod: &str) {
        if self.addresses.get(&ip).is_some_and(|holder| holder == pod) {
            self.addresses.remove(&ip);
        }
    }

    /// Every pod address in `node`'s ipcache maps into the range of the cluster that owns
    /// the address.
    pub fn check_ipcache(
        &self,
        node: &str,
        entries: impl IntoIterator<Item = (IpNet, NumericIdentity)>,
    ) -> Result<(), Violation> {
        for (prefix, identity) in entries {
            let IpNet::V4(prefix) = prefix else {
                continue;
            };
            if prefix.prefix_len() != 32 || !POD_SUPERNET.contains(&prefix.addr()) {
                continue;
            }
            let Ok(cidr) = Ipv4Net::new(prefix.addr(), 24) else {
                continue;
            };
            if let Some((cluster, id)) = self.cidrs.get(&cidr.trunc())
                && !id.contains(identity)
            {
                return Err(Violation {
                    node: Some(node.to_owned()),
                    what: format!(
                        "invariant: ipcache maps {} (a pod address of {cluster}) to identity {identity}, outside {cluster}'s range",
                        prefix.addr()
                    ),
                });
            }
        }
        Ok(())
    }

    /// From now on the maps of these nodes must not shrink below `sizes` (their kvstore went
    /// away because of `why`).
    pub fn guard(&mut self, why: &str, sizes: BTreeMap<String, MapSizes>) {
        self.guard = Some(FlushGuard {
            why: why.to_owned(),
            baseline: sizes,
        });
    }

    /// The kvstore is back: maps may change again.
    pub fn unguard(&mut self) {
        self.guard = None;
    }

    /// Whether `node`'s maps are guarded now.
    pub fn guards(&self, node: &str) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|guard| guard.baseline.contains_key(node))
    }

    /// `node`'s maps hold `sizes` now: none of them may have shrunk while guarded.
    pub fn check_not_flushed(&self, node: &str, sizes: &MapSizes) -> Result<(), Violation> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let Some(baseline) = guard.baseline.get(node) else {
            return Ok(());
        };
        for (map, before) in baseline {
            let now = sizes.get(map).copied().unwrap_or(0);
            if now < *before {
                return Err(Violation {
                    node: Some(node.to_owned()),
                    what: format!(
                        "invariant: {map} shrank from {before} to {now} entries during {}",
                        guard.why
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    #[test]
    fn an_identity_standing_for_other_labels_later_in_the_run_is_caught() {
        let mut inv = Invariants::new();
        assert!(
            inv.identity_seen(0, id(65_537), "k8s:app=a", "pod-1")
                .is_ok()
        );
        assert!(
            inv.identity_seen(0, id(65_537), "k8s:app=a", "pod-2")
                .is_ok()
        );
        // Another cluster's number space is its own.
        assert!(
            inv.identity_seen(1, id(65_537), "k8s:app=b", "pod-3")
                .is_ok()
        );
        let error = inv
            .identity_seen(0, id(65_537), "k8s:app=b", "master key")
            .unwrap_err();
        assert!(error.what.contains("k8s:app=a (pod-1)"), "{error}");
        assert!(error.what.contains("k8s:app=b (master key)"), "{error}");
    }

    #[test]
    fn an_address_held_by_two_live_pods_is_caught_unless_the_first_is_going() {
        let mut inv = Invariants::new();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert!(inv.address_given(ip, "pod-1", |_| false).is_ok());
        let error = inv.address_given(ip, "pod-2", |_| false).unwrap_err();
        assert!(error.what.contains("pod-1 and to pod-2"), "{error}");
        // Handed out again while pod-1's deletion is still being answered.
        assert!(inv.address_given(ip, "pod-2", |pod| pod == "pod-1").is_ok());
        inv.address_released(ip, "pod-1");
        assert!(inv.address_given(ip, "pod-3", |_| false).is_err());
        inv.address_released(ip, "pod-2");
        assert!(inv.address_given(ip, "pod-3", |_| false).is_ok());
    }

    #[test]
    fn a_remote_pod_address_with_an_identity_of_another_cluster_is_caught() {
        let mut inv = Invariants::new();
        let cidr = Ipv4Net::new(Ipv4Addr::new(10, 0, 1, 0), 24).unwrap();
        inv.node_started(cidr, "cluster-2", ClusterId::new(2));
        let pod: IpNet = "10.0.1.7/32".parse().unwrap();
        let in_range = id((2 << 16) | 5);
        assert!(inv.check_ipcache("n", [(pod, in_range)]).is_ok());
        // Node addresses and other prefixes are not pod addresses.
        let node: IpNet = "172.16.0.2/32".parse().unwrap();
        assert!(inv.check_ipcache("n", [(node, id(6))]).is_ok());
        let error = inv
            .check_ipcache("n", [(pod, in_range), (pod, id((1 << 16) | 5))])
            .unwrap_err();
        assert_eq!(error.node.as_deref(), Some("n"));
        assert!(error.what.contains("outside cluster-2's range"), "{error}");
    }

    #[test]
    fn a_map_that_shrinks_while_its_kvstore_is_gone_is_caught() {
        let mut inv = Invariants::new();
        let sizes = |n| MapSizes::from([("ipcache".to_owned(), n)]);
        inv.guard(
            "kvstore-outage",
            BTreeMap::from([("n".to_owned(), sizes(10))]),
        );
        assert!(inv.guards("n") && !inv.guards("other"));
        assert!(inv.check_not_flushed("n", &sizes(12)).is_ok());
        assert!(inv.check_not_flushed("other", &sizes(0)).is_ok());
        let error = inv.check_not_flushed("n", &sizes(3)).unwrap_err();
        assert!(
            error
                .what
                .contains("ipcache shrank from 10 to 3 entries during kvstore-outage"),
            "{error}"
        );
        inv.unguard();
        assert!(inv.check_not_flushed("n", &sizes(0)).is_ok());
    }
}
