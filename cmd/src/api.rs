//! The REST API's request and response bodies (base `/v1`), shared by the server, cilium-dbg
//! and cilium-cni.
//!
//! Field names follow upstream Cilium's OpenAPI models (`api/v1/openapi.yaml`: kebab-case
//! keys such as `container-id`, `frontend-address`, `backend-addresses`) where the concept
//! exists upstream, so that scripts written against upstream's JSON keep working. Types are
//! plain data with no behaviour beyond conversions.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// The API's base path.
pub const API_BASE: &str = "/v1";

/// Every error answer: `{"code": <http status>, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub code: u16,
    pub message: String,
}

/// The state of one subsystem in the health answer (upstream `Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    /// `Ok`, `Warning`, `Failure` or `Disabled`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub msg: String,
}

impl SubsystemStatus {
    pub fn ok(msg: impl Into<String>) -> Self {
        SubsystemStatus {
            state: "Ok".to_owned(),
            msg: msg.into(),
        }
    }

    pub fn disabled(msg: impl Into<String>) -> Self {
        SubsystemStatus {
            state: "Disabled".to_owned(),
            msg: msg.into(),
        }
    }

    pub fn warning(msg: impl Into<String>) -> Self {
        SubsystemStatus {
            state: "Warning".to_owned(),
            msg: msg.into(),
        }
    }
}

/// `GET /healthz` (upstream `StatusResponse`, trimmed to what this agent has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub cilium: SubsystemStatus,
    pub kvstore: SubsystemStatus,
    pub datapath: SubsystemStatus,
    pub hubble: SubsystemStatus,
    /// (ext) Kvstore mode: the other nodes of the cluster and the routes to their pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<SubsystemStatus>,
    /// With `--clustermesh-config`: every remote cluster (upstream `ClusterMeshStatus`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "cluster-mesh"
    )]
    pub cluster_mesh: Option<ClusterMeshStatus>,
    #[serde(rename = "node-name")]
    pub node_name: String,
    pub cluster: ClusterInfo,
    pub policy: PolicyStatus,
    pub ipam: Option<IpamStatus>,
    #[serde(rename = "identity-count")]
    pub identity_count: usize,
    #[serde(rename = "service-count")]
    pub service_count: usize,
}

/// The remote clusters of the mesh (upstream `ClusterMeshStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeshStatus {
    pub clusters: Vec<clustermesh::RemoteClusterStatus>,
}

/// The cluster this node belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub id: u8,
}

/// The policy repository's revisions and mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub revision: u64,
    #[serde(rename = "realized-revision")]
    pub realized_revision: u64,
    pub enforcement: String,
    #[serde(rename = "rule-count")]
    pub rule_count: usize,
}

/// The IPAM pool in the health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamStatus {
    #[serde(rename = "alloc-range")]
    pub alloc_range: String,
    pub router: Ipv4Addr,
    pub capacity: u32,
    pub allocated: usize,
}

/// One identity (`GET /identity`, `GET /identity/{id}`; upstream `Identity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Vec<String>,
}

/// `GET /policy` and the answer of `PUT`/`DELETE /policy` (upstream `Policy`: the revision and
/// the rules as JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub revision: u64,
    /// The rules, as a JSON array.
    pub policy: String,
}

/// The answer of `DELETE /policy` (ours: upstream answers a `Policy`; the count is useful).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDeleteResponse {
    pub revision: u64,
    pub deleted: usize,
}

/// The body of `DELETE /policy`: the labels a rule must carry to be deleted (upstream sends
/// `source:key=value` strings). An empty list deletes every rule only with `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDeleteRequest {
    #[serde(default)]
    pub labels: Vec<String>,
    /// The policy's name (with `namespace`, for a namespaced one): `cilium-dbg policy delete
    /// NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub all: bool,
}

/// One cached selector (`GET /policy/selectors`; upstream `SelectorCache` entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorIdentityMapping {
    pub selector: String,
    pub identities: Vec<u32>,
    pub users: usize,
}

/// A layer-4 address (upstream `FrontendAddress` / `BackendAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Address {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `TCP` or `UDP` (upstream spells them upper-case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAddress {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `active`, `terminating`, `quarantined` or `maintenance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "backend-id"
    )]
    pub backend_id: Option<u32>,
}

impl BackendAddress {
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.port)
    }
}

/// The body of `PUT /service/{id}` and the `spec` of a listed service (upstream
/// `ServiceSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service id; in a `PUT` it must match the path (0 = the next free id).
    #[serde(default)]
    pub id: u16,
    #[serde(rename = "frontend-address")]
    pub frontend_address: L4Address,
    #[serde(default, rename = "backend-addresses")]
    pub backend_addresses: Vec<BackendAddress>,
}

/// One service (`GET /service`; upstream `Service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
}

/// The answer of `PUT /service/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdated {
    pub id: u16,
    pub created: bool,
}

/// An address handed out by `POST /ipam` (upstream `IPAMResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamResponse {
    pub address: AddressPair,
    pub ipv4: IpamAddressResponse,
}

