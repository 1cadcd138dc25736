//! The endpoint manager's messages, their answers, its errors and the snapshot it answers
//! [`Dump`] with.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use actix::Message;
use datapath::api::{EndpointId, MacAddr};
use model::identity::NumericIdentity;
use model::labels::Labels;
use serde::{Deserialize, Serialize};

use super::state::EndpointRecord;
use super::store::EndpointStoreError;
use crate::policy::NamedPort;

/// Creates the endpoint of a pod (CNI ADD, `PUT /endpoint/{id}`): address, veth pair,
/// identity, ipcache and `cilium_lxc` entries, program attachment, policy. Answers once the
/// endpoint's policy is realized in the datapath; on failure nothing of it is left.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<EndpointCreated, EndpointError>")]
pub struct CreateEndpoint {
    pub container_id: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The interface name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// The pod's labels, already `k8s:`-prefixed (DESIGN 4.2); the security-relevant ones
    /// make the identity.
    pub labels: Labels,
    /// A specific address instead of the next free one.
    pub requested_ip: Option<Ipv4Addr>,
    pub named_ports: Vec<NamedPort>,
}

/// The answer to [`CreateEndpoint`]: what the CNI plugin reports to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCreated {
    pub id: EndpointId,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub host_ifname: String,
    /// The pod-side MAC.
    pub mac: MacAddr,
    pub identity: NumericIdentity,
}

/// Names an endpoint by its container (CNI DEL) or its id (the REST API).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointRef {
    ContainerId(String),
    Id(EndpointId),
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointRef::ContainerId(id) => write!(f, "container {id}"),
            EndpointRef::Id(id) => write!(f, "endpoint {id}"),
        }
    }
}

impl EndpointRef {
    /// Parses the REST API's `{id}` path segment: a number is an endpoint id, anything
    /// else (upstream's `container-id:...` prefix stripped) a container id.
    pub fn parse(input: &str) -> EndpointRef {
        if let Some(container) = input.strip_prefix("container-id:") {
            return EndpointRef::ContainerId(container.to_owned());
        }
        match input.parse::<u16>() {
            Ok(id) => EndpointRef::Id(EndpointId::new(id)),
            Err(_) => EndpointRef::ContainerId(input.to_owned()),
        }
    }
}

/// Removes an endpoint and everything it holds. Idempotent: an unknown endpoint answers
/// `Ok(None)`; otherwise the answer is the removed endpoint's id.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Option<EndpointId>, EndpointError>")]
pub struct DeleteEndpoint {
    pub endpoint: EndpointRef,
}

/// One endpoint as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Option<EndpointRecord>")]
pub struct GetEndpoint {
    pub endpoint: EndpointRef,
}

/// Asks how many times the endpoints changed: a cheap test of whether a [`ListEndpoints`]
/// would differ from the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "u64")]
pub struct Generation;

/// Every endpoint (ready, restoring or being removed), in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<EndpointRecord>")]
pub struct ListEndpoints;

/// Reads the endpoints persisted in the state dir by the previous agent and claims their
/// resources again. Sent once at start, before the first [`CreateEndpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<RestoreReport, EndpointError>")]
pub struct RestoreEndpoints;

/// The answer to [`RestoreEndpoints`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Endpoints that are ready again, in id order.
    pub restored: Vec<EndpointId>,
    /// Endpoints that could not be restored and were removed, with the reason.
    pub removed: Vec<(EndpointId, String)>,
}

/// Asks for the manager's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "EndpointDump")]
pub struct Dump;

/// The manager's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDump {
    pub endpoints: Vec<EndpointRecord>,
    /// Creations in flight: endpoint id and container id.
    pub creating: Vec<(EndpointId, String)>,
}

/// Everything that can go wrong managing endpoints.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint request: {reason}")]
    InvalidRequest { reason: String },
    #[error("container {container_id} already has endpoint {id}")]
    AlreadyExists {
        container_id: String,
        id: EndpointId,
    },
    #[error("{endpoint} is being created or removed; try again when that is done")]
    Busy { endpoint: EndpointRef },
    #[error("all endpoint ids 1..={max} are in use", max = super::state::MAX_ENDPOINT_ID)]
    IdsExhausted,
    /// One step of creating the endpoint failed; what was done before it has been undone.
    #[error("endpoint {id}: {step} failed: {reason}")]
    Step {
        id: EndpointId,
        step: Step,
        reason: String,
    },
    /// Removing (part of) an endpoint failed; the endpoint stays listed as disconnecting
    /// and another delete retries the parts that are left.
    #[error("endpoint {id}: removing {remaining} failed: {reasons}")]
    Teardown {
        id: EndpointId,
        remaining: String,
        reasons: String,
    },
    #[error("endpoint state could not be persisted")]
    Store(#[from] EndpointStoreError),
}

/// A step of an endpoint's creation (and, backwards, of its removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    AllocateIp,
    CreateLinks,
    AllocateIdentity,
    UpsertIpcache,
    UpsertLxc,
    Attach,
    Policy,
    PolicyWait,
    Persist,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::AllocateIp => "ip allocation",
            Step::CreateLinks => "veth setup",
            Step::AllocateIdentity => "identity allocation",
            Step::UpsertIpcache => "ipcache upsert",
            Step::UpsertLxc => "endpoint map upsert",
            Step::Attach => "program attachment",
            Step::Policy => "policy computation",
            Step::PolicyWait => "waiting for policy realization",
            Step::Persist => "persisting endpoint state",
        })
    }
}
