//! An in-memory [`EndpointLinks`] for actor tests and the simulation (feature `test-util`).
//!
//! It keeps what a real node would hold (one pair per host interface name, each with the spec
//! it was built from) and behaves like the netlink implementation where the endpoint manager
//! can tell the difference: creating an existing name fails, deletion is idempotent, MACs and
//! interface indices are unique. Faults: fail the next N calls of an operation. Clones share
//! state, so a test inspects what the actor's handle did, and a "restarted" manager over the
//! same fake finds the pairs of the previous one.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::api::{
    EndpointLinkInfo, EndpointLinkSpec, EndpointLinks, LinkError, MacAddr, validate_ifname,
};

/// Which operation a fault is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkFault {
    Create,
    Delete,
    Get,
}

#[derive(Debug, Default)]
struct Inner {
    links: BTreeMap<String, (EndpointLinkSpec, EndpointLinkInfo)>,
    next_ifindex: u32,
    faults: BTreeMap<LinkFault, usize>,
}

impl Inner {
    fn take_fault(&mut self, fault: LinkFault, ifname: &str) -> Result<(), LinkError> {
        match self.faults.get_mut(&fault) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(LinkError::Netlink {
                    ifname: ifname.to_owned(),
                    step: "injected fault",
                    source: io::Error::other(format!("{fault:?} fault injected")),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The recording fake. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct FakeLinks {
    inner: Arc<Mutex<Inner>>,
}

impl FakeLinks {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `n` calls of `fault`'s operation fail.
    pub fn fail_next(&self, fault: LinkFault, n: usize) {
        self.lock().faults.insert(fault, n);
    }

    /// The specs of the pairs that exist, by host interface name.
    pub fn links(&self) -> Vec<EndpointLinkSpec> {
        self.lock()
            .links
            .values()
            .map(|(spec, _)| spec.clone())
            .collect()
    }

    /// Whether a pair with this host side exists.
    pub fn contains(&self, host_ifname: &str) -> bool {
        self.lock().links.contains_key(host_ifname)
    }

    /// Removes a pair behind the manager's back, as the kernel does when a pod's namespace
    /// goes away.
    pub fn vanish(&self, host_ifname: &str) -> bool {
        self.lock().links.remove(host_ifname).is_some()
    }
}

/// A locally administered unicast MAC derived from an interface index.
fn fake_mac(ifindex: u32) -> MacAddr {
    let [a, b, c, d] = ifindex.to_be_bytes();
    MacAddr([0x02, 0xfa, a, b, c, d])
}

#[async_trait]
impl EndpointLinks for FakeLinks {
    async fn create(&self, spec: &EndpointLinkSpec) -> Result<EndpointLinkInfo, LinkError> {
        validate_ifname(&spec.host_ifname)?;
        validate_ifname(&spec.pod_ifname)?;
        let mut inner = self.lock();
        inner.take_fault(LinkFault::Create, &spec.host_ifname)?;
        if inner.links.contains_key(&spec.host_ifname) {
            return Err(LinkError::Exists {
                ifname: spec.host_ifname.clone(),
            });
        }
        inner.next_ifindex += 2;
        let host_ifindex = inner.next_ifindex + 100;
        let info = EndpointLinkInfo {
            host_ifname: spec.host_ifname.clone(),
            host_ifindex,
            host_mac: fake_mac(host_ifindex),
            pod_mac: fake_mac(host_ifindex + 1),
            pod_ifindex: host_ifindex + 1,
            mtu: spec.mtu,
        };
        inner
            .links
            .insert(spec.host_ifname.clone(), (spec.clone(), info.clone()));
        Ok(info)
    }

    async fn delete(&self, host_ifname: &str) -> Result<bool, LinkError> {
        let mut inner = self.lock();
        inner.take_fault(LinkFault::Delete, host_ifname)?;
        Ok(inner.links.remove(host_ifname).is_some())
    }

    async fn get(&self, host_ifname: &str) -> Result<Option<EndpointLinkInfo>, LinkError> {
        let mut inner = self.lock();
        inner.take_fault(LinkFault::Get, host_ifname)?;
        Ok(inner
            .links
            .get(host_ifname)
            .map(|(_, info)| EndpointLinkInfo {
                pod_ifindex: 0,
                ..info.clone()
            }))
    }
}
