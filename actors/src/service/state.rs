//! Services and their ids as a pure state machine: service (rev-NAT) ids per frontend, global
//! backend ids shared by every service that uses the same backend, and the datapath effects of
//! every change.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use datapath::api::{
    Backend4Value, BackendId, BackendSelection, Frontend, MapKey, MapValue, ServiceFlags,
};
use datapath::reconciler::ServiceSpec;
use serde::{Deserialize, Serialize};

use super::ids::IdPool;
use super::messages::{
    ApiBackend, BackendDump, BackendInfo, ServiceDump, ServiceError, ServiceId, ServiceInfo,
    ServiceUpserted,
};

/// The most backend slots one service has (the master entry counts them in a u16).
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize;

/// The id ranges the manager hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdRanges {
    /// Service (rev-NAT) ids; 0 means "no reverse NAT" and is never handed out.
    pub service: RangeInclusive<u16>,
    /// Backend ids, at most as many as the backend map holds.
    pub backend: RangeInclusive<u32>,
}

impl Default for ServiceIdRanges {
    fn default() -> Self {
        ServiceIdRanges {
            service: 1..=u16::MAX,
            backend: 1..=(datapath::api::LB_MAP_CAPACITY - 1),
        }
    }
}

/// What a change asks of the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Upsert(ServiceSpec),
    Delete(Frontend),
}

/// A restored service that could not be adopted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProblem {
    pub frontend: Frontend,
    pub reason: String,
}

/// How an upsert gets its service id.
#[derive(Debug, Clone, Copy)]
enum IdChoice {
    /// The frontend already has a service.
    Existing(ServiceId),
    /// The caller asked for a free id.
    Specific(ServiceId),
    /// The next free id.
    Next,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Service {
    frontend: Frontend,
    backends: Vec<(BackendId, Backend4Value)>,
    selection: BackendSelection,
    flags: ServiceFlags,
}

/// The global backend table entry: a backend value shared by its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackendUse {
    id: BackendId,
    users: u32,
}

/// All services of the node.
///
/// Invariants: one id per frontend and one frontend per id; a backend id names exactly one
/// backend value (address, protocol, state, cluster) and that value has exactly one id while
/// any service uses it, which is what the datapath's shared backend map needs; an id is in its
/// pool's used set exactly while something holds it.
#[derive(Debug, Clone)]
pub struct ServiceState {
    service_ids: IdPool,
    backend_ids: IdPool,
    services: BTreeMap<ServiceId, Service>,
    by_frontend: BTreeMap<Frontend, ServiceId>,
    backends: BTreeMap<Backend4Value, BackendUse>,
}

impl ServiceState {
    pub fn new(ranges: ServiceIdRanges) -> Self {
        let (first, last) = ranges.service.into_inner();
        ServiceState {
            // 0 is "no reverse NAT": never an id.
            service_ids: IdPool::new(u32::from(first.max(1))..=u32::from(last)),
            backend_ids: IdPool::new(ranges.backend),
            services: BTreeMap::new(),
            by_frontend: BTreeMap::new(),
            backends: BTreeMap::new(),
        }
    }

    /// Adopts services found in the datapath after a restart, keeping their ids. Services that
    /// contradict each other or the id ranges are left out and reported. Returns the effects
    /// that make the datapath claim the adopted services (so it does not prune them).
    pub fn restore(&mut self, specs: Vec<ServiceSpec>) -> (Vec<Effect>, Vec<RestoreProblem>) {
        let mut effects = Vec::new();
        let mut problems = Vec::new();
        let mut last_service_id = None;
        let mut last_backend_id = None;
        for spec in specs {
            let frontend = spec.frontend;
            match self.adopt(&spec) {
                Ok(()) => {
                    last_service_id = last_service_id.max(Some(spec.rev_nat.get()));
                    last_backend_id = spec
                        .backends
                        .iter()
                        .map(|(id, _)| id.get())
                        .max()
                        .max(last_backend_id);
                    effects.push(Effect::Upsert(spec));
                }
                Err(reason) => {
                    tracing::warn!(%frontend, %reason, "not adopting restored service");
                    problems.push(RestoreProblem { frontend, reason });
                }
            }
        }
        if let Some(id) = last_service_id {
            self.service_ids.resume_after(u32::from(id));
        }
        if let Some(id) = last_backend_id {
            self.backend_ids.resume_after(id);
        }
        (effects, problems)
    }

