//! Cluster-pool IPAM as a pure state machine: which pod CIDR of the pool belongs to which node.
//!
//! The pool (`--cluster-pool-ipv4-cidr`) is cut into per-node CIDRs of
//! `--cluster-pool-ipv4-mask-size`. The state only answers "is this range free" and "give this
//! node a CIDR"; writing the allocation to the kvstore is the controller's job, so the rules
//! (distinct CIDRs, idempotence, restart rebuild, exhaustion) are unit-tested without IO.
//!
//! Restored allocations may have been written by an older configuration or by hand, so
//! [`CidrPool::restore`] accepts any CIDR inside the pool (of any size) and only refuses what
//! would make two nodes share addresses or what the pool does not own. The caller reports a
//! refused record and leaves it alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::NodeName;

/// The per-node prefix lengths that leave room for pods (a /31 or /32 holds no pod address
/// beside the router's).
const MAX_MASK_SIZE: u8 = 30;

/// A cluster-pool configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    #[error(
        "--cluster-pool-ipv4-mask-size {mask_size} makes each node's CIDR larger than the pool \
         --cluster-pool-ipv4-cidr {pool}: use a mask size between {} and {MAX_MASK_SIZE}",
        pool.prefix_len()
    )]
    MaskLargerThanPool { pool: Ipv4Net, mask_size: u8 },

    #[error(
        "--cluster-pool-ipv4-mask-size {mask_size} leaves no pod addresses: use at most {MAX_MASK_SIZE}"
    )]
    MaskTooLong { mask_size: u8 },

    #[error(
        "--cluster-pool-ipv4-cidr {pool} has host bits set: did you mean {}?",
        pool.trunc()
    )]
    NotNetworkAddress { pool: Ipv4Net },
}

/// Every CIDR of the pool is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cluster pool {pool} is exhausted: all {capacity} /{mask_size} pod CIDRs are allocated; \
     remove nodes or widen --cluster-pool-ipv4-cidr"
)]
pub struct PoolExhausted {
    pub pool: Ipv4Net,
    pub mask_size: u8,
    pub capacity: u64,
}

/// An existing allocation that the pool refuses to take over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("pod CIDR {cidr} of node {node} is outside the cluster pool {pool}")]
    OutsidePool {
        node: NodeName,
        cidr: Ipv4Net,
        pool: Ipv4Net,
    },

    #[error("pod CIDR {cidr} of node {node} overlaps {other_cidr} of node {other}")]
    Overlaps {
        node: NodeName,
        cidr: Ipv4Net,
        other: NodeName,
        other_cidr: Ipv4Net,
    },

    #[error("allocation of node {node} lists no pod CIDR")]
    Empty { node: NodeName },
}

/// The allocator state of one cluster pool.
#[derive(Debug, Clone)]
pub struct CidrPool {
    pool: Ipv4Net,
    mask_size: u8,
    /// Taken ranges by first address. Ranges never overlap, so the range starting last at or
    /// before an address is the only one that can contain it.
    taken: BTreeMap<u32, (Ipv4Net, NodeName)>,
    by_node: BTreeMap<NodeName, Vec<Ipv4Net>>,
    /// Where the next search starts: handing out CIDRs round-robin delays the re-use of a
    /// released CIDR, so stale routes to a dead node's pods are gone before it returns.
    cursor: u64,
}

impl CidrPool {
    /// An empty pool, or why the configuration cannot work.
    pub fn new(pool: Ipv4Net, mask_size: u8) -> Result<CidrPool, PoolConfigError> {
        if pool != pool.trunc() {
            return Err(PoolConfigError::NotNetworkAddress { pool });
        }
        if mask_size > MAX_MASK_SIZE {
            return Err(PoolConfigError::MaskTooLong { mask_size });
        }
        if mask_size < pool.prefix_len() {
            return Err(PoolConfigError::MaskLargerThanPool { pool, mask_size });
        }
        Ok(CidrPool {
            pool,
            mask_size,
            taken: BTreeMap::new(),
            by_node: BTreeMap::new(),
            cursor: first_address(pool),
        })
    }

    pub fn pool(&self) -> Ipv4Net {
        self.pool
    }

    pub fn mask_size(&self) -> u8 {
        self.mask_size
    }

