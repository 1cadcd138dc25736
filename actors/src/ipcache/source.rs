//! Where an ipcache entry comes from, and which source wins when several claim one prefix
//! (upstream's `pkg/source`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The origin of a piece of state, declared from the highest precedence to the lowest, in
/// upstream's order: `kube-apiserver`, `local`, `kvstore`, `custom-resource`, `k8s`,
/// `clustermesh`, `directory`, `api`, `generated`, `restored`, `unspec`. The derived `Ord`
/// follows that order, so the smallest claim is the one that counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    /// The kube-apiserver's own addresses; only overwritten by itself.
    #[serde(rename = "kube-apiserver")]
    KubeApiServer,
    /// This agent's own state: its endpoints and node addresses.
    #[serde(rename = "local")]
    Local,
    /// Other nodes' entries read from the kvstore.
    #[serde(rename = "kvstore")]
    KvStore,
    #[serde(rename = "custom-resource")]
    CustomResource,
    #[serde(rename = "k8s")]
    Kubernetes,
    /// Entries of remote clusters.
    #[serde(rename = "clustermesh")]
    ClusterMesh,
    #[serde(rename = "directory")]
    Directory,
    /// The agent's local REST API.
    #[serde(rename = "api")]
    LocalApi,
    /// Derived state such as CIDR identities of policy prefixes.
    #[serde(rename = "generated")]
    Generated,
    /// Left behind by the previous agent instance; anything may replace it.
    #[serde(rename = "restored")]
    Restored,
    #[serde(rename = "unspec")]
    Unspec,
}

impl Source {
    /// Every source, highest precedence first.
    pub const ALL: [Source; 11] = [
        Source::KubeApiServer,
        Source::Local,
        Source::KvStore,
        Source::CustomResource,
        Source::Kubernetes,
        Source::ClusterMesh,
        Source::Directory,
        Source::LocalApi,
        Source::Generated,
        Source::Restored,
        Source::Unspec,
    ];

    /// The name upstream uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::KubeApiServer => "kube-apiserver",
            Source::Local => "local",
            Source::KvStore => "kvstore",
            Source::CustomResource => "custom-resource",
            Source::Kubernetes => "k8s",
            Source::ClusterMesh => "clustermesh",
            Source::Directory => "directory",
            Source::LocalApi => "api",
            Source::Generated => "generated",
            Source::Restored => "restored",
            Source::Unspec => "unspec",
        }
    }

    /// Upstream's `AllowOverwrite`: whether state from `new` may replace state from
    /// `existing` (same or higher precedence).
    pub fn allows_overwrite(existing: Source, new: Source) -> bool {
        new <= existing
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_upstream() {
        assert!(Source::allows_overwrite(Source::KvStore, Source::Local));
        assert!(!Source::allows_overwrite(Source::Local, Source::KvStore));
        assert!(!Source::allows_overwrite(Source::Local, Source::Generated));
        assert!(Source::allows_overwrite(
            Source::Local,
            Source::KubeApiServer
        ));
        assert!(!Source::allows_overwrite(
            Source::KubeApiServer,
            Source::Local
        ));
        assert!(Source::allows_overwrite(
            Source::Restored,
            Source::Generated
        ));
        assert!(Source::allows_overwrite(
            Source::Kubernetes,
            Source::Kubernetes
        ));
        let mut sorted = Source::ALL;
        sorted.sort();
        assert_eq!(sorted, Source::ALL);
        for source in Source::ALL {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{source}\""));
        }
    }
}
