//! (ext) How policy documents sit in the kvstore: one document per key
//! `cilium/config/policies/v1/<namespace>/<name>`, its value the document as JSON. The agent's
//! [`PolicyWatcher`](super::PolicyWatcher) reads this layout and the `cilium` cluster CLI writes
//! it, both through this module, so the two can never disagree on it.
//!
//! Cluster-wide policies (CiliumClusterwideNetworkPolicy) have no namespace; they live under
//! the segment [`CLUSTERWIDE_NAMESPACE`] (`_clusterwide`), which cannot be a Kubernetes
//! namespace (namespaces are DNS-1123 labels: no `_`), so no namespaced policy can collide
//! with a cluster-wide one. A namespaced policy without `metadata.namespace` is stored under
//! `default`, the namespace it applies in.

use kvstore::keys::{POLICIES_PREFIX, policy_key};
use model::policy::{PolicyDocument, parse_documents};

use super::messages::ClusterStateError;

/// The key segment standing in for the namespace of cluster-wide policies.
pub const CLUSTERWIDE_NAMESPACE: &str = "_clusterwide";

/// Which policy a key holds: its namespace (`None` for a cluster-wide policy) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyRef {
    /// The key a document is stored under (see the module docs for the namespace).
    pub fn of_document(document: &PolicyDocument) -> PolicyRef {
        PolicyRef {
            namespace: document.effective_namespace().map(str::to_owned),
            name: document.name().to_owned(),
        }
    }

    /// The key below [`POLICIES_PREFIX`]: `<namespace>/<name>`.
    pub fn key_name(&self) -> String {
        format!("{}/{}", self.namespace_segment(), self.name)
    }

    /// The full key.
    pub fn key(&self) -> String {
        policy_key(self.namespace_segment(), &self.name)
    }

    /// The namespace as it appears in the key.
    pub fn namespace_segment(&self) -> &str {
        self.namespace.as_deref().unwrap_or(CLUSTERWIDE_NAMESPACE)
    }

    /// Parses a full key below [`POLICIES_PREFIX`].
    pub fn parse_key(key: &str) -> Result<PolicyRef, ClusterStateError> {
        let malformed = |reason: &str| ClusterStateError::MalformedKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let name = key
            .strip_prefix(POLICIES_PREFIX)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| malformed("not below the policies prefix"))?;
        match name.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(PolicyRef {
                    namespace: (namespace != CLUSTERWIDE_NAMESPACE).then(|| namespace.to_owned()),
                    name: name.to_owned(),
                })
            }
            _ => Err(malformed("expected <namespace>/<name>")),
        }
    }
}

/// The value written for `document`: the document as JSON with `apiVersion`, `kind` and (for
/// namespaced kinds) `metadata.namespace` filled in, so the stored value says on its own what
/// it is and where it applies.
pub fn encode_policy(document: &PolicyDocument) -> Result<Vec<u8>, serde_json::Error> {
    let kind = document.kind();
    let fill = |api_version: &mut String, doc_kind: &mut String| {
        if api_version.is_empty() {
            kind.api_versions()
                .first()
                .copied()
                .unwrap_or_default()
                .clone_into(api_version);
        }
        if doc_kind.is_empty() {
            kind.as_str().clone_into(doc_kind);
        }
    };
    let namespace = document.effective_namespace().map(str::to_owned);
    match document.clone() {
        PolicyDocument::Cnp(mut p) => {
            fill(&mut p.api_version, &mut p.kind);
            p.metadata.namespace = namespace;
            serde_json::to_vec(&p)
        }
        PolicyDocument::Ccnp(mut p) => {
            fill(&mut p.api_version, &mut p.kind);
            serde_json::to_vec(&p)
        }
        PolicyDocument::NetworkPolicy(mut p) => {
            fill(&mut p.api_version, &mut p.kind);
            p.metadata.namespace = namespace;
            serde_json::to_vec(&p)
        }
    }
}

