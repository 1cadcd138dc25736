//! The endpoint manager: one endpoint per pod, from the CNI's request to a ready endpoint
//! whose policy the datapath enforces, and back.
//!
//! # What it owns
//! - endpoint ids (1..=4095, as upstream's pool) and which container owns which endpoint;
//! - each endpoint's record (addresses, interfaces, labels, identity, policy revision, the
//!   resources it holds), persisted as `<state-dir>/endpoints/<id>.json`.
//!
//! # Messages
//! Receives [`CreateEndpoint`], [`DeleteEndpoint`], [`GetEndpoint`], [`ListEndpoints`],
//! [`RestoreEndpoints`] and [`Dump`]. Sends, through the `Recipient`s of
//! [`EndpointOutputs`]: `AllocateIp`/`ReleaseIp` (IPAM), `AllocateIdentity`/
//! `ReleaseIdentity` (identity), `UpsertIp`/`DeleteIp` (ipcache), `UpsertLxc`/`DeleteLxc`/
//! `AttachEndpoint`/`DetachEndpoint` (Datapath actor, which also creates and removes the
//! policy map), `EndpointPolicyWanted`/`EndpointRemoved`/`EndpointPolicyWait` (policy
//! repository; the wait is per endpoint, so a creation never waits behind another
//! endpoint's update).
//! The veth pair goes through the [`datapath::api::EndpointLinks`] trait object.
//!
//! # Creation
//! address -> veth pair and pod-side configuration -> identity (of the security-relevant
//! labels) -> ipcache entry (source `local`) -> `cilium_lxc` entry -> attachment -> policy ->
//! wait until the policy revision is realized -> persisted -> ready. A failing step undoes
//! every earlier one in reverse order, so a failed creation leaves nothing behind.
//!
//! # Invariants
//! - An endpoint's lifecycle operations never overlap: a creation holds a reservation, a
//!   removal or restore marks the endpoint busy; overlapping requests get `Busy`. Different
//!   endpoints' operations run concurrently while the manager keeps answering.
//! - Removal is idempotent and retryable: each resource given back is struck from the
//!   record's `held` set, so a failed removal is retried for what is left only.
//! - Every ready endpoint has a record on disk; a restarted manager claims its resources
//!   again ([`RestoreEndpoints`]) or, if its veth pair is gone, removes it cleanly.
//! - A restore leaves the maps as they were: every restored endpoint first asks for the
//!   identity it had (taken when free, see `AllocateIdentity::preferred`), and only once all
//!   of them have their identities is any endpoint's policy computed again, so no policy map
//!   loses the entries of a peer that is restored later.
//!
//! Upstream runs one goroutine-backed `Endpoint` object per pod; here an endpoint's steps run
//! as futures owned by the manager (`flow`), serialised per endpoint by the registry, which
//! gives the same isolation without an actor per pod.
//!
//! # Layout
//! - [`state`]: the registry (ids, reservations, records), pure;
//! - [`store`]: the JSON records in the state dir;
//! - `flow`: create with rollback, teardown and restore, as async steps over the outputs;
//! - [`messages`]: messages, answers, errors, the dump;
//! - [`actor`]: the actix glue.

pub mod actor;
mod flow;
pub mod messages;
pub mod state;
pub mod store;

pub use actor::EndpointManager;
pub use flow::{EndpointConfig, EndpointOutputs};
pub use messages::{
    CreateEndpoint, DeleteEndpoint, Dump, EndpointCreated, EndpointDump, EndpointError,
    EndpointRef, Generation, GetEndpoint, ListEndpoints, RestoreEndpoints, RestoreReport, Step,
};
pub use state::{EndpointRecord, EndpointState, MAX_ENDPOINT_ID, Resources, host_ifname};
pub use store::{EndpointStore, EndpointStoreError};
