//! The cluster configuration a ClusterMesh peer reads before anything else
//! (upstream `pkg/clustermesh/types.CiliumClusterConfig`, stored under
//! `cilium/cluster-config/<cluster name>`): the cluster id and which protocol features the
//! cluster's kvstore offers.

use serde::{Deserialize, Serialize};

use super::cluster_config_key;
use super::gojson::{self, Field, Shape, leaf};
use super::store::{decode_value, encode_error};
use crate::backend::{Backend, LeaseId, Revision};
use crate::error::Error;

/// `{"id":N,"capabilities":{...}}`; `id` and every capability are omitted when zero, as
/// upstream's `omitempty` tags do, while `capabilities` itself is always written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    #[serde(skip_serializing_if = "is_zero")]
    pub id: u32,
    pub capabilities: Capabilities,
}

/// What the cluster's kvstore supports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// The cluster writes per-prefix sync canaries (`cilium/synced/<cluster>/<prefix>`).
    #[serde(rename = "syncedCanaries", skip_serializing_if = "is_false")]
    pub synced_canaries: bool,
    /// The data is a kvstoremesh cache under `cilium/cache/...`.
    #[serde(skip_serializing_if = "is_false")]
    pub cached: bool,
    /// The size of the mesh the cluster supports (255, or 511 with extended cluster ids).
    #[serde(rename = "maxConnectedClusters", skip_serializing_if = "is_zero")]
    pub max_connected_clusters: u32,
    /// Whether MCS-API ServiceExports are enabled; `None` when the cluster does not say.
    #[serde(
        rename = "serviceExportsEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_exports_enabled: Option<bool>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

const CAPABILITIES: Shape = Shape::Struct(&[
    leaf("syncedCanaries"),
    leaf("cached"),
    leaf("maxConnectedClusters"),
    leaf("serviceExportsEnabled"),
]);

const CLUSTER_CONFIG: Shape = Shape::Struct(&[
    leaf("id"),
    Field {
        name: "capabilities",
        shape: CAPABILITIES,
    },
]);

impl ClusterConfig {
    /// Encodes as upstream's `json.Marshal` does.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        gojson::to_vec(self)
    }

    /// Decodes with Go's field matching rules.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        gojson::decode(data, &CLUSTER_CONFIG)
    }
}

/// Writes the configuration of cluster `name`.
pub async fn write_cluster_config(
    backend: &dyn Backend,
    name: &str,
    config: &ClusterConfig,
    lease: Option<LeaseId>,
) -> Result<Revision, Error> {
    let value = config.encode().map_err(encode_error)?;
    backend.put(&cluster_config_key(name), value, lease).await
}

/// Reads the configuration of cluster `name`; `None` when the cluster has not written one
/// (releases before cluster configs existed).
pub async fn read_cluster_config(
    backend: &dyn Backend,
    name: &str,
) -> Result<Option<ClusterConfig>, Error> {
    match backend.get(&cluster_config_key(name)).await? {
        None => Ok(None),
        Some(kv) => decode_value(&kv, ClusterConfig::decode).map(Some),
    }
}
