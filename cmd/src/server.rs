//! The agent's REST API (DESIGN 4.3): an axum router under `/v1`, served over the unix socket.
//!
//! Handlers only translate: HTTP in, one actor message, JSON out. Every failure is an
//! [`ApiError`] answered as `{"code": <status>, "message": "..."}`: 400 for input the caller
//! must fix, 404 for something that does not exist, 503 while the agent is not ready or an
//! actor is gone, 500 for the rest.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actors::endpoint::{
    CreateEndpoint, DeleteEndpoint, EndpointError, EndpointManager, EndpointRecord, EndpointRef,
    GetEndpoint, ListEndpoints,
};
use actors::identity::{ListIdentities, LookupIdentity};
use actors::ipam::{AllocateIp, IpamError, ReleaseIp};
use actors::policy::{PolicyDelete, PolicyError, PolicyImport, PolicySource, policy_name_labels};
use actors::service::{
    ApiBackend, DeleteServiceApi, ListServices, ServiceError, ServiceId, ServiceInfo,
    UpsertServiceApi,
};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use datapath::api::{
    BackendSelection, BackendState, Frontend, MapName, MapValue, Protocol, ServiceFlags,
    error_chain,
};
use datapath::reconciler::{ListMap, ReadMetrics};
use model::identity::NumericIdentity;
use model::labels::{Label, Labels};
use serde::Deserialize;
use tokio::net::UnixListener;

use crate::api::{
    self, AddressPair, BpfMap, BpfMapEntry, BpfMapList, BpfMapSummary, ClusterInfo,
    ClusterMeshStatus, ClusterNodeStatus, IpamAddressResponse, IpamResponse, IpamStatus,
    NodeAddressing, NodeAddressingElement, NodeElement, PolicyDeleteRequest, PolicyDeleteResponse,
    PolicyStatus, SelectorIdentityMapping, StatusResponse, SubsystemStatus,
};
use crate::daemon::{AgentHandles, KvstoreMode};

/// The pseudo map name `cilium-dbg bpf metrics list` asks for: the datapath's counters.
pub const METRICS_MAP: &str = "cilium_metrics";

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ApiErrorBody {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Sends one message to an actor; a stopped actor is a 503.
async fn ask<A, M>(addr: &Addr<A>, msg: M, actor: &str) -> ApiResult<M::Result>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    addr.send(msg)
        .await
        .map_err(|_| ApiError::unavailable(format!("the {actor} is not running")))
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    error_chain(err)
}

/// The router with every route of DESIGN 4.3 under `/v1`.
pub fn router(handles: AgentHandles) -> Router {
    let v1 = Router::new()
        .route("/healthz", get(healthz))
        .route("/endpoint", get(endpoint_list))
        .route(
            "/endpoint/{id}",
            get(endpoint_get).put(endpoint_put).delete(endpoint_delete),
        )
        .route("/identity", get(identity_list))
        .route("/identity/{id}", get(identity_get))
        .route(
            "/policy",
            get(policy_get).put(policy_put).delete(policy_delete),
        )
        .route("/policy/selectors", get(policy_selectors))
        .route("/service", get(service_list))
        .route(
            "/service/{id}",
            get(service_get).put(service_put).delete(service_delete),
        )
        .route("/cluster/nodes", get(cluster_nodes))
        .route("/map", get(map_list))
        .route("/map/{name}", get(map_get))
        .route("/ipam", axum::routing::post(ipam_allocate))
        .route("/ipam/{ip}", delete(ipam_release))
        .with_state(handles);
    Router::new()
        .nest(api::API_BASE, v1)
        .fallback(|| async { ApiError::not_found("no such API route") })
}

/// Errors binding the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the socket directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the permissions of {path} to 0660")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API socket: creates its directory, removes a stale socket file left by an
/// earlier agent, and restricts it to owner and group (0660, as upstream).
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale API socket"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServeError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ServeError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    handles: AgentHandles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handles))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The node manager's state as one status line: peers, routes, and what is failing.
fn nodes_status(dump: actors::node::NodeManagerDump) -> SubsystemStatus {
    use actors::node::RouteStatus;
    let installed = dump
        .routes
        .iter()
        .filter(|r| r.status == RouteStatus::Installed)
        .count();
    let failing: Vec<String> = dump
        .routes
        .iter()
        .filter_map(|r| r.last_error.as_ref().map(|e| format!("{}: {e}", r.route)))
        .collect();
    let summary = format!(
        "{} peers, {installed}/{} routes installed",
        dump.peers.len(),
        dump.routes.len()
    );
    if let Some(error) = dump
        .publish
        .as_ref()
        .and_then(|p| p.status.last_error.as_ref())
    {
        return SubsystemStatus::warning(format!(
            "{summary}; this node's record is not published: {error}"
        ));
    }
    if !failing.is_empty() {
        return SubsystemStatus::warning(format!("{summary}; failing: {}", failing.join("; ")));
    }
    if !dump.synced {
        return SubsystemStatus::warning(format!("{summary}; nodes not listed yet"));
    }
    SubsystemStatus::ok(summary)
}

