//! `cilium service`: upstream ClusterService records under
//! `cilium/state/services/v1/<cluster>/<namespace>/<name>`, which agents of that cluster turn
//! into load-balanced services (one per frontend IP and port).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use actors::clusterstate::{frontends_of, services_prefix};
use kvstore::Backend;
use kvstore::keys::{ClusterService, L4Addr, StoreValue, service_key};
use serde::Serialize;

use super::{ApplyResult, ClusterCliError, write_keys};

/// What `--protocol` accepts.
pub const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];

/// Reads every ClusterService of `text` (YAML or JSON, `---`-separated documents). A
/// document without `cluster` gets `cluster`; one naming another cluster is an error.
pub fn parse_services(text: &str, cluster: &str) -> Result<Vec<ClusterService>, ClusterCliError> {
    let mut services = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let invalid = |message: String| ClusterCliError::InvalidService {
            document: number,
            message,
        };
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)
            .map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut json = serde_json::to_value(&value).map_err(|e| invalid(e.to_string()))?;
        if let Some(object) = json.as_object_mut() {
            let unset = object
                .get("cluster")
                .and_then(serde_json::Value::as_str)
                .is_none_or(str::is_empty);
            if unset {
                object.insert("cluster".into(), cluster.into());
            }
        }
        let bytes = serde_json::to_vec(&json).map_err(|e| invalid(e.to_string()))?;
        let service = ClusterService::decode(&bytes).map_err(invalid)?;
        if service.cluster != cluster {
            return Err(ClusterCliError::WrongCluster {
                document: number,
                found: service.cluster,
                expected: cluster.to_owned(),
            });
        }
        check_service(&service).map_err(invalid)?;
        services.push(service);
    }
    if services.is_empty() {
        return Err(ClusterCliError::NoServices);
    }
    Ok(services)
}

/// Refuses a service agents would not (fully) serve: no frontend, or parts they ignore.
fn check_service(service: &ClusterService) -> Result<(), String> {
    let (frontends, ignored) = frontends_of(service);
    if let Some(problem) = ignored.first() {
        return Err(format!(
            "service {}/{}: {problem}",
            service.namespace, service.name
        ));
    }
    if frontends.is_empty() {
        return Err(format!(
            "service {}/{} has no frontend",
            service.namespace, service.name
        ));
    }
    Ok(())
}

/// The service `--name/--namespace/--frontend/--backends/--protocol` describe: one port
/// named `port_name` on the frontend and on every backend.
pub fn service_from_flags(
    cluster: &str,
    namespace: &str,
    name: &str,
    frontend: SocketAddrV4,
    backends: &[SocketAddrV4],
    protocol: &str,
    port_name: &str,
) -> Result<ClusterService, ClusterCliError> {
    let protocol = protocol.to_ascii_uppercase();
    let ports = |port: u16| {
        BTreeMap::from([(
            port_name.to_owned(),
            Some(L4Addr {
                protocol: protocol.clone(),
                port,
            }),
        )])
    };
    let mut backend_map: BTreeMap<String, _> = BTreeMap::new();
    for backend in backends {
        let ip = backend.ip().to_string();
        if backend_map
            .insert(ip.clone(), ports(backend.port()))
            .is_some()
        {
            return Err(ClusterCliError::InvalidService {
                document: 1,
                message: format!(
                    "backend IP {ip} is given twice: a cluster service has one port of each name per backend IP"
                ),
            });
        }
    }
    let service = ClusterService {
        cluster: cluster.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        frontends: BTreeMap::from([(frontend.ip().to_string(), ports(frontend.port()))]),
        backends: backend_map,
        ..ClusterService::default()
    };
    check_service(&service).map_err(|message| ClusterCliError::InvalidService {
        document: 1,
        message,
    })?;
    Ok(service)
}

/// One service as `apply` and `list` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEntry {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ApplyResult>,
    /// `list`: why agents skip the stored value, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ClusterService>,
}

/// Writes each service to its key.
pub async fn apply_services(
    backend: &dyn Backend,
    services: &[ClusterService],
) -> Result<Vec<ServiceEntry>, ClusterCliError> {
    let mut values = Vec::with_capacity(services.len());
    for service in services {
        let key = service_key(&service.cluster, &service.namespace, &service.name);
        let value = service
            .encode()
            .map_err(|e| ClusterCliError::InvalidService {
                document: values.len() + 1,
                message: e.to_string(),
            })?;
        values.push((key, value));
    }
    let keys: Vec<String> = values.iter().map(|(key, _)| key.clone()).collect();
    let results = write_keys(backend, values).await?;
    Ok(keys
        .into_iter()
        .zip(services)
        .zip(results)
        .map(|((key, service), result)| ServiceEntry {
            key,
            result: Some(result),
            error: None,
            service: Some(service.clone()),
        })
        .collect())
}

/// Deletes one service; returns whether it existed.
pub async fn delete_service(
    backend: &dyn Backend,
    cluster: &str,
    namespace: &str,
    name: &str,
) -> Result<bool, ClusterCliError> {
    Ok(backend
        .delete(&service_key(cluster, namespace, name))
        .await?)
}

/// Every service of `cluster` in key order.
pub async fn list_services(
    backend: &dyn Backend,
    cluster: &str,
) -> Result<Vec<ServiceEntry>, ClusterCliError> {
    let listing = backend
        .list_prefix(&format!("{}/", services_prefix(cluster)))
        .await?;
    Ok(listing
        .kvs
        .into_iter()
        .map(|kv| match ClusterService::decode(&kv.value) {
            Ok(service) => ServiceEntry {
                key: kv.key,
                result: None,
                error: None,
                service: Some(service),
            },
            Err(error) => ServiceEntry {
                key: kv.key,
                result: None,
                error: Some(error),
                service: None,
            },
        })
        .collect())
}
