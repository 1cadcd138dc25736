//! `cilium policy`: policy documents under `cilium/config/policies/v1/<namespace>/<name>`,
//! one document per key, cluster-wide ones under `_clusterwide` (see
//! [`actors::clusterstate::layout`]).

use std::collections::BTreeSet;

use actors::clusterstate::{PolicyRef, decode_policy, encode_policy};
use kvstore::Backend;
use kvstore::keys::POLICIES_PREFIX;
use model::policy::{PolicyDocument, parse_documents};
use serde::Serialize;

use super::{ApplyResult, ClusterCliError, write_keys};

/// Reads every policy of `text` (YAML or JSON, one or many documents) and checks each as an
/// agent will: parsed, validated and support-checked. Two documents for the same key are an
/// error, since only one of them could survive.
pub fn parse_policies(text: &str) -> Result<Vec<PolicyDocument>, ClusterCliError> {
    let documents = parse_documents(text).map_err(ClusterCliError::InvalidPolicy)?;
    if documents.is_empty() {
        return Err(ClusterCliError::NoPolicies);
    }
    let mut keys = BTreeSet::new();
    for (index, document) in documents.iter().enumerate() {
        document
            .check_supported()
            .map_err(|source| ClusterCliError::UnsupportedPolicy {
                position: index + 1,
                kind: document.kind().as_str(),
                name: document.name().to_owned(),
                source,
            })?;
        let key = PolicyRef::of_document(document).key();
        if !keys.insert(key.clone()) {
            return Err(ClusterCliError::DuplicateKey { key });
        }
    }
    Ok(documents)
}

/// One policy as `apply` and `list` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyEntry {
    pub key: String,
    /// The policy's kind; empty when the stored value is not a valid policy.
    pub kind: String,
    /// `None` for cluster-wide policies.
    pub namespace: Option<String>,
    pub name: String,
    /// What `apply` did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ApplyResult>,
    /// `list`: why an agent skips the stored value, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `list`: the stored document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<serde_json::Value>,
}

fn entry(policy: &PolicyRef, kind: &str) -> PolicyEntry {
    PolicyEntry {
        key: policy.key(),
        kind: kind.to_owned(),
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        result: None,
        error: None,
        document: None,
    }
}

/// Writes each document (already checked by [`parse_policies`]) to its key.
pub async fn apply_policies(
    backend: &dyn Backend,
    documents: &[PolicyDocument],
) -> Result<Vec<PolicyEntry>, ClusterCliError> {
    let mut values = Vec::with_capacity(documents.len());
    let mut entries = Vec::with_capacity(documents.len());
    for document in documents {
        let policy = PolicyRef::of_document(document);
        let value = encode_policy(document).map_err(|e| {
            ClusterCliError::InvalidPolicy(model::policy::PolicyError::Parse {
                message: format!("cannot encode {}: {e}", policy.key_name()),
            })
        })?;
        values.push((policy.key(), value));
        entries.push(entry(&policy, document.kind().as_str()));
    }
    let results = write_keys(backend, values).await?;
    for (entry, result) in entries.iter_mut().zip(results) {
        entry.result = Some(result);
    }
    Ok(entries)
}

/// Deletes one policy; returns whether it existed.
pub async fn delete_policy(
    backend: &dyn Backend,
    policy: &PolicyRef,
) -> Result<bool, ClusterCliError> {
    Ok(backend.delete(&policy.key()).await?)
}

/// Deletes every policy; returns how many there were.
pub async fn delete_all_policies(backend: &dyn Backend) -> Result<u64, ClusterCliError> {
    Ok(backend
        .delete_prefix(&format!("{POLICIES_PREFIX}/"))
        .await?)
}

/// Every stored policy in key order, with the reason agents skip it if they do.
pub async fn list_policies(backend: &dyn Backend) -> Result<Vec<PolicyEntry>, ClusterCliError> {
    let listing = backend.list_prefix(&format!("{POLICIES_PREFIX}/")).await?;
    let mut entries = Vec::with_capacity(listing.kvs.len());
    for kv in listing.kvs {
        let Ok(policy) = PolicyRef::parse_key(&kv.key) else {
            entries.push(PolicyEntry {
                key: kv.key,
                kind: String::new(),
                namespace: None,
                name: String::new(),
                result: None,
                error: Some("malformed key: expected <namespace>/<name>".to_owned()),
                document: None,
            });
            continue;
        };
        let mut listed = entry(&policy, "");
        match decode_policy(&kv.key, &kv.value) {
            Ok(document) => listed.kind = document.kind().as_str().to_owned(),
            Err(err) => listed.error = Some(err.to_string()),
        }
        listed.document = serde_json::from_slice(&kv.value).ok();
        entries.push(listed);
    }
    Ok(entries)
}