async fn healthz(State(h): State<AgentHandles>) -> ApiResult<Json<StatusResponse>> {
    if !h.is_ready() {
        return Err(ApiError::unavailable(
            "the agent is restoring its state; try again shortly",
        ));
    }
    let identities = ask(&h.identity, actors::identity::Dump, "identity allocator").await?;
    let policy = ask(&h.policy, actors::policy::Dump, "policy repository").await?;
    let services = ask(&h.services, ListServices, "service manager").await?;
    let datapath = ask(&h.datapath, datapath::reconciler::Dump, "datapath").await?;
    let ipam = match &h.ipam {
        Some(ipam) => {
            let dump = ask(ipam, actors::ipam::Dump, "IPAM").await?;
            Some(IpamStatus {
                alloc_range: dump.range.to_string(),
                router: dump.router,
                capacity: dump.capacity,
                allocated: dump.allocations.len(),
            })
        }
        None => None,
    };
    let failed = datapath
        .entries
        .iter()
        .filter(|e| matches!(e.status, datapath::reconciler::ObjectStatus::Failed { .. }))
        .count();
    let datapath_status = if failed == 0 {
        SubsystemStatus::ok(format!(
            "{} entries, {} policy maps",
            datapath.entries.len(),
            datapath.policy_maps.len()
        ))
    } else {
        SubsystemStatus::warning(format!("{failed} map entries failed and are retried"))
    };
    let nodes = match &h.nodes {
        Some(nodes) => Some(nodes_status(
            ask(nodes, actors::node::Dump, "node manager").await?,
        )),
        None => None,
    };
    let cluster_mesh = match &h.mesh {
        Some(mesh) => Some(ClusterMeshStatus {
            clusters: ask(mesh, clustermesh::ClusterMeshStatus, "clustermesh").await?,
        }),
        None => None,
    };
    let ipcache_sync_error = match &h.config.kvstore {
        KvstoreMode::Disabled => None,
        KvstoreMode::Etcd { .. } => ask(&h.ipcache, actors::ipcache::Dump, "ipcache")
            .await?
            .kvstore
            .and_then(|sync| sync.last_error),
    };
    let kvstore = match &h.config.kvstore {
        KvstoreMode::Disabled => SubsystemStatus::disabled("identities are allocated locally"),
        KvstoreMode::Etcd { endpoints } if let Some(error) = ipcache_sync_error => {
            SubsystemStatus::warning(format!(
                "etcd: {}: endpoint publication failing and retried: {error}",
                endpoints.join(", ")
            ))
        }
        KvstoreMode::Etcd { endpoints } if identities.synced => {
            SubsystemStatus::ok(format!("etcd: {}", endpoints.join(", ")))
        }
        KvstoreMode::Etcd { endpoints } => SubsystemStatus::warning(format!(
            "etcd: {}: identities not listed yet",
            endpoints.join(", ")
        )),
    };
    let hubble = match (h.config.hubble_enabled, h.hubble.get()) {
        (false, _) => SubsystemStatus::disabled(""),
        (true, Some(observer)) => {
            SubsystemStatus::ok(crate::hubble_server::status_message(observer))
        }
        (true, None) => SubsystemStatus::warning("hubble is starting"),
    };
    Ok(Json(StatusResponse {
        cilium: SubsystemStatus::ok(""),
        kvstore,
        datapath: datapath_status,
        hubble,
        nodes,
        cluster_mesh,
        node_name: h.config.node_name.clone(),
        cluster: ClusterInfo {
            name: h.config.cluster_name.as_str().to_owned(),
            id: h.config.cluster_id.get(),
        },
        policy: PolicyStatus {
            revision: policy.revision.get(),
            realized_revision: policy.realized_revision.get(),
            enforcement: policy.enforcement.to_string(),
            rule_count: policy.rules.len(),
        },
        ipam,
        identity_count: identities.identities.len(),
        service_count: services.len(),
    }))
}