    fn adopt(&mut self, spec: &ServiceSpec) -> Result<(), String> {
        let id = ServiceId::new(spec.rev_nat.get());
        if !self.service_ids.contains(u32::from(id.get())) {
            return Err(format!(
                "rev-nat index {id} is outside the service id range"
            ));
        }
        if let Some(other) = self.services.get(&id) {
            return Err(format!("rev-nat index {id} also names {}", other.frontend));
        }
        if self.by_frontend.contains_key(&spec.frontend) {
            return Err("the frontend appears twice".to_owned());
        }
        let mut seen_ids: BTreeMap<BackendId, Backend4Value> = BTreeMap::new();
        for (backend_id, value) in &spec.backends {
            if !self.backend_ids.contains(backend_id.get()) {
                return Err(format!(
                    "backend id {backend_id} is outside the backend id range"
                ));
            }
            if seen_ids
                .insert(*backend_id, *value)
                .is_some_and(|v| v != *value)
            {
                return Err(format!("backend id {backend_id} names two backends"));
            }
            match self.backends.get(value) {
                Some(used) if used.id != *backend_id => {
                    return Err(format!(
                        "backend {value} has ids {} and {backend_id}",
                        used.id
                    ));
                }
                Some(_) => {}
                None if self.backend_ids.is_used(backend_id.get()) => {
                    return Err(format!(
                        "backend id {backend_id} already names another backend"
                    ));
                }
                None => {}
            }
        }
        self.service_ids.take(u32::from(id.get()));
        let mut unique = BTreeSet::new();
        for (backend_id, value) in &spec.backends {
            if !unique.insert(*value) {
                continue;
            }
            let entry = self.backends.entry(*value).or_insert(BackendUse {
                id: *backend_id,
                users: 0,
            });
            entry.users += 1;
            self.backend_ids.take(backend_id.get());
        }
        self.by_frontend.insert(spec.frontend, id);
        self.services.insert(
            id,
            Service {
                frontend: spec.frontend,
                backends: spec.backends.clone(),
                selection: spec.selection,
                flags: spec.flags,
            },
        );
        Ok(())
    }

