//! The endpoint manager's bookkeeping, without IO: endpoint ids, which container owns which
//! endpoint, each endpoint's record and the resources it still holds.
//!
//! Creations in flight are reservations (id + container id), so two concurrent creations
//! never get the same id and a container never gets two endpoints; an endpoint becomes a
//! record once it is ready (or, at restore, while it is being claimed again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use datapath::api::{EndpointId, MAX_IFNAME_LEN, MacAddr};
use model::identity::NumericIdentity;
use model::labels::Labels;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::messages::{CreateEndpoint, EndpointError, EndpointRef};
use crate::policy::{NamedPort, Revision};

/// The highest endpoint id. Upstream's endpoint id pool hands out 1..=4095 (id 0 is never
/// an endpoint), small enough for the datapath's 16-bit ids and for policy map names.
pub const MAX_ENDPOINT_ID: u16 = 4095;

/// Where an endpoint stands, named as upstream's endpoint states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Claiming its resources again after an agent restart.
    Restoring,
    /// Policy realized: traffic flows as the policy says.
    Ready,
    /// Being removed (or a removal failed part way and waits for another delete).
    Disconnecting,
}

/// What an endpoint holds and must give back when it goes. Creation sets a flag before the
/// step that may leave something behind (so a rollback undoes half-done idempotent steps too)
/// and, for the non-idempotent steps (ip, identity), only once they succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub ip: bool,
    pub links: bool,
    pub identity: bool,
    pub ipcache: bool,
    pub lxc: bool,
    pub attachment: bool,
    pub policy: bool,
}

impl Resources {
    /// Everything an endpoint holds once ready.
    pub const ALL: Resources = Resources {
        ip: true,
        links: true,
        identity: true,
        ipcache: true,
        lxc: true,
        attachment: true,
        policy: true,
    };

    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// The names of what is held, for error messages.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.policy, "policy"),
            (self.attachment, "attachment"),
            (self.lxc, "endpoint map entry"),
            (self.ipcache, "ipcache entry"),
            (self.identity, "identity"),
            (self.links, "veth pair"),
            (self.ip, "ip"),
        ]
        .into_iter()
        .filter_map(|(held, name)| held.then_some(name))
        .collect()
    }
}

/// One endpoint as it is persisted (`<state-dir>/endpoints/<id>.json`) and shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub state: EndpointState,
    pub container_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub netns: PathBuf,
    /// The interface name inside the pod.
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: MacAddr,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Every label the pod has.
    pub labels: Labels,
    /// The security-relevant labels, which make the identity.
    pub identity_labels: Labels,
    pub identity: NumericIdentity,
    pub named_ports: Vec<NamedPort>,
    /// The policy revision realized for the endpoint.
    pub policy_revision: Revision,
    pub held: Resources,
}