    /// How many per-node CIDRs the pool holds in total.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.mask_size - self.pool.prefix_len())
    }

    /// How many nodes hold an allocation.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// How many CIDRs are allocated, over all nodes.
    pub fn allocated_cidrs(&self) -> usize {
        self.taken.len()
    }

    /// How many CIDRs of the mask size could still be handed out. Restored allocations may be
    /// smaller or larger than the mask size, so this counts the slots no taken range touches
    /// rather than subtracting allocations from the capacity.
    pub fn free_cidrs(&self) -> u64 {
        let shift = 32 - u32::from(self.mask_size);
        let base = first_address(self.pool);
        let mut used = 0u64;
        // The first slot not yet counted; taken ranges are sorted and disjoint, so the slots
        // they touch come in order and two ranges can share only a boundary slot.
        let mut next = 0u64;
        for (taken, _) in self.taken.values() {
            let first = ((first_address(*taken) - base) >> shift).max(next);
            let last = (last_address(*taken) - base) >> shift;
            if last >= first {
                used += last - first + 1;
                next = last + 1;
            }
        }
        self.capacity().saturating_sub(used)
    }

    /// The CIDRs `node` holds, in allocation order.
    pub fn allocation(&self, node: &NodeName) -> Option<&[Ipv4Net]> {
        self.by_node.get(node).map(Vec::as_slice)
    }

    /// Every node holding an allocation.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.by_node.keys()
    }

    /// Takes over an allocation found in the kvstore. Restoring what a node already holds is a
    /// no-op; a node that held other CIDRs gets the new set. Refused when a CIDR lies outside
    /// the pool or overlaps another node's (the state is then unchanged).
    pub fn restore(&mut self, node: &NodeName, cidrs: &[Ipv4Net]) -> Result<(), RestoreError> {
        if cidrs.is_empty() {
            return Err(RestoreError::Empty { node: node.clone() });
        }
        let cidrs: Vec<Ipv4Net> = cidrs.iter().map(Ipv4Net::trunc).collect();
        if self.by_node.get(node) == Some(&cidrs) {
            return Ok(());
        }
        for (i, cidr) in cidrs.iter().enumerate() {
            if !self.pool.contains(cidr) {
                return Err(RestoreError::OutsidePool {
                    node: node.clone(),
                    cidr: *cidr,
                    pool: self.pool,
                });
            }
            if let Some((other_cidr, other)) = self
                .overlapping_all(*cidr)
                .find(|(_, other)| *other != node)
            {
                return Err(RestoreError::Overlaps {
                    node: node.clone(),
                    cidr: *cidr,
                    other: other.clone(),
                    other_cidr,
                });
            }
            // A record listing overlapping CIDRs of its own is as broken as two nodes sharing.
            if let Some(earlier) = cidrs[..i].iter().find(|c| overlaps(**c, *cidr)) {
                return Err(RestoreError::Overlaps {
                    node: node.clone(),
                    cidr: *cidr,
                    other: node.clone(),
                    other_cidr: *earlier,
                });
            }
        }
        self.release(node);
        for cidr in &cidrs {
            self.taken
                .insert(u32::from(cidr.network()), (*cidr, node.clone()));
        }
        self.by_node.insert(node.clone(), cidrs);
        Ok(())
    }

    /// The CIDRs of `node`, allocating one if it holds none. Idempotent: a node keeps its CIDR
    /// until it is released.
    pub fn allocate(&mut self, node: &NodeName) -> Result<Vec<Ipv4Net>, PoolExhausted> {
        self.allocate_preferring(node, None)
    }

    /// Like [`Self::allocate`], but hands out `preferred` if it is a free CIDR of the pool's
    /// mask size (used to give a node back the CIDR it had when its record was deleted by hand).
    pub fn allocate_preferring(
        &mut self,
        node: &NodeName,
        preferred: Option<Ipv4Net>,
    ) -> Result<Vec<Ipv4Net>, PoolExhausted> {
        if let Some(held) = self.by_node.get(node) {
            return Ok(held.clone());
        }
        let usable = |cidr: &Ipv4Net| {
            cidr.prefix_len() == self.mask_size
                && *cidr == cidr.trunc()
                && self.pool.contains(cidr)
                && self.overlapping(*cidr).is_none()
        };
        let cidr = match preferred.filter(usable) {
            Some(cidr) => cidr,
            None => self.find_free().ok_or(PoolExhausted {
                pool: self.pool,
                mask_size: self.mask_size,
                capacity: self.capacity(),
            })?,
        };
        self.cursor = last_address(cidr) + 1;
        self.taken
            .insert(u32::from(cidr.network()), (cidr, node.clone()));
        self.by_node.insert(node.clone(), vec![cidr]);
        Ok(vec![cidr])
    }

    /// Frees every CIDR of `node`. Returns what it held.
    pub fn release(&mut self, node: &NodeName) -> Vec<Ipv4Net> {
        let cidrs = self.by_node.remove(node).unwrap_or_default();
        for cidr in &cidrs {
            self.taken.remove(&u32::from(cidr.network()));
        }
        cidrs
    }

    /// The taken range overlapping `cidr` that starts last, if any: enough to decide whether
    /// `cidr` is free and where the next free address may be.
    fn overlapping(&self, cidr: Ipv4Net) -> Option<(Ipv4Net, &NodeName)> {
        let end = u32::from(cidr.broadcast());
        self.taken
            .range(..=end)
            .next_back()
            .filter(|(_, (taken, _))| overlaps(*taken, cidr))
            .map(|(_, (taken, node))| (*taken, node))
    }

    /// Every taken range overlapping `cidr`, last first.
    fn overlapping_all(&self, cidr: Ipv4Net) -> impl Iterator<Item = (Ipv4Net, &NodeName)> {
        let start = first_address(cidr);
        self.taken
            .range(..=u32::from(cidr.broadcast()))
            .rev()
            .take_while(move |(_, (taken, _))| last_address(*taken) >= start)
            .map(|(_, (taken, node))| (*taken, node))
    }

    /// The first free CIDR of the pool's mask size at or after the cursor, wrapping around once.
    fn find_free(&self) -> Option<Ipv4Net> {
        let start = first_address(self.pool);
        let end = last_address(self.pool) + 1;
        let cursor = self.cursor.clamp(start, end);
        self.find_free_in(cursor, end)
            .or_else(|| self.find_free_in(start, cursor))
    }

    /// The first free CIDR starting in `[from, to)`. Jumps over taken ranges instead of probing
    /// every slot, so a nearly full pool costs one step per taken range.
    fn find_free_in(&self, from: u64, to: u64) -> Option<Ipv4Net> {
        let size = 1u64 << (32 - self.mask_size);
        let base = first_address(self.pool);
        let mut at = align_up(from - base, size) + base;
        while at < to {
            let candidate =
                Ipv4Net::new(Ipv4Addr::from(u32::try_from(at).ok()?), self.mask_size).ok()?;
            match self.overlapping(candidate) {
                None => return Some(candidate),
                Some((taken, _)) => {
                    at = align_up(last_address(taken) + 1 - base, size) + base;
                }
            }
        }
        None
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

fn first_address(net: Ipv4Net) -> u64 {
    u64::from(u32::from(net.network()))
}

fn last_address(net: Ipv4Net) -> u64 {
    u64::from(u32::from(net.broadcast()))
}

fn align_up(offset: u64, size: u64) -> u64 {
    offset.div_ceil(size) * size
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn node(name: &str) -> NodeName {
        NodeName::new(name)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_get_distinct_cidrs_of_the_mask_size_inside_the_pool() {
        let mut pool = CidrPool::new(net("10.0.0.0/8"), 24).unwrap();
        let mut seen = BTreeSet::new();
        for i in 0..300 {
            let cidrs = pool.allocate(&node(&format!("n{i}"))).unwrap();
            assert_eq!(cidrs.len(), 1);
            let cidr = cidrs[0];
            assert_eq!(cidr.prefix_len(), 24);
            assert!(net("10.0.0.0/8").contains(&cidr));
            assert!(seen.insert(cidr), "{cidr} handed out twice");
        }
        assert_eq!(pool.len(), 300);
        assert_eq!(
            pool.allocation(&node("n0")),
            Some(&[net("10.0.0.0/24")][..])
        );
        assert_eq!(
            pool.allocation(&node("n299")),
            Some(&[net("10.1.43.0/24")][..])
        );
    }

    #[test]
    fn allocation_is_idempotent() {
        let mut pool = CidrPool::new(net("10.0.0.0/16"), 24).unwrap();
        let first = pool.allocate(&node("a")).unwrap();
        pool.allocate(&node("b")).unwrap();
        assert_eq!(pool.allocate(&node("a")).unwrap(), first);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn restart_rebuild_keeps_every_cidr_and_skips_them() {
        let mut before = CidrPool::new(net("10.0.0.0/16"), 24).unwrap();
        let a = before.allocate(&node("a")).unwrap();
        let b = before.allocate(&node("b")).unwrap();

        let mut after = CidrPool::new(net("10.0.0.0/16"), 24).unwrap();
        after.restore(&node("b"), &b).unwrap();
        after.restore(&node("a"), &a).unwrap();
        // Restoring the same record again (our own watch event) changes nothing.
        after.restore(&node("a"), &a).unwrap();
        assert_eq!(after.allocate(&node("a")).unwrap(), a);
        assert_eq!(after.allocate(&node("b")).unwrap(), b);
        let c = after.allocate(&node("c")).unwrap();
        assert!(c != a && c != b, "new node got a restored CIDR {c:?}");
    }

    #[test]
    fn restored_cidrs_of_other_sizes_block_what_they_cover() {
        let mut pool = CidrPool::new(net("10.0.0.0/22"), 24).unwrap();
        // An older configuration handed out a /23 covering the first two /24s.
        pool.restore(&node("old"), &[net("10.0.0.0/23")]).unwrap();
        assert_eq!(pool.allocate(&node("a")).unwrap(), vec![net("10.0.2.0/24")]);
        assert_eq!(pool.allocate(&node("b")).unwrap(), vec![net("10.0.3.0/24")]);
        assert!(pool.allocate(&node("c")).is_err());
    }

    #[test]
    fn overlapping_and_foreign_allocations_are_refused_and_leave_the_state_alone() {
        let mut pool = CidrPool::new(net("10.0.0.0/16"), 24).unwrap();
        pool.restore(&node("a"), &[net("10.0.5.0/24")]).unwrap();
        assert_eq!(
            pool.restore(&node("b"), &[net("10.0.5.128/25")]),
            Err(RestoreError::Overlaps {
                node: node("b"),
                cidr: net("10.0.5.128/25"),
                other: node("a"),
                other_cidr: net("10.0.5.0/24"),
            })
        );
        assert_eq!(
            pool.restore(&node("c"), &[net("192.168.0.0/24")]),
            Err(RestoreError::OutsidePool {
                node: node("c"),
                cidr: net("192.168.0.0/24"),
                pool: net("10.0.0.0/16"),
            })
        );
        assert!(pool.restore(&node("d"), &[]).is_err());
        assert!(
            pool.restore(&node("e"), &[net("10.0.7.0/24"), net("10.0.7.0/25")])
                .is_err()
        );
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.allocation(&node("b")), None);
        assert_eq!(pool.allocation(&node("a")), Some(&[net("10.0.5.0/24")][..]));
        // A record covering another node's CIDR is refused even when it also covers its own.
        pool.restore(&node("f"), &[net("10.0.6.0/24")]).unwrap();
        assert!(matches!(
            pool.restore(&node("f"), &[net("10.0.4.0/22")]),
            Err(RestoreError::Overlaps { other, .. }) if other == node("a")
        ));
        pool.release(&node("f"));
        // A node's own CIDR may be replaced by a record covering it.
        pool.restore(&node("a"), &[net("10.0.4.0/23")]).unwrap();
        assert_eq!(pool.allocation(&node("a")), Some(&[net("10.0.4.0/23")][..]));
    }

    #[test]
    fn exhaustion_is_an_error_until_a_cidr_is_released() {
        let mut pool = CidrPool::new(net("10.1.0.0/24"), 26).unwrap();
        assert_eq!(pool.capacity(), 4);
        for name in ["a", "b", "c", "d"] {
            pool.allocate(&node(name)).unwrap();
        }
        let err = pool.allocate(&node("e")).unwrap_err();
        assert_eq!(err.capacity, 4);
        assert!(err.to_string().contains("exhausted"), "{err}");
        let freed = pool.release(&node("b"));
        assert_eq!(freed, vec![net("10.1.0.64/26")]);
        assert_eq!(pool.allocate(&node("e")).unwrap(), freed);
    }

    #[test]
    fn released_cidrs_are_reused_last_and_preferred_ones_first() {
        let mut pool = CidrPool::new(net("10.0.0.0/16"), 24).unwrap();
        let a = pool.allocate(&node("a")).unwrap();
        pool.allocate(&node("b")).unwrap();
        pool.release(&node("a"));
        let c = pool.allocate(&node("c")).unwrap();
        assert_ne!(c, a, "a just-released CIDR went straight to a new node");
        assert_eq!(pool.allocate_preferring(&node("a"), Some(a[0])).unwrap(), a);
        // A preferred CIDR that is taken or of the wrong size is ignored.
        let d = pool.allocate_preferring(&node("d"), Some(c[0])).unwrap();
        assert_ne!(d, c);
        let e = pool
            .allocate_preferring(&node("e"), Some(net("10.0.200.0/25")))
            .unwrap();
        assert_eq!(e[0].prefix_len(), 24);
    }

    #[test]
    fn whole_address_space_pool_does_not_overflow() {
        let mut pool = CidrPool::new(net("0.0.0.0/0"), 1).unwrap();
        assert_eq!(pool.capacity(), 2);
        assert_eq!(pool.allocate(&node("a")).unwrap(), vec![net("0.0.0.0/1")]);
        assert_eq!(pool.allocate(&node("b")).unwrap(), vec![net("128.0.0.0/1")]);
        assert!(pool.allocate(&node("c")).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(u8),
        Release(u8),
        Restore(u8, u32, u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..12).prop_map(Op::Allocate),
            (0u8..12).prop_map(Op::Release),
            (0u8..12, any::<u32>(), 20u8..=30).prop_map(|(n, ip, len)| Op::Restore(n, ip, len)),
        ]
    }

    proptest::proptest! {
        /// Whatever happens, no two nodes hold overlapping CIDRs, every CIDR lies in the pool,
        /// and allocation fails only when no free CIDR of the mask size is left.
        #[test]
        fn nodes_never_share_addresses(ops in proptest::collection::vec(op(), 1..60)) {
            let pool_net = net("10.9.0.0/22");
            let mut pool = CidrPool::new(pool_net, 24).unwrap();
            for op in ops {
                match op {
                    Op::Allocate(n) => {
                        let name = node(&format!("n{n}"));
                        let held = pool.allocation(&name).map(<[Ipv4Net]>::to_vec);
                        match pool.allocate(&name) {
                            Ok(cidrs) => {
                                if let Some(held) = held {
                                    proptest::prop_assert_eq!(cidrs, held);
                                }
                            }
                            Err(_) => {
                                let free = (0..4u32).any(|i| {
                                    let slot = Ipv4Net::new(
                                        Ipv4Addr::from(u32::from(pool_net.network()) + (i << 8)),
                                        24,
                                    )
                                    .unwrap();
                                    pool.overlapping(slot).is_none()
                                });
                                proptest::prop_assert!(!free, "exhausted with a free slot");
                            }
                        }
                    }
                    Op::Release(n) => {
                        pool.release(&node(&format!("n{n}")));
                    }
                    Op::Restore(n, ip, len) => {
                        let ip = u32::from(pool_net.network()) | (ip & 0x3ff);
                        let cidr = Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap().trunc();
                        let _ = pool.restore(&node(&format!("n{n}")), &[cidr]);
                    }
                }
                let all: Vec<(Ipv4Net, NodeName)> = pool
                    .by_node
                    .iter()
                    .flat_map(|(n, cidrs)| cidrs.iter().map(move |c| (*c, n.clone())))
                    .collect();
                for (i, (a, na)) in all.iter().enumerate() {
                    proptest::prop_assert!(pool_net.contains(a));
                    for (b, nb) in &all[i + 1..] {
                        proptest::prop_assert!(!overlaps(*a, *b), "{a} of {na} overlaps {b} of {nb}");
                    }
                }
                proptest::prop_assert_eq!(pool.taken.len(), all.len());
                proptest::prop_assert_eq!(pool.allocated_cidrs(), all.len());
                let free_slots = (0..4u32)
                    .filter(|i| {
                        let slot = Ipv4Net::new(
                            Ipv4Addr::from(u32::from(pool_net.network()) + (i << 8)),
                            24,
                        )
                        .unwrap();
                        pool.overlapping(slot).is_none()
                    })
                    .count();
                proptest::prop_assert_eq!(pool.free_cidrs(), free_slots as u64);
            }
        }
    }

    #[test]
    fn bad_configurations_are_rejected_with_the_flag_named() {
        let err = CidrPool::new(net("10.0.0.0/16"), 8).unwrap_err();
        assert_eq!(
            err,
            PoolConfigError::MaskLargerThanPool {
                pool: net("10.0.0.0/16"),
                mask_size: 8
            }
        );
        assert!(err.to_string().contains("--cluster-pool-ipv4-mask-size 8"));
        assert!(err.to_string().contains("between 16 and 30"), "{err}");
        assert!(matches!(
            CidrPool::new(net("10.0.0.0/8"), 31),
            Err(PoolConfigError::MaskTooLong { .. })
        ));
        let err = CidrPool::new(net("10.0.0.1/8"), 24).unwrap_err();
        assert!(err.to_string().contains("did you mean 10.0.0.0/8"), "{err}");
        assert!(CidrPool::new(net("10.0.0.0/24"), 24).is_ok());
    }
}
