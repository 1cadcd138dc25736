//! (ext) Pod CIDR allocations of a cluster without Kubernetes: the operator writes one record
//! per node under `cilium/config/ipam/v1/<cluster>/<node>`, and the node's agent, started with
//! `--ipam cluster-pool` and no `--ipv4-range`, waits for it. In a Kubernetes cluster the same
//! information lives in the CiliumNode's `spec.ipam.podCIDRs`; the field name is kept.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::store::StoreValue;

/// The pod CIDRs the operator handed to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamAllocation {
    pub cluster: String,
    pub node: String,
    /// In allocation order; the agent uses the first.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<Ipv4Net>,
}

impl IpamAllocation {
    /// `<cluster>/<node>`, as node records are named.
    pub fn key_name_of(cluster: &str, node: &str) -> String {
        format!("{cluster}/{node}")
    }
}

impl StoreValue for IpamAllocation {
    fn key_name(&self) -> String {
        IpamAllocation::key_name_of(&self.cluster, &self.node)
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Rejects records without a cluster, a node or any CIDR, so an agent never starts IPAM
    /// from a half-written record.
    fn decode(data: &[u8]) -> Result<Self, String> {
        let alloc: IpamAllocation = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if alloc.cluster.is_empty() {
            return Err("cluster is unset".to_owned());
        }
        if alloc.node.is_empty() {
            return Err("node is unset".to_owned());
        }
        if alloc.pod_cidrs.is_empty() {
            return Err("podCIDRs is empty".to_owned());
        }
        Ok(alloc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_incomplete_records() {
        let alloc = IpamAllocation {
            cluster: "c1".into(),
            node: "n1".into(),
            pod_cidrs: vec!["10.0.3.0/24".parse().unwrap()],
        };
        let bytes = alloc.encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"cluster":"c1","node":"n1","podCIDRs":["10.0.3.0/24"]}"#
        );
        assert_eq!(IpamAllocation::decode(&bytes), Ok(alloc));
        assert!(IpamAllocation::decode(br#"{"cluster":"c1","node":"n1","podCIDRs":[]}"#).is_err());
        assert!(
            IpamAllocation::decode(br#"{"cluster":"","node":"n1","podCIDRs":["10.0.0.0/24"]}"#)
                .is_err()
        );
        assert!(
            IpamAllocation::decode(br#"{"cluster":"c1","node":"n1","podCIDRs":["nope"]}"#).is_err()
        );
        assert!(IpamAllocation::decode(b"garbage").is_err());
    }
}