    /// Creates or updates a service. Nothing changes when it fails.
    pub fn upsert(
        &mut self,
        id: Option<ServiceId>,
        frontend: Frontend,
        backends: &[ApiBackend],
        selection: BackendSelection,
        flags: ServiceFlags,
    ) -> Result<(ServiceUpserted, Vec<Effect>), ServiceError> {
        if backends.len() > MAX_BACKENDS_PER_SERVICE {
            return Err(ServiceError::TooManyBackends {
                frontend,
                count: backends.len(),
            });
        }
        let values: Vec<Backend4Value> = backends
            .iter()
            .map(|b| Backend4Value {
                state: b.state,
                ..Backend4Value::new(b.addr, frontend.protocol)
            })
            .collect();
        let mut seen = BTreeSet::new();
        if let Some(dup) = backends.iter().find(|b| !seen.insert(b.addr)) {
            return Err(ServiceError::DuplicateBackend {
                frontend,
                addr: dup.addr,
            });
        }

        let existing = self.by_frontend.get(&frontend).copied();
        let choice = match (id, existing) {
            (Some(asked), Some(current)) if asked != current => {
                return Err(ServiceError::FrontendHasId {
                    frontend,
                    id: current,
                });
            }
            (_, Some(current)) => IdChoice::Existing(current),
            (Some(asked), None) => {
                if !self.service_ids.contains(u32::from(asked.get())) {
                    return Err(ServiceError::InvalidId {
                        id: asked.get(),
                        first: self.service_ids.first(),
                        last: self.service_ids.last(),
                    });
                }
                if let Some(other) = self.services.get(&asked) {
                    return Err(ServiceError::IdInUse {
                        id: asked,
                        frontend: other.frontend,
                    });
                }
                IdChoice::Specific(asked)
            }
            (None, None) if self.service_ids.free() == 0 => {
                return Err(self.service_ids_exhausted());
            }
            (None, None) => IdChoice::Next,
        };

        let needed = values
            .iter()
            .filter(|v| !self.backends.contains_key(v))
            .count() as u64;
        if needed > self.backend_ids.free() {
            return Err(ServiceError::BackendIdsExhausted {
                needed,
                free: self.backend_ids.free(),
                first: self.backend_ids.first(),
                last: self.backend_ids.last(),
            });
        }

        // From here on nothing fails: the id and enough backend ids are known to be free.
        let (id, created) = match choice {
            IdChoice::Existing(id) => (id, false),
            IdChoice::Specific(id) => {
                self.service_ids.take(u32::from(id.get()));
                (id, true)
            }
            IdChoice::Next => {
                let next = self
                    .service_ids
                    .allocate()
                    .and_then(|id| u16::try_from(id).ok())
                    .ok_or_else(|| self.service_ids_exhausted())?;
                (ServiceId::new(next), true)
            }
        };
        // Take the new backends before releasing the old ones, so a backend in both keeps
        // its id.
        let mut slots = Vec::with_capacity(values.len());
        for value in values {
            // Cannot fail: at most `needed` new ids are taken, and that many are free.
            let backend_id = self.acquire_backend(value)?;
            slots.push((backend_id, value));
        }
        let service = Service {
            frontend,
            backends: slots,
            selection,
            flags,
        };
        let old = self.services.insert(id, service.clone());
        self.by_frontend.insert(frontend, id);
        if let Some(old) = &old {
            for (_, value) in &old.backends {
                self.release_backend(value);
            }
        }
        let effects = if old.as_ref() == Some(&service) {
            Vec::new()
        } else {
            vec![Effect::Upsert(spec_of(id, &service))]
        };
        Ok((ServiceUpserted { id, created }, effects))
    }

    /// Deletes a service; its id and the ids of backends no other service uses become free.
    pub fn delete(&mut self, id: ServiceId) -> Result<Vec<Effect>, ServiceError> {
        let service = self
            .services
            .remove(&id)
            .ok_or(ServiceError::NotFound { id })?;
        self.by_frontend.remove(&service.frontend);
        self.service_ids.release(u32::from(id.get()));
        for (_, value) in &service.backends {
            self.release_backend(value);
        }
        Ok(vec![Effect::Delete(service.frontend)])
    }

    pub fn list(&self) -> Vec<ServiceInfo> {
        self.services
            .iter()
            .map(|(id, service)| ServiceInfo {
                id: *id,
                frontend: service.frontend,
                backends: service
                    .backends
                    .iter()
                    .map(|(backend_id, value)| BackendInfo {
                        id: *backend_id,
                        addr: value.addr,
                        state: value.state,
                    })
                    .collect(),
                selection: service.selection,
                flags: service.flags,
            })
            .collect()
    }

    pub fn dump(&self) -> ServiceDump {
        let mut backends: Vec<BackendDump> = self
            .backends
            .iter()
            .map(|(value, used)| BackendDump {
                id: used.id,
                backend: *value,
                users: used.users,
            })
            .collect();
        backends.sort_by_key(|b| b.id);
        ServiceDump {
            services: self.list(),
            backends,
            free_service_ids: self.service_ids.free(),
            free_backend_ids: self.backend_ids.free(),
        }
    }

    fn service_ids_exhausted(&self) -> ServiceError {
        ServiceError::ServiceIdsExhausted {
            first: self.service_ids.first(),
            last: self.service_ids.last(),
        }
    }

    fn acquire_backend(&mut self, value: Backend4Value) -> Result<BackendId, ServiceError> {
        if let Some(used) = self.backends.get_mut(&value) {
            used.users += 1;
            return Ok(used.id);
        }
        let id = self.backend_ids.allocate().map(BackendId::new).ok_or(
            ServiceError::BackendIdsExhausted {
                needed: 1,
                free: 0,
                first: self.backend_ids.first(),
                last: self.backend_ids.last(),
            },
        )?;
        self.backends.insert(value, BackendUse { id, users: 1 });
        Ok(id)
    }