/// The host-side interface of a container's veth pair, as upstream names it: `lxc` and the
/// first 12 hex digits of the SHA-256 of the container id (15 bytes, the kernel's limit).
pub fn host_ifname(container_id: &str) -> String {
    let digest = Sha256::digest(container_id.as_bytes());
    let mut name = String::from("lxc");
    for byte in digest.iter().take((MAX_IFNAME_LEN - 3) / 2) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// Refuses requests that could never succeed, before anything is allocated.
pub fn validate(req: &CreateEndpoint) -> Result<(), EndpointError> {
    let invalid = |reason: &str| {
        Err(EndpointError::InvalidRequest {
            reason: reason.to_owned(),
        })
    };
    if req.container_id.trim().is_empty() {
        return invalid("the container id is empty");
    }
    if req.netns.as_os_str().is_empty() {
        return invalid("the network namespace path is empty");
    }
    if datapath::api::validate_ifname(&req.ifname).is_err() {
        return invalid("the pod interface name is empty or longer than 15 bytes");
    }
    Ok(())
}

/// The ids, reservations and records of one node's endpoints.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    records: BTreeMap<EndpointId, EndpointRecord>,
    /// Creations in flight.
    creating: BTreeMap<EndpointId, String>,
    /// Endpoints with an operation (removal, restore) in flight.
    busy: BTreeSet<EndpointId>,
    /// Changes to the records so far: a cheap test of whether a listing would differ from
    /// the last one (Hubble's enrichment polls it).
    generation: u64,
    /// The last id handed out; the next search starts after it, so a freed id is not reused
    /// at once (a late message about the old endpoint must not hit a new one).
    last_id: u16,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn in_use(&self, id: EndpointId) -> bool {
        self.records.contains_key(&id) || self.creating.contains_key(&id)
    }

    /// The endpoint a reference names, if it exists or is being created.
    pub fn resolve(&self, endpoint: &EndpointRef) -> Option<EndpointId> {
        match endpoint {
            EndpointRef::Id(id) => self.in_use(*id).then_some(*id),
            EndpointRef::ContainerId(container) => self
                .creating
                .iter()
                .find(|(_, c)| *c == container)
                .map(|(id, _)| *id)
                .or_else(|| {
                    self.records
                        .values()
                        .find(|r| r.container_id == *container)
                        .map(|r| r.id)
                }),
        }
    }

    /// Reserves a fresh id for a container's new endpoint.
    pub fn reserve(&mut self, container_id: &str) -> Result<EndpointId, EndpointError> {
        if let Some(id) = self.resolve(&EndpointRef::ContainerId(container_id.to_owned())) {
            return Err(
                if self.creating.contains_key(&id) || self.busy.contains(&id) {
                    EndpointError::Busy {
                        endpoint: EndpointRef::ContainerId(container_id.to_owned()),
                    }
                } else {
                    EndpointError::AlreadyExists {
                        container_id: container_id.to_owned(),
                        id,
                    }
                },
            );
        }
        let start = self.last_id;
        let found = (1..=MAX_ENDPOINT_ID)
            .map(|offset| {
                let raw = (u32::from(start) + u32::from(offset) - 1) % u32::from(MAX_ENDPOINT_ID);
                // raw is below MAX_ENDPOINT_ID, so raw + 1 fits in u16.
                EndpointId::new(u16::try_from(raw + 1).unwrap_or(MAX_ENDPOINT_ID))
            })
            .find(|id| !self.in_use(*id))
            .ok_or(EndpointError::IdsExhausted)?;
        self.last_id = found.get();
        self.creating.insert(found, container_id.to_owned());
        Ok(found)
    }

    /// Ends a creation: the record becomes the endpoint, or (`None`) the id is free again.
    pub fn finish_creation(&mut self, id: EndpointId, record: Option<EndpointRecord>) {
        self.creating.remove(&id);
        if let Some(record) = record {
            self.records.insert(id, record);
            self.generation += 1;
        }
    }

    /// Adds a record read back from the state dir; `false` if its id or container is taken.
    pub fn adopt(&mut self, record: EndpointRecord) -> bool {
        let taken = self.in_use(record.id)
            || self
                .resolve(&EndpointRef::ContainerId(record.container_id.clone()))
                .is_some();
        if taken {
            return false;
        }
        self.last_id = self.last_id.max(record.id.get());
        self.records.insert(record.id, record);
        self.generation += 1;
        true
    }

    pub fn get(&self, id: EndpointId) -> Option<&EndpointRecord> {
        self.records.get(&id)
    }

    pub fn records(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.records.values()
    }

    pub fn creating(&self) -> Vec<(EndpointId, String)> {
        self.creating
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect()
    }

    pub fn is_creating(&self, id: EndpointId) -> bool {
        self.creating.contains_key(&id)
    }

    /// Marks an endpoint busy; `false` if it already was.
    pub fn begin(&mut self, id: EndpointId) -> bool {
        self.busy.insert(id)
    }

    pub fn end(&mut self, id: EndpointId) {
        self.busy.remove(&id);
    }

    /// Replaces a record (after a state change).
    pub fn update(&mut self, record: EndpointRecord) {
        self.records.insert(record.id, record);
        self.generation += 1;
    }

    pub fn remove(&mut self, id: EndpointId) -> Option<EndpointRecord> {
        self.busy.remove(&id);
        let removed = self.records.remove(&id);
        if removed.is_some() {
            self.generation += 1;
        }
        removed
    }

    /// How many times the records changed ([`super::Generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: u16, container: &str) -> EndpointRecord {
        EndpointRecord {
            id: EndpointId::new(id),
            state: EndpointState::Ready,
            container_id: container.to_owned(),
            pod_name: "p".into(),
            pod_namespace: "default".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            host_ifname: host_ifname(container),
            host_ifindex: 7,
            host_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1500,
            labels: Labels::new(),
            identity_labels: Labels::new(),
            identity: NumericIdentity::new(256),
            named_ports: Vec::new(),
            policy_revision: Revision::INITIAL,
            held: Resources::ALL,
        }
    }

    #[test]
    fn the_generation_moves_when_the_records_change_and_only_then() {
        let mut reg = Registry::new();
        let g0 = reg.generation();
        let id = reg.reserve("c1").unwrap();
        reg.begin(id);
        reg.end(id);
        assert_eq!(reg.generation(), g0, "reservations are not endpoints yet");
        reg.finish_creation(id, None);
        assert_eq!(reg.generation(), g0, "a failed creation changes no record");
        let id = reg.reserve("c1").unwrap();
        reg.finish_creation(id, Some(record(id.get(), "c1")));
        let g1 = reg.generation();
        assert!(g1 > g0);
        let mut changed = record(id.get(), "c1");
        changed.pod_name = "renamed".into();
        reg.update(changed);
        let g2 = reg.generation();
        assert!(g2 > g1);
        assert!(reg.adopt(record(9, "c9")));
        let g3 = reg.generation();
        assert!(g3 > g2);
        assert!(!reg.adopt(record(9, "c9")), "a taken id is refused");
        assert_eq!(reg.generation(), g3);
        assert!(reg.remove(EndpointId::new(9)).is_some());
        let g4 = reg.generation();
        assert!(g4 > g3);
        assert!(reg.remove(EndpointId::new(9)).is_none());
        assert_eq!(reg.generation(), g4, "removing nothing changes nothing");
    }

    #[test]
    fn host_interface_names_are_lxc_and_twelve_hex_digits() {
        let name = host_ifname("0123abcd");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("lxc"));
        assert!(name[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(name, host_ifname("0123abce"));
        assert_eq!(name, host_ifname("0123abcd"));
    }

    #[test]
    fn ids_are_unique_per_container_and_not_reused_at_once() {
        let mut reg = Registry::new();
        let a = reg.reserve("a").unwrap();
        let b = reg.reserve("b").unwrap();
        assert_eq!((a.get(), b.get()), (1, 2));
        assert!(matches!(reg.reserve("a"), Err(EndpointError::Busy { .. })));
        reg.finish_creation(a, None);
        let c = reg.reserve("c").unwrap();
        assert_eq!(c.get(), 3, "a freed id is not handed out again at once");
        reg.finish_creation(b, Some(record(2, "b")));
        assert!(matches!(
            reg.reserve("b"),
            Err(EndpointError::AlreadyExists { id, .. }) if id.get() == 2
        ));
        assert_eq!(reg.resolve(&EndpointRef::ContainerId("b".into())), Some(b));
    }

    #[test]
    fn ids_wrap_around_and_run_out() {
        let mut reg = Registry::new();
        for n in 0..MAX_ENDPOINT_ID {
            reg.reserve(&format!("c{n}")).unwrap();
        }
        assert!(matches!(
            reg.reserve("one-more"),
            Err(EndpointError::IdsExhausted)
        ));
        reg.finish_creation(EndpointId::new(7), None);
        assert_eq!(reg.reserve("again").unwrap().get(), 7);
    }

    #[test]
    fn adopted_records_keep_their_ids_and_block_duplicates() {
        let mut reg = Registry::new();
        assert!(reg.adopt(record(9, "x")));
        assert!(!reg.adopt(record(9, "y")));
        assert!(!reg.adopt(record(10, "x")));
        assert_eq!(reg.reserve("z").unwrap().get(), 10);
    }

    #[test]
    fn resources_name_what_is_left() {
        let held = Resources {
            ip: true,
            links: true,
            ..Resources::default()
        };
        assert_eq!(held.names(), vec!["veth pair", "ip"]);
        assert!(Resources::default().is_empty());
    }
}
