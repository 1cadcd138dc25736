//! The shared data model of the control plane. No IO lives here: every type can be built, parsed,
//! compared and serialised in a unit test.
//!
//! # Layout
//! - [`labels`]: labels with their source (`k8s:`, `reserved:`, `cidr:` ...), label sets, the
//!   kvstore label string (`k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;`) both ways, and
//!   the security-relevant label filter.
//! - [`identity`]: `NumericIdentity`, the reserved identities, cluster ids and their identity
//!   ranges, and the local-scope (CIDR) identity bit.
//! - [`selector`]: label selectors (`matchLabels`, `matchExpressions`) as they appear in policy
//!   documents, and matching them against label sets.
//! - [`policy`]: serde types for CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
//!   Kubernetes NetworkPolicy documents, multi-document YAML/JSON parsing, validation whose
//!   errors name the offending field, a support check that names features not implemented yet,
//!   the NetworkPolicy translation, and the effective (namespace-scoped) rules of a document.
//! - [`collections`]: keeping the per-address maps of a node packed as they grow.

pub mod collections;
pub mod identity;
pub mod labels;
pub mod policy;
pub mod selector;
