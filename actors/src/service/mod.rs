//! The ServiceManager: load-balanced services from the API (later also the kvstore,
//! Kubernetes and ClusterMesh) turned into the datapath's lb4 state.
//!
//! **Owns** every service (frontend, backends in slot order, selection, flags) and the ids the
//! datapath needs, allocated here as upstream's service manager does: a service id per
//! frontend, which is also its rev-NAT index (1..=65535), and a global backend id per backend,
//! shared by every service that uses the same backend and reused across updates. Backends are
//! identified by their full map value (address, protocol, state, cluster), because the backend
//! map holds one value per id for all of its users.
//!
//! **Takes** ([`messages`]): [`UpsertServiceApi`], [`DeleteServiceApi`], [`ListServices`],
//! [`Dump`]. **Sends** [`datapath::reconciler::UpsertService`] and
//! [`datapath::reconciler::DeleteService`] to the Datapath actor and answers the API once the
//! datapath accepted the change.
//!
//! Restart adoption: [`ServiceSnapshot::read`] rebuilds the services, ids included, from the
//! datapath's pinned lb4 maps (through `ListMap`); the manager adopts them at construction and
//! hands them back to the datapath when it starts, so the datapath claims them before its
//! initial sync would prune them. Ids never change across a restart.
//!
//! Invariants:
//! - One id per frontend, one frontend per id; ids are handed out next-fit, so a freed id is
//!   reused only after the rest of its range.
//! - A failed upsert or delete (bad id, duplicate backend, exhausted ids) changes nothing.
//! - An update with fewer backends removes exactly the dropped ones; a backend another
//!   service still uses keeps its id. A service without backends is kept.
//!
//! Layout: [`ids`] the id pools, [`state`] the services (pure), [`actor`] the actix glue.

pub mod actor;
pub mod ids;
pub mod messages;
pub mod state;

pub use actor::{ServiceManager, ServiceOutputs, ServiceSnapshot};
pub use messages::{
    ApiBackend, BackendDump, BackendInfo, DeleteServiceApi, Dump, ListServices, ServiceDump,
    ServiceError, ServiceId, ServiceInfo, ServiceUpserted, UpsertServiceApi,
};
pub use state::{
    Effect, MAX_BACKENDS_PER_SERVICE, RestoreProblem, ServiceIdRanges, ServiceState,
    specs_from_lb_maps,
};
