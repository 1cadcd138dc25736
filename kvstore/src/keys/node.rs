//! Node records: every agent announces itself under `cilium/state/nodes/v1/<cluster>/<name>`
//! (upstream `pkg/node/types.Node`). Peers derive tunnel endpoints, pod CIDR routes and health
//! addresses from them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use super::gojson::{self, Field, IpMask, Shape, leaf};
use super::store::StoreValue;

/// A node as upstream writes it: Go field names (capitalised, no JSON tags), every field
/// present, `""` for a nil IP and `null` for a nil slice, map or CIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Cluster")]
    pub cluster: String,
    #[serde(rename = "IPAddresses", serialize_with = "gojson::nil_vec::serialize")]
    pub ip_addresses: Vec<NodeAddress>,
    #[serde(rename = "IPv4AllocCIDR")]
    pub ipv4_alloc_cidr: Option<NodeCidr>,
    #[serde(
        rename = "IPv4SecondaryAllocCIDRs",
        serialize_with = "gojson::nil_vec::serialize"
    )]
    pub ipv4_secondary_alloc_cidrs: Vec<NodeCidr>,
    #[serde(rename = "IPv6AllocCIDR")]
    pub ipv6_alloc_cidr: Option<NodeCidr>,
    #[serde(
        rename = "IPv6SecondaryAllocCIDRs",
        serialize_with = "gojson::nil_vec::serialize"
    )]
    pub ipv6_secondary_alloc_cidrs: Vec<NodeCidr>,
    #[serde(rename = "IPv4HealthIP", with = "gojson::opt_ip")]
    pub ipv4_health_ip: Option<IpAddr>,
    #[serde(rename = "IPv6HealthIP", with = "gojson::opt_ip")]
    pub ipv6_health_ip: Option<IpAddr>,
    #[serde(rename = "IPv4IngressIP", with = "gojson::opt_ip")]
    pub ipv4_ingress_ip: Option<IpAddr>,
    #[serde(rename = "IPv6IngressIP", with = "gojson::opt_ip")]
    pub ipv6_ingress_ip: Option<IpAddr>,
    /// The numeric cluster id (0-255, or up to 511 with an extended mesh).
    #[serde(rename = "ClusterID")]
    pub cluster_id: u32,
    /// Where the record came from (`local`, `kvstore`, `custom-resource`, ...).
    #[serde(rename = "Source")]
    pub source: String,
    #[serde(rename = "EncryptionKey")]
    pub encryption_key: u8,
    #[serde(rename = "Labels", serialize_with = "gojson::nil_map::serialize")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Annotations", serialize_with = "gojson::nil_map::serialize")]
    pub annotations: BTreeMap<String, String>,
    /// Upstream releases up to 1.17 carry the node's numeric identity here; newer ones dropped
    /// the field. Written only when set, so records from either generation round-trip.
    #[serde(rename = "NodeIdentity", skip_serializing_if = "Option::is_none")]
    pub node_identity: Option<u32>,
    #[serde(rename = "WireguardPubKey")]
    pub wireguard_pub_key: String,
    #[serde(rename = "BootID")]
    pub boot_id: String,
}

/// One address of a node with its type (`InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeAddress {
    #[serde(rename = "Type")]
    pub address_type: String,
    /// `None` is Go's nil IP, written as `""`.
    #[serde(rename = "IP", with = "gojson::opt_ip")]
    pub ip: Option<IpAddr>,
}

/// A pod CIDR of a node.
///
/// Upstream stored these as `*cidr.CIDR`, which embeds `*net.IPNet`, so the wire form is the
/// object `{"IP":"10.0.1.0","Mask":"////AA=="}`. Current upstream (`pkg/node/types.Prefix`)
/// still *writes* that legacy object, so that agents of older releases can decode it, and
/// *reads* both it and the target string form `"10.0.1.0/24"`. We do the same: decode both,
/// encode the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeCidr(IpNet);