    fn release_backend(&mut self, value: &Backend4Value) {
        let Some(used) = self.backends.get_mut(value) else {
            return;
        };
        used.users -= 1;
        if used.users == 0 {
            let id = used.id;
            self.backends.remove(value);
            self.backend_ids.release(id.get());
        }
    }
}

fn spec_of(id: ServiceId, service: &Service) -> ServiceSpec {
    ServiceSpec {
        frontend: service.frontend,
        rev_nat: id.rev_nat(),
        backends: service.backends.clone(),
        selection: service.selection,
        flags: service.flags,
    }
}

/// Rebuilds service specs from what the datapath's lb4 maps hold (the answers of
/// `ListMap` for `cilium_lb4_services_v2` and `cilium_lb4_backends_v3`): one spec per master
/// entry, with its backend slots in order. A service whose slots or backends are incomplete is
/// reported instead.
pub fn specs_from_lb_maps(
    services: &[(MapKey, MapValue)],
    backends: &[(MapKey, MapValue)],
) -> (Vec<ServiceSpec>, Vec<RestoreProblem>) {
    let backend_values: BTreeMap<BackendId, Backend4Value> = backends
        .iter()
        .filter_map(|(key, value)| match (key, value) {
            (MapKey::Backend(id), MapValue::Backend(value)) => Some((*id, *value)),
            _ => None,
        })
        .collect();
    let mut by_frontend: BTreeMap<Frontend, BTreeMap<u16, datapath::api::Service4Value>> =
        BTreeMap::new();
    for (key, value) in services {
        if let (MapKey::Service(key), MapValue::Service(value)) = (key, value) {
            by_frontend
                .entry(key.frontend)
                .or_default()
                .insert(key.backend_slot, *value);
        }
    }
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for (frontend, slots) in by_frontend {
        let problem = |reason: String| RestoreProblem { frontend, reason };
        let Some(master) = slots.get(&0) else {
            problems.push(problem("no master entry (slot 0)".to_owned()));
            continue;
        };
        let mut list = Vec::with_capacity(usize::from(master.count));
        let mut missing = None;
        for slot in 1..=master.count {
            let Some(entry) = slots.get(&slot) else {
                missing = Some(format!("slot {slot} of {} is missing", master.count));
                break;
            };
            let Some(value) = backend_values.get(&entry.backend_id) else {
                missing = Some(format!(
                    "backend {} of slot {slot} is missing",
                    entry.backend_id
                ));
                break;
            };
            list.push((entry.backend_id, *value));
        }
        if let Some(reason) = missing {
            problems.push(problem(reason));
            continue;
        }
        specs.push(ServiceSpec {
            frontend,
            rev_nat: master.rev_nat,
            backends: list,
            selection: master.selection,
            flags: master.flags,
        });
    }
    (specs, problems)
}

#[cfg(test)]
mod tests {
    use datapath::api::{Protocol, Service4Key, Service4Value};

    use super::*;

    fn fe(s: &str) -> Frontend {
        Frontend::new(s.parse().unwrap(), Protocol::TCP)
    }

    fn be(s: &str) -> ApiBackend {
        ApiBackend::new(s.parse().unwrap())
    }

    fn upsert(
        state: &mut ServiceState,
        id: Option<u16>,
        frontend: &str,
        backends: &[&str],
    ) -> Result<(ServiceUpserted, Vec<Effect>), ServiceError> {
        let backends: Vec<_> = backends.iter().map(|b| be(b)).collect();
        state.upsert(
            id.map(ServiceId::new),
            fe(frontend),
            &backends,
            BackendSelection::Random,
            ServiceFlags::NONE,
        )
    }