fn identity_model(info: actors::identity::IdentityInfo) -> api::Identity {
    api::Identity {
        id: info.id.get(),
        labels: info.labels.iter().map(ToString::to_string).collect(),
    }
}

async fn identity_list(State(h): State<AgentHandles>) -> ApiResult<Json<Vec<api::Identity>>> {
    let list = ask(&h.identity, ListIdentities, "identity allocator").await?;
    Ok(Json(list.into_iter().map(identity_model).collect()))
}

async fn identity_get(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::Identity>> {
    let id: u32 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("identity {id:?} is not a number")))?;
    let id = NumericIdentity::new(id);
    ask(&h.identity, LookupIdentity { id }, "identity allocator")
        .await?
        .map(|info| Json(identity_model(info)))
        .ok_or_else(|| ApiError::not_found(format!("identity {id} not found")))
}

async fn policy_model(h: &AgentHandles) -> ApiResult<api::Policy> {
    let dump = ask(&h.policy, actors::policy::Dump, "policy repository").await?;
    let rules: Vec<_> = dump.rules.iter().map(|r| &r.rule).collect();
    let policy = serde_json::to_string_pretty(&rules)
        .map_err(|err| ApiError::internal(format!("cannot encode the rules: {err}")))?;
    Ok(api::Policy {
        revision: dump.revision.get(),
        policy,
    })
}

async fn policy_get(State(h): State<AgentHandles>) -> ApiResult<Json<api::Policy>> {
    policy_model(&h).await.map(Json)
}

/// `PUT /policy`: the body is policy document text (YAML or JSON, one or more documents).
/// All or nothing: a document that does not parse or validate changes nothing.
async fn policy_put(State(h): State<AgentHandles>, body: String) -> ApiResult<Json<api::Policy>> {
    if body.trim().is_empty() {
        return Err(ApiError::bad_request("the policy document is empty"));
    }
    let documents = model::policy::parse_documents(&body)
        .map_err(|err| ApiError::bad_request(format!("invalid policy: {}", chain(&err))))?;
    if documents.is_empty() {
        return Err(ApiError::bad_request("the input holds no policy document"));
    }
    let revision = ask(
        &h.policy,
        PolicyImport {
            source: PolicySource::Documents(documents),
        },
        "policy repository",
    )
    .await?
    .map_err(|err| ApiError::bad_request(format!("policy not imported: {}", chain(&err))))?;
    let mut model = policy_model(&h).await?;
    model.revision = revision.get();
    Ok(Json(model))
}

async fn policy_delete(
    State(h): State<AgentHandles>,
    body: String,
) -> ApiResult<Json<PolicyDeleteResponse>> {
    let request: PolicyDeleteRequest = if body.trim().is_empty() {
        PolicyDeleteRequest::default()
    } else {
        serde_json::from_str(&body)
            .map_err(|err| ApiError::bad_request(format!("invalid delete request: {err}")))?
    };
    let mut labels = Vec::new();
    for text in &request.labels {
        labels.push(
            Label::parse(text)
                .map_err(|err| ApiError::bad_request(format!("label {text:?}: {err}")))?,
        );
    }
    if let Some(name) = &request.name {
        labels.extend(policy_name_labels(name, request.namespace.as_deref()));
    }
    if labels.is_empty() && !request.all {
        return Err(ApiError::bad_request(
            "say which rules to delete: labels, a policy name, or all",
        ));
    }
    match ask(&h.policy, PolicyDelete { labels }, "policy repository").await? {
        Ok(deleted) => Ok(Json(PolicyDeleteResponse {
            revision: deleted.revision.get(),
            deleted: deleted.deleted,
        })),
        // Deleting everything from an empty repository is done, not an error.
        Err(PolicyError::NotFound { .. }) if request.all => {
            let dump = ask(&h.policy, actors::policy::Dump, "policy repository").await?;
            Ok(Json(PolicyDeleteResponse {
                revision: dump.revision.get(),
                deleted: 0,
            }))
        }
        Err(err @ PolicyError::NotFound { .. }) => Err(ApiError::not_found(chain(&err))),
        Err(err) => Err(ApiError::bad_request(chain(&err))),
    }
}