/// Reads the document stored under `key`: exactly one policy document that parses,
/// validates, passes the support check and names the policy its key names.
pub fn decode_policy(key: &str, value: &[u8]) -> Result<PolicyDocument, ClusterStateError> {
    let policy = PolicyRef::parse_key(key)?;
    let invalid = |source: model::policy::PolicyError| ClusterStateError::InvalidPolicy {
        key: key.to_owned(),
        source,
    };
    let text = std::str::from_utf8(value).map_err(|_| ClusterStateError::NotUtf8 {
        key: key.to_owned(),
    })?;
    let mut documents = parse_documents(text).map_err(invalid)?;
    let document = match (documents.pop(), documents.is_empty()) {
        (Some(document), true) => document,
        (last, _) => {
            return Err(ClusterStateError::NotOneDocument {
                key: key.to_owned(),
                count: documents.len() + usize::from(last.is_some()),
            });
        }
    };
    document.check_supported().map_err(invalid)?;
    let named = PolicyRef::of_document(&document);
    if named != policy {
        return Err(ClusterStateError::KeyMismatch {
            key: key.to_owned(),
            document: format!("{} {}", document.kind(), named.key_name()),
        });
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-web
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
"#;

    const CCNP: &str = r#"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: deny-all
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities:
    - world
"#;

    fn one(text: &str) -> PolicyDocument {
        let mut docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn keys_round_trip_and_clusterwide_policies_use_their_own_segment() {
        let cnp = one(CNP);
        let r = PolicyRef::of_document(&cnp);
        assert_eq!(r.key(), "cilium/config/policies/v1/default/allow-web");
        assert_eq!(PolicyRef::parse_key(&r.key()).unwrap(), r);

        let ccnp = one(CCNP);
        let r = PolicyRef::of_document(&ccnp);
        assert_eq!(r.namespace, None);
        assert_eq!(r.key(), "cilium/config/policies/v1/_clusterwide/deny-all");
        assert_eq!(PolicyRef::parse_key(&r.key()).unwrap(), r);

        for bad in [
            "cilium/config/policies/v1/default",
            "cilium/config/policies/v1//x",
            "cilium/config/policies/v1/a/b/c",
            "cilium/state/nodes/v1/a/b",
        ] {
            assert!(
                matches!(
                    PolicyRef::parse_key(bad),
                    Err(ClusterStateError::MalformedKey { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn encoded_documents_decode_to_the_same_policy() {
        for text in [CNP, CCNP] {
            let document = one(text);
            let key = PolicyRef::of_document(&document).key();
            let value = encode_policy(&document).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
            assert!(
                json["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("cilium.io/")
            );
            let decoded = decode_policy(&key, &value).unwrap();
            assert_eq!(decoded.kind(), document.kind());
            assert_eq!(decoded.rules(), document.rules());
            assert_eq!(
                PolicyRef::of_document(&decoded),
                PolicyRef::of_document(&document)
            );
        }
        // The namespace a namespaced policy applies in is written out.
        let value = encode_policy(&one(CNP)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["metadata"]["namespace"], "default");
    }

    #[test]
    fn values_that_are_not_exactly_one_matching_supported_policy_are_refused() {
        let key = "cilium/config/policies/v1/default/allow-web";
        let err = decode_policy(key, b"{not json").unwrap_err();
        assert!(
            matches!(err, ClusterStateError::InvalidPolicy { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(key), "{err}");

        let two = format!("{CNP}\n---\n{CNP}");
        assert!(matches!(
            decode_policy(key, two.as_bytes()),
            Err(ClusterStateError::NotOneDocument { count: 2, .. })
        ));
        assert!(matches!(
            decode_policy(key, b"[]"),
            Err(ClusterStateError::NotOneDocument { count: 0, .. })
        ));

        let elsewhere = "cilium/config/policies/v1/prod/allow-web";
        assert!(matches!(
            decode_policy(elsewhere, CNP.as_bytes()),
            Err(ClusterStateError::KeyMismatch { .. })
        ));
        // A cluster-wide policy stored under a namespace is a mismatch too.
        assert!(matches!(
            decode_policy(
                "cilium/config/policies/v1/default/deny-all",
                CCNP.as_bytes()
            ),
            Err(ClusterStateError::KeyMismatch { .. })
        ));

        let l7 = CNP.replace(
            "    - matchLabels:\n        app: client\n",
            "    - matchLabels:\n        app: client\n    toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n      rules:\n        http:\n        - method: GET\n",
        );
        let err = decode_policy(key, l7.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");

        assert!(matches!(
            decode_policy(key, &[0xff, 0xfe]),
            Err(ClusterStateError::NotUtf8 { .. })
        ));
    }
}
