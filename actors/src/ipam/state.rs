//! Host-scope address allocation as a pure state machine: which addresses of the node's range
//! are taken and by whom. No IO; the actor persists [`IpamSnapshot`]s of it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::messages::{IpamDump, IpamError, ReservedAddress};

/// The owner recorded for the router (gateway) address, as upstream names it.
pub const ROUTER_OWNER: &str = "router";

/// The version of the persisted snapshot format; a file with another version is refused.
pub const SNAPSHOT_VERSION: u32 = 1;

/// What survives an agent restart: the range and every allocation but the router's, which
/// follows from the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamSnapshot {
    pub version: u32,
    pub range: Ipv4Net,
    pub allocations: BTreeMap<Ipv4Addr, String>,
}

/// The allocations of one IPv4 range.
///
/// Invariants: every allocated address lies strictly between the network and the broadcast
/// address and is not the router address; an address has at most one owner; owners are
/// non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamState {
    range: Ipv4Net,
    router: Ipv4Addr,
    /// First and last address pods may get (router + 1 ..= broadcast - 1).
    first: u32,
    last: u32,
    allocations: BTreeMap<Ipv4Addr, String>,
    /// Where the search for the next free address starts: next-fit, so a just-released address
    /// is handed out again only after the rest of the range, which keeps stale conntrack and
    /// ipcache state of its previous owner from applying to a new pod.
    cursor: u32,
}

impl IpamState {
    /// An empty allocator for `range` (host bits are ignored). The range needs room for the
    /// network, router, broadcast and at least one pod address: a /30 or larger.
    pub fn new(range: Ipv4Net) -> Result<Self, IpamError> {
        let range = range.trunc();
        let network = u32::from(range.network());
        let broadcast = u32::from(range.broadcast());
        // network, router, pod, broadcast: four addresses at least.
        if broadcast - network < 3 {
            return Err(IpamError::RangeTooSmall { range });
        }
        let router = network + 1;
        Ok(IpamState {
            range,
            router: Ipv4Addr::from(router),
            first: router + 1,
            last: broadcast - 1,
            allocations: BTreeMap::new(),
            cursor: router + 1,
        })
    }

