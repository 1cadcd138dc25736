//! Cluster services: the load-balancing view of one Kubernetes-style service, shared across a
//! ClusterMesh (upstream `pkg/clustermesh/store.ClusterService`, stored under
//! `cilium/state/services/v1/<cluster>/<namespace>/<name>`). Without Kubernetes these records
//! are also the source of the local cluster's services (DESIGN 4.5).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::gojson::{self, Field, Shape, leaf};
use super::store::StoreValue;

/// Port name to L4 port, for one frontend or backend IP (upstream `PortConfiguration`, a
/// `map[string]*L4Addr`: a value may be `null`).
pub type PortConfiguration = BTreeMap<String, Option<L4Addr>>;

/// An L4 port and protocol (`TCP`, `UDP`, `SCTP`, `ANY`/`NONE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct L4Addr {
    #[serde(rename = "Protocol")]
    pub protocol: String,
    #[serde(rename = "Port")]
    pub port: u16,
}

/// Topology information of one backend (upstream `BackendZone`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendZone {
    pub zone: String,
    #[serde(rename = "forZones", serialize_with = "gojson::nil_vec::serialize")]
    pub for_zones: Vec<ForZone>,
}

/// A zone that should consume a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForZone {
    pub name: String,
}

/// A service as upstream writes it. The maps are always written (`{}` when empty, as
/// upstream's `NewClusterService` initialises them); `hostnames` and `zones` are omitted when
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterService {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// Frontend IP (as text) to its ports.
    pub frontends: BTreeMap<String, PortConfiguration>,
    /// Backend IP (as text) to its ports.
    pub backends: BTreeMap<String, PortConfiguration>,
    /// Backend IP to the hostname of the pod behind it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hostnames: BTreeMap<String, String>,
    /// Backend IP to its topology zone.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, BackendZone>,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    /// Whether backends from other clusters are merged into this service.
    #[serde(rename = "includeExternal")]
    pub include_external: bool,
    /// Whether this service is exported to the other clusters of the mesh.
    pub shared: bool,
    #[serde(rename = "clusterID")]
    pub cluster_id: u32,
}

const L4_ADDR: Shape = Shape::Nullable(&Shape::Struct(&[leaf("Protocol"), leaf("Port")]));
const PORTS: Shape = Shape::Map(&L4_ADDR);
const FOR_ZONE: Shape = Shape::Struct(&[leaf("name")]);
const BACKEND_ZONE: Shape = Shape::Struct(&[
    leaf("zone"),
    Field {
        name: "forZones",
        shape: Shape::List(&FOR_ZONE),
    },
]);

const CLUSTER_SERVICE: Shape = Shape::Struct(&[
    leaf("cluster"),
    leaf("namespace"),
    leaf("name"),
    Field {
        name: "frontends",
        shape: Shape::Map(&PORTS),
    },
    Field {
        name: "backends",
        shape: Shape::Map(&PORTS),
    },
    Field {
        name: "hostnames",
        shape: Shape::Map(&Shape::Leaf),
    },
    Field {
        name: "zones",
        shape: Shape::Map(&BACKEND_ZONE),
    },
    Field {
        name: "labels",
        shape: Shape::Map(&Shape::Leaf),
    },
    Field {
        name: "selector",
        shape: Shape::Map(&Shape::Leaf),
    },
    leaf("includeExternal"),
    leaf("shared"),
    leaf("clusterID"),
]);

impl ClusterService {
    /// Upstream's `GetKeyName`: `<cluster>/<namespace>/<name>`.
    pub fn key_name_of(cluster: &str, namespace: &str, name: &str) -> String {
        format!("{cluster}/{namespace}/{name}")
    }
}

impl StoreValue for ClusterService {
    fn key_name(&self) -> String {
        ClusterService::key_name_of(&self.cluster, &self.namespace, &self.name)
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        gojson::to_vec(self)
    }

    /// Decodes like upstream's `Unmarshal`, including its validation: cluster, namespace and
    /// name must be set and every frontend and backend key must be an IP address.
    fn decode(data: &[u8]) -> Result<Self, String> {
        let svc: ClusterService = gojson::decode(data, &CLUSTER_SERVICE)?;
        for (what, value) in [
            ("cluster", &svc.cluster),
            ("namespace", &svc.namespace),
            ("name", &svc.name),
        ] {
            if value.is_empty() {
                return Err(format!("{what} is unset"));
            }
        }
        for address in svc.frontends.keys().chain(svc.backends.keys()) {
            if address.parse::<IpAddr>().is_err() {
                return Err(format!("invalid address {address:?}"));
            }
        }
        Ok(svc)
    }
}