async fn policy_selectors(
    State(h): State<AgentHandles>,
) -> ApiResult<Json<Vec<SelectorIdentityMapping>>> {
    let dump = ask(&h.policy, actors::policy::Dump, "policy repository").await?;
    Ok(Json(
        dump.selectors
            .into_iter()
            .map(|s| SelectorIdentityMapping {
                selector: s.selector,
                identities: s.identities.iter().map(|i| i.get()).collect(),
                users: s.users,
            })
            .collect(),
    ))
}

fn protocol_name(protocol: Protocol) -> String {
    match protocol {
        Protocol::TCP => "TCP".to_owned(),
        Protocol::UDP => "UDP".to_owned(),
        other => other.to_string(),
    }
}

fn state_name(state: BackendState) -> Option<String> {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(name)) => Some(name),
        _ => None,
    }
}

fn service_model(info: ServiceInfo) -> api::Service {
    api::Service {
        spec: api::ServiceSpec {
            id: info.id.get(),
            frontend_address: api::L4Address {
                ip: *info.frontend.addr.ip(),
                port: info.frontend.addr.port(),
                protocol: Some(protocol_name(info.frontend.protocol)),
            },
            backend_addresses: info
                .backends
                .into_iter()
                .map(|b| api::BackendAddress {
                    ip: *b.addr.ip(),
                    port: b.addr.port(),
                    state: state_name(b.state),
                    backend_id: Some(b.id.get()),
                })
                .collect(),
        },
    }
}

async fn service_list(State(h): State<AgentHandles>) -> ApiResult<Json<Vec<api::Service>>> {
    let list = ask(&h.services, ListServices, "service manager").await?;
    Ok(Json(list.into_iter().map(service_model).collect()))
}

fn parse_service_id(id: &str) -> ApiResult<ServiceId> {
    match id.parse::<u16>() {
        Ok(0) | Err(_) => Err(ApiError::bad_request(format!(
            "service id {id:?} is not a number between 1 and 65535"
        ))),
        Ok(id) => Ok(ServiceId::new(id)),
    }
}

async fn service_get(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::Service>> {
    let id = parse_service_id(&id)?;
    let list = ask(&h.services, ListServices, "service manager").await?;
    list.into_iter()
        .find(|s| s.id == id)
        .map(|s| Json(service_model(s)))
        .ok_or_else(|| ApiError::not_found(format!("service {id} not found")))
}

fn parse_protocol(name: Option<&str>) -> ApiResult<Protocol> {
    match name.map(str::to_ascii_uppercase).as_deref() {
        None | Some("TCP") => Ok(Protocol::TCP),
        Some("UDP") => Ok(Protocol::UDP),
        Some(other) => Err(ApiError::bad_request(format!(
            "frontend-address.protocol {other:?} is not TCP or UDP"
        ))),
    }
}

fn parse_backend_state(state: Option<&str>, index: usize) -> ApiResult<BackendState> {
    match state {
        None => Ok(BackendState::Active),
        Some(name) => {
            serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
                ApiError::bad_request(format!(
                    "backend-addresses[{index}].state {name:?} is not active, terminating, \
                     quarantined or maintenance"
                ))
            })
        }
    }
}

fn service_error(err: ServiceError) -> ApiError {
    let message = chain(&err);
    match err {
        ServiceError::NotFound { .. } => ApiError::not_found(message),
        ServiceError::DatapathGone => ApiError::unavailable(message),
        ServiceError::Datapath { .. } | ServiceError::ReadLbMaps { .. } => {
            ApiError::internal(message)
        }
        _ => ApiError::bad_request(message),
    }
}

async fn service_put(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> ApiResult<Response> {
    let id = parse_service_id(&id)?;
    let spec: api::ServiceSpec = serde_json::from_str(&body)
        .map_err(|err| ApiError::bad_request(format!("invalid service spec: {err}")))?;
    if spec.id != 0 && spec.id != id.get() {
        return Err(ApiError::bad_request(format!(
            "id {} in the body differs from id {id} in the path",
            spec.id
        )));
    }
    let protocol = parse_protocol(spec.frontend_address.protocol.as_deref())?;
    let frontend = Frontend::new(
        std::net::SocketAddrV4::new(spec.frontend_address.ip, spec.frontend_address.port),
        protocol,
    );
    let mut backends = Vec::with_capacity(spec.backend_addresses.len());
    for (index, backend) in spec.backend_addresses.iter().enumerate() {
        backends.push(ApiBackend {
            addr: backend.socket_addr(),
            state: parse_backend_state(backend.state.as_deref(), index)?,
        });
    }
    let upserted = ask(
        &h.services,
        UpsertServiceApi {
            id: Some(id),
            frontend,
            backends,
            selection: BackendSelection::Default,
            flags: ServiceFlags::ROUTABLE,
        },
        "service manager",
    )
    .await?
    .map_err(service_error)?;
    let status = if upserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(api::ServiceUpdated {
            id: upserted.id.get(),
            created: upserted.created,
        }),
    )
        .into_response())
}