    /// Rebuilds the allocator from a persisted snapshot. A snapshot of another range, another
    /// format version, or with an allocation that could never have been made is refused: the
    /// caller must not silently start over, or addresses in use would be handed out again.
    pub fn restore(range: Ipv4Net, snapshot: IpamSnapshot) -> Result<Self, IpamError> {
        let mut state = Self::new(range)?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(IpamError::CorruptSnapshot {
                message: format!(
                    "format version {} is not the supported version {SNAPSHOT_VERSION}",
                    snapshot.version
                ),
            });
        }
        if snapshot.range.trunc() != state.range {
            return Err(IpamError::RangeChanged {
                persisted: snapshot.range,
                configured: state.range,
            });
        }
        for (ip, owner) in snapshot.allocations {
            state
                .allocate(&owner, Some(ip))
                .map_err(|err| IpamError::CorruptSnapshot {
                    message: format!("allocation of {ip} to {owner:?}: {err}"),
                })?;
        }
        Ok(state)
    }

    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// The router (gateway) address: the first usable address, never given to a pod.
    pub fn router(&self) -> Ipv4Addr {
        self.router
    }

    /// How many pod addresses the range has in total.
    pub fn capacity(&self) -> u32 {
        self.last - self.first + 1
    }

    /// The owner of `ip`, if it is allocated (the router address is owned by `router`).
    pub fn owner(&self, ip: Ipv4Addr) -> Option<&str> {
        if ip == self.router {
            return Some(ROUTER_OWNER);
        }
        self.allocations.get(&ip).map(String::as_str)
    }

    /// Allocates `ip`, or the next free address when `ip` is `None`, to `owner`. Asking again
    /// for an address the same owner already holds succeeds (an endpoint restored after a
    /// restart claims its address again).
    pub fn allocate(&mut self, owner: &str, ip: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        if owner.is_empty() {
            return Err(IpamError::EmptyOwner);
        }
        let ip = match ip {
            Some(ip) => {
                self.check_allocatable(ip)?;
                match self.allocations.get(&ip) {
                    Some(current) if current == owner => return Ok(ip),
                    Some(current) => {
                        return Err(IpamError::AlreadyAllocated {
                            ip,
                            owner: current.clone(),
                        });
                    }
                    None => ip,
                }
            }
            None => {
                let ip = self.next_free().ok_or(IpamError::Exhausted {
                    range: self.range,
                    capacity: self.capacity(),
                })?;
                self.cursor = if u32::from(ip) >= self.last {
                    self.first
                } else {
                    u32::from(ip) + 1
                };
                ip
            }
        };
        self.allocations.insert(ip, owner.to_owned());
        Ok(ip)
    }

    /// Releases `ip`; returns the owner it had.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<String, IpamError> {
        self.check_allocatable(ip)?;
        self.allocations
            .remove(&ip)
            .ok_or(IpamError::NotAllocated { ip })
    }

    /// Puts back an allocation that [`IpamState::release`] removed (used when persisting the
    /// release failed).
    pub(super) fn reinstate(&mut self, ip: Ipv4Addr, owner: String) {
        self.allocations.insert(ip, owner);
    }

    pub fn snapshot(&self) -> IpamSnapshot {
        IpamSnapshot {
            version: SNAPSHOT_VERSION,
            range: self.range,
            allocations: self.allocations.clone(),
        }
    }

    pub fn dump(&self) -> IpamDump {
        IpamDump {
            range: self.range,
            router: self.router,
            capacity: self.capacity(),
            allocations: self.allocations.clone(),
        }
    }

    /// Checks that `ip` is a pod address of the range.
    fn check_allocatable(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        if !self.range.contains(&ip) {
            return Err(IpamError::OutOfRange {
                ip,
                range: self.range,
            });
        }
        let reserved = if ip == self.range.network() {
            Some(ReservedAddress::Network)
        } else if ip == self.range.broadcast() {
            Some(ReservedAddress::Broadcast)
        } else if ip == self.router {
            Some(ReservedAddress::Router)
        } else {
            None
        };
        match reserved {
            Some(reserved) => Err(IpamError::Reserved { ip, reserved }),
            None => Ok(()),
        }
    }

    /// The first free address at or after the cursor, wrapping around. The scan ends after
    /// at most `allocations + 1` steps because every step past a free address stops it.
    fn next_free(&self) -> Option<Ipv4Addr> {
        if self.allocations.len() >= self.capacity() as usize {
            return None;
        }
        (self.cursor..=self.last)
            .chain(self.first..self.cursor)
            .map(Ipv4Addr::from)
            .find(|ip| !self.allocations.contains_key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn next_free_skips_network_router_and_broadcast() {
        let mut state = IpamState::new(range("10.0.0.0/29")).unwrap();
        assert_eq!(state.router(), ip("10.0.0.1"));
        assert_eq!(state.capacity(), 5);
        let got: Vec<_> = (0..5)
            .map(|n| state.allocate(&format!("pod-{n}"), None).unwrap())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        assert!(matches!(
            state.allocate("pod-5", None),
            Err(IpamError::Exhausted { capacity: 5, .. })
        ));
    }

    #[test]
    fn reserved_and_foreign_addresses_are_refused() {
        let mut state = IpamState::new(range("10.0.0.0/24")).unwrap();
        for (addr, reserved) in [
            ("10.0.0.0", ReservedAddress::Network),
            ("10.0.0.1", ReservedAddress::Router),
            ("10.0.0.255", ReservedAddress::Broadcast),
        ] {
            match state.allocate("pod", Some(ip(addr))) {
                Err(IpamError::Reserved {
                    ip: got,
                    reserved: r,
                }) => {
                    assert_eq!((got, r), (ip(addr), reserved));
                }
                other => panic!("{addr}: {other:?}"),
            }
        }
        assert!(matches!(
            state.allocate("pod", Some(ip("10.0.1.7"))),
            Err(IpamError::OutOfRange { .. })
        ));
        assert!(matches!(
            state.allocate("", None),
            Err(IpamError::EmptyOwner)
        ));
        assert_eq!(state.owner(ip("10.0.0.1")), Some(ROUTER_OWNER));
    }

    #[test]
    fn a_specific_address_has_one_owner_and_the_same_owner_may_claim_it_again() {
        let mut state = IpamState::new(range("10.0.0.0/24")).unwrap();
        assert_eq!(
            state.allocate("a", Some(ip("10.0.0.9"))).unwrap(),
            ip("10.0.0.9")
        );
        assert_eq!(
            state.allocate("a", Some(ip("10.0.0.9"))).unwrap(),
            ip("10.0.0.9")
        );
        match state.allocate("b", Some(ip("10.0.0.9"))) {
            Err(IpamError::AlreadyAllocated { owner, .. }) => assert_eq!(owner, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(state.release(ip("10.0.0.9")).unwrap(), "a");
        assert!(matches!(
            state.release(ip("10.0.0.9")),
            Err(IpamError::NotAllocated { .. })
        ));
    }

    #[test]
    fn released_addresses_come_back_only_after_the_rest_of_the_range() {
        let mut state = IpamState::new(range("10.0.0.0/29")).unwrap();
        let a = state.allocate("a", None).unwrap();
        state.release(a).unwrap();
        let b = state.allocate("b", None).unwrap();
        assert_ne!(a, b);
        for n in 0..3 {
            state.allocate(&format!("c{n}"), None).unwrap();
        }
        // Only `a`'s old address is left; the cursor wraps around to it.
        assert_eq!(state.allocate("d", None).unwrap(), a);
    }

    #[test]
    fn too_small_ranges_are_refused() {
        for small in ["10.0.0.0/31", "10.0.0.0/32"] {
            assert!(matches!(
                IpamState::new(range(small)),
                Err(IpamError::RangeTooSmall { .. })
            ));
        }
        let state = IpamState::new(range("10.0.0.0/30")).unwrap();
        assert_eq!(state.capacity(), 1);
    }

    #[test]
    fn restore_round_trips_and_refuses_inconsistent_snapshots() {
        let mut state = IpamState::new(range("10.0.0.0/24")).unwrap();
        state.allocate("a", None).unwrap();
        state.allocate("b", Some(ip("10.0.0.77"))).unwrap();
        let snapshot = state.snapshot();
        let restored = IpamState::restore(range("10.0.0.0/24"), snapshot.clone()).unwrap();
        assert_eq!(restored.dump().allocations, state.dump().allocations);

        assert!(matches!(
            IpamState::restore(range("10.0.1.0/24"), snapshot.clone()),
            Err(IpamError::RangeChanged { .. })
        ));
        let mut bad = snapshot.clone();
        bad.allocations.insert(ip("10.0.0.1"), "pod".to_owned());
        assert!(matches!(
            IpamState::restore(range("10.0.0.0/24"), bad),
            Err(IpamError::CorruptSnapshot { .. })
        ));
        let mut future = snapshot;
        future.version = 2;
        assert!(matches!(
            IpamState::restore(range("10.0.0.0/24"), future),
            Err(IpamError::CorruptSnapshot { .. })
        ));
    }
}
