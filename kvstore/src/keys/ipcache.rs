//! ipcache entries: which identity an IP or CIDR belongs to, and which node hosts it
//! (upstream `pkg/identity.IPIdentityPair`, stored under `cilium/state/ip/v1/default/<ip>`).

use std::net::IpAddr;

use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use super::gojson::{self, Field, IpMask, Shape, leaf};
use super::store::StoreValue;

/// One ipcache entry, field for field as upstream writes it:
/// `{"IP","Mask","HostIP","ID","Key","Metadata","K8sNamespace","K8sPodName",
/// "K8sServiceAccount","NamedPorts"}` (the last four omitted when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCacheEntry {
    /// The endpoint IP, or the network address of a CIDR entry.
    #[serde(rename = "IP", with = "gojson::req_ip")]
    pub ip: IpAddr,
    /// Set for CIDR entries; `None` (JSON `null`) for a single host IP.
    #[serde(rename = "Mask", default)]
    pub mask: Option<IpMask>,
    /// The node hosting the IP (the tunnel endpoint); `None` is Go's nil IP (`""`).
    #[serde(rename = "HostIP", default, with = "gojson::opt_ip")]
    pub host_ip: Option<IpAddr>,
    #[serde(rename = "ID", default)]
    pub id: NumericIdentity,
    /// The IPsec key index of the hosting node, 0 without encryption.
    #[serde(rename = "Key", default)]
    pub encrypt_key: u8,
    /// Free-form metadata; upstream agents write the owning resource here.
    #[serde(rename = "Metadata", default)]
    pub metadata: String,
    #[serde(
        rename = "K8sNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_namespace: String,
    #[serde(
        rename = "K8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_name: String,
    #[serde(
        rename = "K8sServiceAccount",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_service_account: String,
    #[serde(rename = "NamedPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

/// A named container port of the endpoint behind an ipcache entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`, as upstream writes it.
    #[serde(rename = "Protocol", default)]
    pub protocol: String,
}

const NAMED_PORT: Shape = Shape::Struct(&[leaf("Name"), leaf("Port"), leaf("Protocol")]);

const IP_CACHE_ENTRY: Shape = Shape::Struct(&[
    leaf("IP"),
    leaf("Mask"),
    leaf("HostIP"),
    leaf("ID"),
    leaf("Key"),
    leaf("Metadata"),
    leaf("K8sNamespace"),
    leaf("K8sPodName"),
    leaf("K8sServiceAccount"),
    Field {
        name: "NamedPorts",
        shape: Shape::List(&NAMED_PORT),
    },
]);

impl IpCacheEntry {
    /// An entry for a single host IP (no mask), with every optional field empty.
    pub fn host(ip: IpAddr, id: NumericIdentity, host_ip: Option<IpAddr>) -> Self {
        IpCacheEntry {
            ip,
            mask: None,
            host_ip,
            id,
            encrypt_key: 0,
            metadata: String::new(),
            k8s_namespace: String::new(),
            k8s_pod_name: String::new(),
            k8s_service_account: String::new(),
            named_ports: Vec::new(),
        }
    }

    /// Upstream's `PrefixString`: the IP for a host entry, `ip/len` for a CIDR entry. A mask
    /// that is not canonical is written with Go's `Size() == 0` semantics, i.e. `/0`.
    pub fn prefix_string(&self) -> String {
        match &self.mask {
            None => self.ip.to_string(),
            Some(mask) => format!("{}/{}", self.ip, mask.prefix_len().unwrap_or(0)),
        }
    }
}

impl StoreValue for IpCacheEntry {
    fn key_name(&self) -> String {
        self.prefix_string()
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        gojson::to_vec(self)
    }

    fn decode(data: &[u8]) -> Result<Self, String> {
        gojson::decode(data, &IP_CACHE_ENTRY)
    }
}