async fn service_delete(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let id = parse_service_id(&id)?;
    ask(&h.services, DeleteServiceApi { id }, "service manager")
        .await?
        .map_err(service_error)?;
    Ok(StatusCode::OK)
}

async fn cluster_nodes(State(h): State<AgentHandles>) -> ApiResult<Json<ClusterNodeStatus>> {
    let self_name = format!("{}/{}", h.config.cluster_name.as_str(), h.config.node_name);
    let router = match &h.ipam {
        Some(ipam) => Some(ask(ipam, actors::ipam::Dump, "IPAM").await?.router),
        None => None,
    };
    let Some(nodes) = &h.nodes else {
        return Ok(Json(ClusterNodeStatus {
            self_name: self_name.clone(),
            nodes_added: vec![NodeElement {
                name: self_name,
                primary_address: None,
                ipv4_alloc_cidr: h.config.ipv4_range.map(|range| range.to_string()),
                ipv4_router: router,
            }],
        }));
    };
    // The local node comes first, then every peer of the cluster.
    let records = ask(nodes, actors::node::ListNodes, "node manager").await?;
    let nodes_added = records
        .into_iter()
        .enumerate()
        .map(|(index, node)| {
            let cidr = node.ipv4_alloc_cidr.as_ref().map(|c| c.net().to_string());
            let ip = node
                .ip_addresses
                .iter()
                .find_map(|a| a.ip.filter(|ip| ip.is_ipv4()))
                .map(|ip| ip.to_string());
            NodeElement {
                name: format!("{}/{}", node.cluster, node.name),
                primary_address: Some(NodeAddressing {
                    ipv4: NodeAddressingElement {
                        enabled: true,
                        ip,
                        alloc_range: cidr.clone(),
                    },
                }),
                ipv4_alloc_cidr: cidr,
                ipv4_router: if index == 0 { router } else { None },
            }
        })
        .collect();
    Ok(Json(ClusterNodeStatus {
        self_name,
        nodes_added,
    }))
}

fn map_path(h: &AgentHandles, name: &str) -> String {
    h.config.map_dir.join(name).display().to_string()
}

async fn map_list(State(h): State<AgentHandles>) -> ApiResult<Json<BpfMapList>> {
    let dump = ask(&h.datapath, datapath::reconciler::Dump, "datapath").await?;
    let maps = MapName::GLOBAL
        .into_iter()
        .chain(dump.policy_maps.iter().map(|p| MapName::Policy(p.endpoint)))
        .map(|map| BpfMapSummary {
            path: map_path(&h, &map.to_string()),
            max_entries: map.capacity(),
        })
        .collect();
    Ok(Json(BpfMapList { maps }))
}

fn value_text(value: &MapValue) -> String {
    let inner = match value {
        MapValue::Policy(v) => serde_json::to_string(v),
        MapValue::Ipcache(v) => serde_json::to_string(v),
        MapValue::Lxc(v) => serde_json::to_string(v),
        MapValue::Service(v) => serde_json::to_string(v),
        MapValue::Backend(v) => return v.to_string(),
        MapValue::RevNat(v) => serde_json::to_string(v),
        MapValue::Conntrack(v) => serde_json::to_string(v),
    };
    inner.unwrap_or_default()
}