impl NodeCidr {
    /// The CIDR, canonicalised to its network address as `net.ParseCIDR` does.
    pub fn new(net: IpNet) -> Self {
        NodeCidr(net.trunc())
    }

    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl From<IpNet> for NodeCidr {
    fn from(net: IpNet) -> Self {
        NodeCidr::new(net)
    }
}

impl Serialize for NodeCidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bits = match self.0 {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        let mask = IpMask::from_prefix_len(self.0.prefix_len(), bits)
            .ok_or_else(|| serde::ser::Error::custom("prefix length exceeds address size"))?;
        let mut obj = s.serialize_struct("CIDR", 2)?;
        obj.serialize_field("IP", &self.0.network().to_string())?;
        obj.serialize_field("Mask", &mask)?;
        obj.end()
    }
}

/// The legacy object form after field-name folding.
#[derive(Deserialize)]
struct LegacyCidr {
    #[serde(rename = "IP", default, with = "gojson::opt_ip")]
    ip: Option<IpAddr>,
    #[serde(rename = "Mask", default)]
    mask: Option<IpMask>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CidrForm {
    Text(String),
    Legacy(LegacyCidr),
}

impl<'de> Deserialize<'de> for NodeCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match CidrForm::deserialize(d)? {
            CidrForm::Text(text) => text
                .parse::<IpNet>()
                .map(NodeCidr::new)
                .map_err(|_| de::Error::custom(format!("invalid node CIDR {text:?}"))),
            CidrForm::Legacy(legacy) => {
                let ip = legacy
                    .ip
                    .ok_or_else(|| de::Error::custom("node CIDR has no IP"))?;
                let mask = legacy
                    .mask
                    .ok_or_else(|| de::Error::custom("node CIDR has no mask"))?;
                let family_len = match ip {
                    IpAddr::V4(_) => 4,
                    IpAddr::V6(_) => 16,
                };
                let ones = mask
                    .prefix_len()
                    .filter(|_| mask.as_bytes().len() == family_len)
                    .ok_or_else(|| {
                        de::Error::custom(format!(
                            "non-canonical mask {:?} in node CIDR",
                            mask.as_bytes()
                        ))
                    })?;
                IpNet::new(ip, ones)
                    .map(NodeCidr::new)
                    .map_err(|e| de::Error::custom(format!("invalid node CIDR: {e}")))
            }
        }
    }
}

const NODE_ADDRESS: Shape = Shape::Struct(&[leaf("Type"), leaf("IP")]);
const CIDR: Shape = Shape::Nullable(&Shape::OrString(&Shape::Struct(&[
    leaf("IP"),
    leaf("Mask"),
])));

const NODE: Shape = Shape::Struct(&[
    leaf("Name"),
    leaf("Cluster"),
    Field {
        name: "IPAddresses",
        shape: Shape::List(&NODE_ADDRESS),
    },
    Field {
        name: "IPv4AllocCIDR",
        shape: CIDR,
    },
    Field {
        name: "IPv4SecondaryAllocCIDRs",
        shape: Shape::List(&CIDR),
    },
    Field {
        name: "IPv6AllocCIDR",
        shape: CIDR,
    },
    Field {
        name: "IPv6SecondaryAllocCIDRs",
        shape: Shape::List(&CIDR),
    },
    leaf("IPv4HealthIP"),
    leaf("IPv6HealthIP"),
    leaf("IPv4IngressIP"),
    leaf("IPv6IngressIP"),
    leaf("ClusterID"),
    leaf("Source"),
    leaf("EncryptionKey"),
    Field {
        name: "Labels",
        shape: Shape::Map(&Shape::Leaf),
    },
    Field {
        name: "Annotations",
        shape: Shape::Map(&Shape::Leaf),
    },
    leaf("NodeIdentity"),
    leaf("WireguardPubKey"),
    leaf("BootID"),
]);

impl Node {
    /// Upstream's `GetKeyName`: `<cluster>/<name>`.
    pub fn key_name_of(cluster: &str, name: &str) -> String {
        format!("{cluster}/{name}")
    }
}

impl StoreValue for Node {
    fn key_name(&self) -> String {
        Node::key_name_of(&self.cluster, &self.name)
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        gojson::to_vec(self)
    }

    /// Decodes like upstream's `Unmarshal`, including its validation: a node without a cluster
    /// or a name is rejected.
    fn decode(data: &[u8]) -> Result<Self, String> {
        let node: Node = gojson::decode(data, &NODE)?;
        if node.cluster.is_empty() {
            return Err("cluster is unset".to_owned());
        }
        if node.name.is_empty() {
            return Err("name is unset".to_owned());
        }
        Ok(node)
    }
}
