//! The ServiceManager's messages, errors and the shapes it answers with.

use std::fmt;
use std::net::SocketAddrV4;

use actix::Message;
use datapath::api::{
    Backend4Value, BackendId, BackendSelection, BackendState, Frontend, MapName, RevNatId,
    ServiceFlags,
};
use datapath::reconciler::ReconcileError;
use serde::{Deserialize, Serialize};

/// A service's id, as the API and `cilium-dbg service list` show it. As upstream's, it is
/// the service's rev-NAT index, so it is never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceId(u16);

impl ServiceId {
    pub const fn new(id: u16) -> Self {
        ServiceId(id)
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// The rev-NAT index the datapath uses for this service.
    pub const fn rev_nat(self) -> RevNatId {
        RevNatId::new(self.0)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A backend as the API gives it; its protocol is the frontend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiBackend {
    pub addr: SocketAddrV4,
    #[serde(default)]
    pub state: BackendState,
}

impl ApiBackend {
    /// An active backend.
    pub const fn new(addr: SocketAddrV4) -> Self {
        ApiBackend {
            addr,
            state: BackendState::Active,
        }
    }
}

/// Creates or updates a service (`PUT /service/{id}`, `cilium-dbg service update`). With an
/// `id`, the service gets exactly that id (or keeps it); without, an existing service of the
/// frontend keeps its id and a new one gets the next free id. The backends replace the
/// previous ones; a service without backends is kept (the datapath drops its traffic with
/// reason 158, no service backend).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<ServiceUpserted, ServiceError>")]
pub struct UpsertServiceApi {
    pub id: Option<ServiceId>,
    pub frontend: Frontend,
    pub backends: Vec<ApiBackend>,
    pub selection: BackendSelection,
    pub flags: ServiceFlags,
}

/// Deletes a service by id (`DELETE /service/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct DeleteServiceApi {
    pub id: ServiceId,
}

/// Lists every service (`GET /service`, `cilium-dbg service list`), in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<ServiceInfo>")]
pub struct ListServices;

/// Asks for the services and the backend table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "ServiceDump")]
pub struct Dump;

/// The answer to [`UpsertServiceApi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpserted {
    pub id: ServiceId,
    /// Whether the service is new (REST: 201 Created) rather than updated (200).
    pub created: bool,
}

/// One backend of a service, with its global id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub id: BackendId,
    pub addr: SocketAddrV4,
    pub state: BackendState,
}

/// One service as `cilium-dbg service list` prints it: `ID  Frontend  Backend` with one
/// `n => addr (state)` line per backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: ServiceId,
    pub frontend: Frontend,
    /// In slot order.
    pub backends: Vec<BackendInfo>,
    pub selection: BackendSelection,
    pub flags: ServiceFlags,
}

/// One entry of the global backend table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendDump {
    pub id: BackendId,
    pub backend: Backend4Value,
    /// How many services use it.
    pub users: u32,
}

/// The ServiceManager's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDump {
    pub services: Vec<ServiceInfo>,
    pub backends: Vec<BackendDump>,
    /// The service ids and backend ids still free.
    pub free_service_ids: u64,
    pub free_backend_ids: u64,
}

/// Everything that can go wrong managing services.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service id {id} is outside the configured range {first}..={last}")]
    InvalidId { id: u16, first: u32, last: u32 },
    #[error("service id {id} already belongs to frontend {frontend}")]
    IdInUse { id: ServiceId, frontend: Frontend },
    #[error("frontend {frontend} already has service id {id}")]
    FrontendHasId { frontend: Frontend, id: ServiceId },
    #[error("service {id} not found")]
    NotFound { id: ServiceId },
    #[error("no service id left in {first}..={last}")]
    ServiceIdsExhausted { first: u32, last: u32 },
    #[error("{needed} new backend ids needed but only {free} of {first}..={last} are free")]
    BackendIdsExhausted {
        needed: u64,
        free: u64,
        first: u32,
        last: u32,
    },
    #[error("service {frontend} has {count} backends, more than the 65535 slots of a service")]
    TooManyBackends { frontend: Frontend, count: usize },
    #[error("backend {addr} is listed twice for service {frontend}")]
    DuplicateBackend {
        frontend: Frontend,
        addr: SocketAddrV4,
    },
    /// The datapath refused the service. The manager keeps its state; this means the
    /// datapath's and the manager's view of ids diverged.
    #[error("datapath refused service {frontend}")]
    Datapath {
        frontend: Frontend,
        #[source]
        source: ReconcileError,
    },
    #[error("the datapath actor is not running")]
    DatapathGone,
    #[error("reading the datapath map {map} failed")]
    ReadLbMaps {
        map: MapName,
        #[source]
        source: ReconcileError,
    },
}