async fn map_get(
    State(h): State<AgentHandles>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<BpfMap>> {
    if name == METRICS_MAP {
        let metrics = ask(&h.datapath, ReadMetrics, "datapath")
            .await?
            .map_err(|err| ApiError::internal(chain(&err)))?;
        let cache = metrics
            .into_iter()
            .map(|m| BpfMapEntry {
                key: format!("reason {} direction {:?}", m.reason, m.direction),
                value: format!("packets {} bytes {}", m.packets, m.bytes),
                key_data: serde_json::json!({
                    "reason": m.reason,
                    "direction": m.direction,
                    "line": m.line,
                    "file": m.file,
                }),
                value_data: serde_json::json!({"packets": m.packets, "bytes": m.bytes}),
            })
            .collect();
        return Ok(Json(BpfMap {
            path: map_path(&h, METRICS_MAP),
            cache,
        }));
    }
    let map = MapName::from_str(&name).map_err(|err| ApiError::not_found(err.to_string()))?;
    let entries = ask(&h.datapath, ListMap { map }, "datapath")
        .await?
        .map_err(|err| match &err {
            datapath::reconciler::ReconcileError::Datapath(
                datapath::api::DatapathError::NoSuchMap { .. },
            ) => ApiError::not_found(chain(&err)),
            _ => ApiError::internal(chain(&err)),
        })?;
    let cache = entries
        .into_iter()
        .map(|(key, value)| BpfMapEntry {
            key: key.to_string(),
            value: value_text(&value),
            key_data: serde_json::to_value(key).unwrap_or_default(),
            value_data: serde_json::to_value(value).unwrap_or_default(),
        })
        .collect();
    Ok(Json(BpfMap {
        path: map_path(&h, &map.to_string()),
        cache,
    }))
}

/// Query of `POST /ipam` (upstream: `owner`, `expiration`, `family`).
#[derive(Debug, Deserialize)]
struct IpamQuery {
    #[serde(default)]
    owner: Option<String>,
    /// A specific address to allocate (upstream's `POST /ipam/{ip}`).
    #[serde(default)]
    ip: Option<Ipv4Addr>,
}

fn ipam_error(err: IpamError) -> ApiError {
    let message = chain(&err);
    match err {
        IpamError::NotAllocated { .. } => ApiError::not_found(message),
        IpamError::Exhausted { .. } => ApiError::unavailable(message),
        IpamError::Store(_) | IpamError::CorruptSnapshot { .. } => ApiError::internal(message),
        _ => ApiError::bad_request(message),
    }
}

fn ipam_addr(h: &AgentHandles) -> ApiResult<&Addr<actors::ipam::IpamActor>> {
    h.ipam.as_ref().ok_or_else(|| {
        ApiError::unavailable("IPAM is not configured: start the agent with --ipv4-range")
    })
}

async fn ipam_allocate(
    State(h): State<AgentHandles>,
    Query(query): Query<IpamQuery>,
) -> ApiResult<(StatusCode, Json<IpamResponse>)> {
    let ipam = ipam_addr(&h)?;
    let owner = query
        .owner
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "api".to_owned());
    let ip = ask(
        ipam,
        AllocateIp {
            owner,
            ip: query.ip,
        },
        "IPAM",
    )
    .await?
    .map_err(ipam_error)?;
    let dump = ask(ipam, actors::ipam::Dump, "IPAM").await?;
    Ok((
        StatusCode::CREATED,
        Json(IpamResponse {
            address: AddressPair { ipv4: ip },
            ipv4: IpamAddressResponse {
                ip,
                gateway: dump.router,
                cidrs: vec![dump.range.to_string()],
            },
        }),
    ))
}

async fn ipam_release(
    State(h): State<AgentHandles>,
    UrlPath(ip): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let ipam = ipam_addr(&h)?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{ip:?} is not an IPv4 address")))?;
    ask(ipam, ReleaseIp { ip }, "IPAM")
        .await?
        .map_err(ipam_error)?;
    Ok(StatusCode::OK)
}

fn endpoint_manager(h: &AgentHandles) -> ApiResult<&Addr<EndpointManager>> {
    h.endpoints.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "endpoints need addresses and IPAM is not configured: start the agent with \
             --ipv4-range",
        )
    })
}

