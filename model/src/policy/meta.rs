//! Kubernetes object metadata as far as policies use it, and Kubernetes' name rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::de::null_as_default;
use super::error::PolicyError;
use super::path::FieldPath;

/// The parts of Kubernetes' `ObjectMeta` a policy needs. Other metadata (`resourceVersion`,
/// `creationTimestamp`, `managedFields`, ...) is accepted and dropped, as it says nothing about
/// what the policy allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// Whether a namespaced object must (or a cluster-scoped one must not) have a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Namespaced,
    Cluster,
}

impl ObjectMeta {
    /// Checks the name (a DNS-1123 subdomain, required) and the namespace (a DNS-1123 label,
    /// optional for namespaced objects, forbidden for cluster-scoped ones).
    pub(crate) fn validate(&self, kind: &str, scope: Scope) -> Result<(), PolicyError> {
        let path = FieldPath::root().field("metadata");
        match self.name.as_deref() {
            None | Some("") => {
                return Err(PolicyError::invalid(
                    path.field("name"),
                    format!("a {kind} must have a name"),
                ));
            }
            Some(name) => {
                if let Err(reason) = check_dns_subdomain(name) {
                    return Err(PolicyError::invalid(
                        path.field("name"),
                        format!("{name:?} is not a valid name: {reason}"),
                    ));
                }
            }
        }
        match (scope, self.namespace.as_deref()) {
            (Scope::Cluster, Some(ns)) if !ns.is_empty() => Err(PolicyError::invalid(
                path.field("namespace"),
                format!("a {kind} is cluster-scoped and must not have a namespace"),
            )),
            (Scope::Namespaced, Some(ns)) if !ns.is_empty() => {
                check_dns_label(ns).map_err(|reason| {
                    PolicyError::invalid(
                        path.field("namespace"),
                        format!("{ns:?} is not a valid namespace: {reason}"),
                    )
                })
            }
            _ => Ok(()),
        }
    }
}

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', starting and ending with an
/// alphanumeric.
pub(crate) fn check_dns_label(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err("must be no more than 63 characters".to_owned());
    }
    check_dns_part(value)
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub(crate) fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.len() > 253 {
        return Err("must be no more than 253 characters".to_owned());
    }
    value.split('.').try_for_each(check_dns_part)
}

fn check_dns_part(part: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let starts_and_ends = part.starts_with(alnum) && part.ends_with(alnum);
    if starts_and_ends && part.chars().all(|c| alnum(c) || c == '-') {
        Ok(())
    } else {
        Err(
            "must consist of lower case alphanumeric characters or '-', and must start and end \
             with an alphanumeric character"
                .to_owned(),
        )
    }
}