    fn backend_ids(effects: &[Effect]) -> Vec<u32> {
        match effects {
            [Effect::Upsert(spec)] => spec.backends.iter().map(|(id, _)| id.get()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backend_ids_are_shared_and_kept_across_updates() {
        let mut state = ServiceState::new(ServiceIdRanges::default());
        let (a, effects) = upsert(
            &mut state,
            None,
            "10.96.0.1:80",
            &["10.0.0.1:8080", "10.0.0.2:8080"],
        )
        .unwrap();
        assert_eq!(
            a,
            ServiceUpserted {
                id: ServiceId::new(1),
                created: true
            }
        );
        assert_eq!(backend_ids(&effects), [1, 2]);
        let (b, effects) = upsert(
            &mut state,
            None,
            "10.96.0.2:80",
            &["10.0.0.2:8080", "10.0.0.3:8080"],
        )
        .unwrap();
        assert_eq!(b.id, ServiceId::new(2));
        assert_eq!(backend_ids(&effects), [2, 3]);

        // Fewer backends: exactly the dropped one goes; the shared one stays for service b.
        let (again, effects) =
            upsert(&mut state, None, "10.96.0.1:80", &["10.0.0.2:8080"]).unwrap();
        assert_eq!(
            again,
            ServiceUpserted {
                id: ServiceId::new(1),
                created: false
            }
        );
        assert_eq!(backend_ids(&effects), [2]);
        let table: Vec<_> = state
            .dump()
            .backends
            .iter()
            .map(|b| (b.id.get(), b.users))
            .collect();
        assert_eq!(table, [(2, 2), (3, 1)]);

        // The same update again changes nothing.
        let (_, effects) = upsert(&mut state, None, "10.96.0.1:80", &["10.0.0.2:8080"]).unwrap();
        assert!(effects.is_empty());

        // No backends: the service stays with zero slots.
        let (_, effects) = upsert(&mut state, None, "10.96.0.1:80", &[]).unwrap();
        assert_eq!(backend_ids(&effects), Vec::<u32>::new());
        assert_eq!(state.list().len(), 2);

        assert_eq!(
            state.delete(b.id).unwrap(),
            [Effect::Delete(fe("10.96.0.2:80"))]
        );
        assert!(state.dump().backends.is_empty());
        assert!(matches!(
            state.delete(b.id),
            Err(ServiceError::NotFound { .. })
        ));
    }

    #[test]
    fn explicit_ids_are_checked() {
        let mut state = ServiceState::new(ServiceIdRanges::default());
        upsert(&mut state, Some(7), "10.96.0.1:80", &[]).unwrap();
        assert!(matches!(
            upsert(&mut state, Some(7), "10.96.0.2:80", &[]),
            Err(ServiceError::IdInUse { .. })
        ));
        assert!(matches!(
            upsert(&mut state, Some(8), "10.96.0.1:80", &[]),
            Err(ServiceError::FrontendHasId { .. })
        ));
        assert!(matches!(
            upsert(&mut state, Some(0), "10.96.0.3:80", &[]),
            Err(ServiceError::InvalidId { id: 0, .. })
        ));
        assert!(matches!(
            upsert(
                &mut state,
                None,
                "10.96.0.3:80",
                &["10.0.0.1:1", "10.0.0.1:1"]
            ),
            Err(ServiceError::DuplicateBackend { .. })
        ));
        // The next free id continues after the last one handed out by the pool.
        let (next, _) = upsert(&mut state, None, "10.96.0.3:80", &[]).unwrap();
        assert_eq!(next.id, ServiceId::new(1));
    }

    #[test]
    fn exhaustion_changes_nothing_and_freed_ids_come_back() {
        let mut state = ServiceState::new(ServiceIdRanges {
            service: 1..=2,
            backend: 1..=3,
        });
        upsert(
            &mut state,
            None,
            "10.96.0.1:80",
            &["10.0.0.1:80", "10.0.0.2:80"],
        )
        .unwrap();
        let before = state.dump();
        assert!(matches!(
            upsert(
                &mut state,
                None,
                "10.96.0.2:80",
                &["10.0.0.3:80", "10.0.0.4:80"]
            ),
            Err(ServiceError::BackendIdsExhausted {
                needed: 2,
                free: 1,
                ..
            })
        ));
        assert_eq!(state.dump(), before);
        upsert(
            &mut state,
            None,
            "10.96.0.2:80",
            &["10.0.0.1:80", "10.0.0.3:80"],
        )
        .unwrap();
        assert!(matches!(
            upsert(&mut state, None, "10.96.0.3:80", &[]),
            Err(ServiceError::ServiceIdsExhausted { first: 1, last: 2 })
        ));
        state.delete(ServiceId::new(1)).unwrap();
        let (third, effects) = upsert(&mut state, None, "10.96.0.3:80", &["10.0.0.9:80"]).unwrap();
        assert_eq!(third.id, ServiceId::new(1));
        // Backend 2 (10.0.0.2) was freed with service 1 and is the only free id.
        assert_eq!(backend_ids(&effects), [2]);
    }

    #[test]
    fn lb_maps_round_trip_into_specs_and_restore_keeps_ids() {
        let mut state = ServiceState::new(ServiceIdRanges::default());
        upsert(
            &mut state,
            Some(5),
            "10.96.0.1:80",
            &["10.0.0.1:80", "10.0.0.2:80"],
        )
        .unwrap();
        upsert(&mut state, Some(9), "10.96.0.2:53", &[]).unwrap();
        // Build the lb maps the datapath would hold.
        let mut services = Vec::new();
        let mut backends = Vec::new();
        for info in state.list() {
            let rev_nat = info.id.rev_nat();
            let count = info.backends.len() as u16;
            services.push((
                MapKey::Service(Service4Key {
                    frontend: info.frontend,
                    backend_slot: 0,
                }),
                MapValue::Service(Service4Value::master(
                    count,
                    rev_nat,
                    info.selection,
                    info.flags,
                )),
            ));
            for (slot, b) in info.backends.iter().enumerate() {
                services.push((
                    MapKey::Service(Service4Key {
                        frontend: info.frontend,
                        backend_slot: slot as u16 + 1,
                    }),
                    MapValue::Service(Service4Value::slot(b.id, rev_nat, info.flags)),
                ));
                backends.push((
                    MapKey::Backend(b.id),
                    MapValue::Backend(Backend4Value::new(b.addr, Protocol::TCP)),
                ));
            }
        }
        // A service with a dangling slot is reported, not adopted.
        services.push((
            MapKey::Service(Service4Key {
                frontend: fe("10.96.0.3:80"),
                backend_slot: 0,
            }),
            MapValue::Service(Service4Value::master(
                1,
                datapath::api::RevNatId::new(11),
                BackendSelection::Default,
                ServiceFlags::NONE,
            )),
        ));
        let (specs, problems) = specs_from_lb_maps(&services, &backends);
        assert_eq!(specs.len(), 2);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].frontend, fe("10.96.0.3:80"));

        let mut restored = ServiceState::new(ServiceIdRanges::default());
        let (effects, problems) = restored.restore(specs);
        assert!(problems.is_empty());
        assert_eq!(effects.len(), 2);
        assert_eq!(restored.list(), state.list());
        // New ids follow the restored ones; restored backends keep theirs.
        let (next, effects) = upsert(
            &mut restored,
            None,
            "10.96.0.4:80",
            &["10.0.0.2:80", "10.0.0.7:80"],
        )
        .unwrap();
        assert_eq!(next.id, ServiceId::new(10));
        let old_id = state.list()[0].backends[1].id.get();
        assert_eq!(backend_ids(&effects), [old_id, old_id + 1]);
    }

    #[test]
    fn contradicting_restored_services_are_left_out() {
        let spec = |frontend: &str, rev_nat: u16, backends: Vec<(u32, &str)>| ServiceSpec {
            frontend: fe(frontend),
            rev_nat: datapath::api::RevNatId::new(rev_nat),
            backends: backends
                .into_iter()
                .map(|(id, addr)| {
                    (
                        BackendId::new(id),
                        Backend4Value::new(addr.parse().unwrap(), Protocol::TCP),
                    )
                })
                .collect(),
            selection: BackendSelection::Default,
            flags: ServiceFlags::NONE,
        };
        let mut state = ServiceState::new(ServiceIdRanges::default());
        let (effects, problems) = state.restore(vec![
            spec("10.96.0.1:80", 1, vec![(1, "10.0.0.1:80")]),
            spec("10.96.0.2:80", 1, vec![]),
            spec("10.96.0.3:80", 3, vec![(2, "10.0.0.1:80")]),
            spec("10.96.0.4:80", 4, vec![(1, "10.0.0.9:80")]),
            spec("10.96.0.5:80", 0, vec![]),
        ]);
        assert_eq!(effects.len(), 1);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