fn endpoint_model(record: EndpointRecord) -> api::Endpoint {
    let state = match serde_json::to_value(record.state) {
        Ok(serde_json::Value::String(state)) => state,
        _ => format!("{:?}", record.state),
    };
    api::Endpoint {
        id: record.id.get(),
        status: api::EndpointStatus {
            state,
            identity: api::Identity {
                id: record.identity.get(),
                labels: record
                    .identity_labels
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
            networking: api::EndpointNetworking {
                addressing: vec![api::EndpointAddressing {
                    ipv4: record.ip,
                    ipv4_gateway: record.gateway,
                }],
                interface_name: record.host_ifname,
                mac: record.mac.to_string(),
                host_mac: record.host_mac.to_string(),
            },
            external_identifiers: api::EndpointIdentifiers {
                container_id: record.container_id,
                k8s_pod_name: record.pod_name,
                k8s_namespace: record.pod_namespace,
            },
            policy_revision: record.policy_revision.get(),
        },
    }
}

fn endpoint_error(err: EndpointError) -> ApiError {
    let message = chain(&err);
    match err {
        EndpointError::InvalidRequest { .. } => ApiError::bad_request(message),
        EndpointError::AlreadyExists { .. } => ApiError {
            status: StatusCode::CONFLICT,
            message,
        },
        EndpointError::Busy { .. } | EndpointError::IdsExhausted => ApiError::unavailable(message),
        _ => ApiError::internal(message),
    }
}

async fn endpoint_list(State(h): State<AgentHandles>) -> ApiResult<Json<Vec<api::Endpoint>>> {
    let manager = endpoint_manager(&h)?;
    let records = ask(manager, ListEndpoints, "endpoint manager").await?;
    Ok(Json(records.into_iter().map(endpoint_model).collect()))
}

async fn endpoint_get(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::Endpoint>> {
    let manager = endpoint_manager(&h)?;
    let endpoint = EndpointRef::parse(&id);
    ask(
        manager,
        GetEndpoint {
            endpoint: endpoint.clone(),
        },
        "endpoint manager",
    )
    .await?
    .map(|record| Json(endpoint_model(record)))
    .ok_or_else(|| ApiError::not_found(format!("{endpoint} not found")))
}

/// `PUT /endpoint/{id}`: creates a pod's endpoint from cilium-cni's request. The id in the
/// path is ignored (upstream's plugin sends 0): the manager picks the id. Answers once the
/// endpoint's policy is realized.
async fn endpoint_put(
    State(h): State<AgentHandles>,
    UrlPath(_id): UrlPath<String>,
    body: String,
) -> ApiResult<(StatusCode, Json<api::Endpoint>)> {
    let manager = endpoint_manager(&h)?;
    if !h.is_ready() {
        return Err(ApiError::unavailable(
            "the agent is restoring its endpoints; try again shortly",
        ));
    }
    let request: api::EndpointChangeRequest = serde_json::from_str(&body)
        .map_err(|err| ApiError::bad_request(format!("invalid endpoint change request: {err}")))?;
    // Outside Kubernetes (podman) there is no namespace: upstream puts such pods in
    // `default` as well.
    let namespace = if request.k8s_namespace.is_empty() {
        "default"
    } else {
        request.k8s_namespace.as_str()
    };
    let labels = Labels::from_k8s_pod(
        namespace,
        request
            .labels
            .iter()
            .map(|l| (l.key.clone(), l.value.clone())),
        &h.config.cluster_name,
    )
    .map_err(|err| ApiError::bad_request(format!("invalid pod labels: {}", chain(&err))))?;
    let created = ask(
        manager,
        CreateEndpoint {
            container_id: request.container_id,
            netns: PathBuf::from(request.netns_path),
            ifname: request.interface_name,
            pod_name: request.k8s_pod_name,
            pod_namespace: namespace.to_owned(),
            labels,
            requested_ip: None,
            named_ports: Vec::new(),
        },
        "endpoint manager",
    )
    .await?
    .map_err(endpoint_error)?;
    let record = ask(
        manager,
        GetEndpoint {
            endpoint: EndpointRef::Id(created.id),
        },
        "endpoint manager",
    )
    .await?
    .ok_or_else(|| {
        ApiError::internal(format!(
            "endpoint {} was created but is gone already",
            created.id
        ))
    })?;
    Ok((StatusCode::CREATED, Json(endpoint_model(record))))
}

/// `DELETE /endpoint/{id}`: a number or `container-id:<id>`; 404 when there is no such
/// endpoint (cilium-cni counts that as success).
async fn endpoint_delete(
    State(h): State<AgentHandles>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let manager = endpoint_manager(&h)?;
    let endpoint = EndpointRef::parse(&id);
    match ask(
        manager,
        DeleteEndpoint {
            endpoint: endpoint.clone(),
        },
        "endpoint manager",
    )
    .await?
    .map_err(endpoint_error)?
    {
        Some(_) => Ok(StatusCode::OK),
        None => Err(ApiError::not_found(format!("{endpoint} not found"))),
    }
}