/// Upstream `AddressPair` (IPv4 only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ipv4: Ipv4Addr,
}

/// Upstream `IPAMAddressResponse`: the address with what a pod needs to route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamAddressResponse {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub cidrs: Vec<String>,
}

/// A map the datapath exposes (`GET /map`; upstream `BPFMap` without its cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfMapSummary {
    pub path: String,
    #[serde(rename = "max-entries")]
    pub max_entries: u32,
}

/// `GET /map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfMapList {
    pub maps: Vec<BpfMapSummary>,
}

/// One entry of a map (upstream `BPFMapEntry`): the key and value as `cilium-dbg bpf` prints
/// them, plus the typed forms for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BpfMapEntry {
    pub key: String,
    pub value: String,
    #[serde(rename = "key-data")]
    pub key_data: serde_json::Value,
    #[serde(rename = "value-data")]
    pub value_data: serde_json::Value,
}

/// `GET /map/{name}` (upstream `BPFMap`): what the kernel holds in the map now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BpfMap {
    pub path: String,
    pub cache: Vec<BpfMapEntry>,
}

/// One address family of a node (upstream `NodeAddressingElement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddressingElement {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "alloc-range"
    )]
    pub alloc_range: Option<String>,
}

/// A node's addresses (upstream `NodeAddressing`; IPv4 only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddressing {
    pub ipv4: NodeAddressingElement,
}

/// A node of the cluster (upstream `NodeElement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeElement {
    pub name: String,
    /// The node's underlay address and pod CIDR (known in kvstore mode).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "primary-address"
    )]
    pub primary_address: Option<NodeAddressing>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4-alloc-cidr"
    )]
    pub ipv4_alloc_cidr: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4-router"
    )]
    pub ipv4_router: Option<Ipv4Addr>,
}

/// `GET /cluster/nodes` (upstream `ClusterNodeStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodeStatus {
    #[serde(rename = "self")]
    pub self_name: String,
    #[serde(rename = "nodesAdded")]
    pub nodes_added: Vec<NodeElement>,
}

/// A pod label as the CNI network config carries it (`args.cni.labels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelPair {
    pub key: String,
    pub value: String,
}

/// The body of `PUT /endpoint/{id}`, sent by cilium-cni (upstream `EndpointChangeRequest`
/// plus the pod namespace path, because this agent creates the veth pair itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointChangeRequest {
    #[serde(rename = "container-id")]
    pub container_id: String,
    /// The pod-side interface name (`CNI_IFNAME`).
    #[serde(rename = "interface-name")]
    pub interface_name: String,
    /// The pod's network namespace (`CNI_NETNS`).
    #[serde(rename = "netns-path")]
    pub netns_path: String,
    #[serde(default, rename = "k8s-pod-name")]
    pub k8s_pod_name: String,
    #[serde(default, rename = "k8s-namespace")]
    pub k8s_namespace: String,
    /// Pod labels, without source prefix; the agent turns them into `k8s:` labels.
    #[serde(default)]
    pub labels: Vec<LabelPair>,
}

/// An endpoint's addresses (upstream `AddressPair`, plus the gateway the pod routes through,
/// which upstream's CNI plugin asks IPAM for separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointAddressing {
    pub ipv4: Ipv4Addr,
    #[serde(rename = "ipv4-gateway")]
    pub ipv4_gateway: Ipv4Addr,
}

/// Upstream `EndpointIdentifiers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIdentifiers {
    #[serde(default, rename = "container-id")]
    pub container_id: String,
    #[serde(default, rename = "k8s-pod-name")]
    pub k8s_pod_name: String,
    #[serde(default, rename = "k8s-namespace")]
    pub k8s_namespace: String,
}

/// Upstream `EndpointNetworking`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointNetworking {
    pub addressing: Vec<EndpointAddressing>,
    /// The host-side interface (`lxc...`).
    #[serde(rename = "interface-name")]
    pub interface_name: String,
    /// The pod-side interface's MAC address.
    #[serde(default)]
    pub mac: String,
    #[serde(default, rename = "host-mac")]
    pub host_mac: String,
}

/// Upstream `EndpointStatus`, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `waiting-for-identity`, `regenerating`, `ready`, `disconnecting`, ...
    pub state: String,
    pub identity: Identity,
    pub networking: EndpointNetworking,
    #[serde(rename = "external-identifiers")]
    pub external_identifiers: EndpointIdentifiers,
    /// The policy revision the endpoint's maps realize.
    #[serde(default, rename = "policy-revision")]
    pub policy_revision: u64,
}

/// One endpoint (`GET /endpoint`, `GET /endpoint/{id}`, the answer of `PUT`; upstream
/// `Endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u16,
    pub status: EndpointStatus,
}

/// The id prefix that names an endpoint by its container (`/endpoint/container-id:<id>`), as
/// upstream's CNI plugin deletes endpoints.
pub const CONTAINER_ID_PREFIX: &str = "container-id:";
