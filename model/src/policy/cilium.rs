//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy documents and the `Rule` they carry,
//! with upstream's field names (`cilium.io/v2`, `api.Rule`).
//!
//! The types describe the whole policy language, including the parts this project does not
//! enforce yet (L7, FQDN, services, ...): parsing them fully lets validation report real
//! mistakes and lets [`super::PolicyDocument::check_supported`] name the missing feature
//! precisely. Inside a rule unknown fields are errors: upstream's JSON decoder would drop a
//! misspelt `toPort` and silently widen the rule to every port.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::de::{null_as_default, opt_selector, rule_labels, selectors};
use super::meta::ObjectMeta;
use crate::labels::Label;
use crate::selector::LabelSelector;

/// A namespaced Cilium policy (`kind: CiliumNetworkPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    /// `cilium.io/v2` (`cilium.io/v1` is accepted as the legacy spelling). Some upstream
    /// examples write the key in lower case (`apiversion`); it is accepted too.
    #[serde(
        default,
        alias = "apiversion",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// A single rule; combined with `specs` when both are present (`spec` first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub specs: Vec<Rule>,
    /// Not part of the CRD, but several upstream examples put a description here; kept so that
    /// those documents parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A cluster-wide Cilium policy (`kind: CiliumClusterwideNetworkPolicy`); the same shape as
/// [`CiliumNetworkPolicy`] but without a namespace, and the only kind that may select nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumClusterwideNetworkPolicy {
    #[serde(
        default,
        alias = "apiversion",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub specs: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CiliumNetworkPolicy {
    /// The rules as written: `spec`, then every entry of `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.iter().chain(self.specs.iter())
    }
}

impl CiliumClusterwideNetworkPolicy {
    /// The rules as written: `spec`, then every entry of `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.iter().chain(self.specs.iter())
    }
}

/// One policy rule (upstream `api.Rule`): which endpoints (or nodes) it applies to and what
/// they may receive and send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The endpoints the rule applies to; `{}` selects every endpoint.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_selector"
    )]
    pub endpoint_selector: Option<LabelSelector>,
    /// The nodes a host policy applies to; exclusive with `endpointSelector`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_selector"
    )]
    pub node_selector: Option<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ingress: Vec<IngressRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ingress_deny: Vec<IngressDenyRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub egress: Vec<EgressRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub egress_deny: Vec<EgressDenyRule>,
    /// Labels identifying the rule (policy name, namespace, ...), not selecting anything.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "rule_labels"
    )]
    pub labels: Vec<Label>,
    /// Per direction: whether selecting an endpoint puts it into default deny. Unset means
    /// "yes if the rule has a section for that direction".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDenyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Policy verdict log annotation; informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
}

impl Rule {
    /// Whether endpoints selected by this rule go into default deny at ingress (upstream's
    /// `Sanitize` default: yes when the rule has `ingress` or `ingressDeny`).
    pub fn default_deny_ingress(&self) -> bool {
        self.enable_default_deny
            .as_ref()
            .and_then(|d| d.ingress)
            .unwrap_or(!self.ingress.is_empty() || !self.ingress_deny.is_empty())
    }

    /// Whether endpoints selected by this rule go into default deny at egress.
    pub fn default_deny_egress(&self) -> bool {
        self.enable_default_deny
            .as_ref()
            .and_then(|d| d.egress)
            .unwrap_or(!self.egress.is_empty() || !self.egress_deny.is_empty())
    }
}

/// `enableDefaultDeny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDenyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// `log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub value: String,
}

/// An allow rule at ingress: traffic from any of the peers, to any of the ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_requires: Vec<LabelSelector>,
    #[serde(
        default,
        rename = "fromCIDR",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_cidr: Vec<String>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_entities: Vec<Entity>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_groups: Vec<Groups>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_nodes: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_ports: Vec<PortRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub icmps: Vec<IcmpRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// The pre-1.14 spelling of `authentication` (`auth: {type: ...}`), still found in upstream
    /// examples. Recognised so that an authentication requirement is never silently dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<LegacyAuth>,
}

/// A deny rule at ingress: traffic from any of the peers, to any of the ports, is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDenyRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_requires: Vec<LabelSelector>,
    #[serde(
        default,
        rename = "fromCIDR",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_cidr: Vec<String>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_entities: Vec<Entity>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from_groups: Vec<Groups>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub from_nodes: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_ports: Vec<PortDenyRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub icmps: Vec<IcmpRule>,
}

/// An allow rule at egress: traffic to any of the peers, on any of the ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_requires: Vec<LabelSelector>,
    #[serde(
        default,
        rename = "toCIDR",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_cidr: Vec<String>,
    #[serde(
        default,
        rename = "toCIDRSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_entities: Vec<Entity>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_services: Vec<Service>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_groups: Vec<Groups>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_nodes: Vec<LabelSelector>,
    #[serde(
        default,
        rename = "toFQDNs",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_fqdns: Vec<FqdnSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_ports: Vec<PortRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub icmps: Vec<IcmpRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// See [`IngressRule::auth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<LegacyAuth>,
}

/// A deny rule at egress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDenyRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_requires: Vec<LabelSelector>,
    #[serde(
        default,
        rename = "toCIDR",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_cidr: Vec<String>,
    #[serde(
        default,
        rename = "toCIDRSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_entities: Vec<Entity>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_services: Vec<Service>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_groups: Vec<Groups>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "selectors"
    )]
    pub to_nodes: Vec<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to_ports: Vec<PortDenyRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub icmps: Vec<IcmpRule>,
}

/// A CIDR with optional exceptions (`fromCIDRSet` / `toCIDRSet` entries), or a reference to a
/// CiliumCIDRGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr_group_ref: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_selector"
    )]
    pub cidr_group_selector: Option<LabelSelector>,
    /// Prefixes inside `cidr` that are excluded.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub except: Vec<String>,
}

/// A class of peers without individual identities (upstream `api.Entity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Every peer.
    All,
    /// Everything outside the cluster.
    World,
    /// Everything outside the cluster, IPv4 only.
    WorldIpv4,
    /// Everything outside the cluster, IPv6 only.
    WorldIpv6,
    /// Everything inside the cluster (endpoints, hosts, health, ...).
    Cluster,
    /// The local host.
    Host,
    /// Endpoints that have not received their identity yet.
    Init,
    /// The Cilium ingress proxy.
    Ingress,
    /// Endpoints not managed by Cilium.
    Unmanaged,
    /// Other nodes of the cluster.
    RemoteNode,
    /// Health endpoints.
    Health,
    /// Nothing; a placeholder that selects no peer.
    None,
    /// The Kubernetes API server.
    KubeApiserver,
}

impl Entity {
    /// Every entity, in upstream's order.
    pub const ALL: [Entity; 13] = [
        Entity::All,
        Entity::World,
        Entity::WorldIpv4,
        Entity::WorldIpv6,
        Entity::Cluster,
        Entity::Host,
        Entity::Init,
        Entity::Ingress,
        Entity::Unmanaged,
        Entity::RemoteNode,
        Entity::Health,
        Entity::None,
        Entity::KubeApiserver,
    ];

    /// The entity as written in policies (`remote-node`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Entity::All => "all",
            Entity::World => "world",
            Entity::WorldIpv4 => "world-ipv4",
            Entity::WorldIpv6 => "world-ipv6",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::Init => "init",
            Entity::Ingress => "ingress",
            Entity::Unmanaged => "unmanaged",
            Entity::RemoteNode => "remote-node",
            Entity::Health => "health",
            Entity::None => "none",
            Entity::KubeApiserver => "kube-apiserver",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A list of ports with optional L7 rules (`toPorts` entries of allow rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ports: Vec<PortProtocol>,
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<TlsContext>,
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<TlsContext>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub server_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

/// The ports of a deny rule (no L7 rules: deny is L3/L4 only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDenyRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ports: Vec<PortProtocol>,
}

/// A port (or port range) and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A port number (`"80"`, `"0"` for every port) or an IANA service name (`"http"`) that
    /// is resolved against the endpoint's named ports. A string, as upstream; a YAML/JSON
    /// number is read as its decimal string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
    /// The last port of a range starting at `port`; 0 or absent means no range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// Absent means any protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Proto>,
}

impl PortProtocol {
    /// The protocol, with upstream's default (`ANY`) for an absent one.
    pub fn protocol(&self) -> L4Proto {
        self.protocol.unwrap_or(L4Proto::Any)
    }

    /// The port as a number or a (lower-cased) name; `None` when it is neither. Validation
    /// guarantees `Some` for accepted documents, except for port-less protocols.
    pub fn port_spec(&self) -> Option<PortSpec> {
        PortSpec::parse(&self.port)
    }
}

/// A parsed `port` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// A port number; 0 means every port.
    Number(u16),
    /// A named port, lower-cased (names compare case-insensitively).
    Name(String),
}

impl PortSpec {
    /// Parses a port as upstream does: an IANA service name, else a decimal number 0-65535.
    pub fn parse(port: &str) -> Option<PortSpec> {
        if is_iana_service_name(port) {
            return Some(PortSpec::Name(port.to_ascii_lowercase()));
        }
        let digits_only = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = port.len() > 1 && port.starts_with('0');
        if !digits_only || leading_zero {
            return None;
        }
        port.parse().ok().map(PortSpec::Number)
    }
}

/// RFC 6335 service names: 1-15 characters of letters, digits and non-adjacent '-', at least
/// one letter, not starting or ending with '-'.
pub fn is_iana_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 15
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
        && !name.contains("--")
}

/// An L4 protocol as written in `toPorts` (upstream `api.L4Proto`). Read case-insensitively,
/// as upstream normalises it; written upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    Vrrp,
    Igmp,
    Any,
}

impl L4Proto {
    /// Every protocol, in the order error messages list them.
    pub const ALL: [L4Proto; 8] = [
        L4Proto::Tcp,
        L4Proto::Udp,
        L4Proto::Sctp,
        L4Proto::Icmp,
        L4Proto::Icmpv6,
        L4Proto::Vrrp,
        L4Proto::Igmp,
        L4Proto::Any,
    ];

    /// Upstream's spelling (`TCP`, `ICMPV6`, `ANY`).
    pub const fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
            L4Proto::Sctp => "SCTP",
            L4Proto::Icmp => "ICMP",
            L4Proto::Icmpv6 => "ICMPV6",
            L4Proto::Vrrp => "VRRP",
            L4Proto::Igmp => "IGMP",
            L4Proto::Any => "ANY",
        }
    }

    /// Protocols without transport ports, which only take port 0 or no port.
    pub const fn is_portless(self) -> bool {
        matches!(self, L4Proto::Vrrp | L4Proto::Igmp)
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`L4Proto::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}, expected one of TCP, UDP, SCTP, ICMP, ICMPv6, VRRP, IGMP, ANY")]
pub struct UnknownProtocol(pub String);

impl FromStr for L4Proto {
    type Err = UnknownProtocol;

    /// Case-insensitive; the empty string is `ANY`, as upstream's `ParseL4Proto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(L4Proto::Any);
        }
        L4Proto::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

impl Serialize for L4Proto {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for L4Proto {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsing inside the visitor (not after reading a String) lets the YAML reader attach
        // the field's own path to the error.
        struct ProtoVisitor;

        impl serde::de::Visitor<'_> for ProtoVisitor {
            type Value = L4Proto;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<L4Proto, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(ProtoVisitor)
    }
}

/// An `icmps` entry: ICMP types that are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub fields: Vec<IcmpField>,
}

/// One ICMP type of one address family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// Absent means IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
    /// A type number (0-255) or its CamelCase name (`EchoRequest`).
    #[serde(rename = "type")]
    pub icmp_type: super::de::IntOrString,
}

/// The address family of an ICMP field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IcmpFamily {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

/// L7 rules of a port rule; at most one kind may be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub http: Vec<HttpRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub kafka: Vec<KafkaRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub dns: Vec<FqdnSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub l7: Vec<BTreeMap<String, String>>,
}

impl L7Rules {
    /// Whether no L7 rule of any kind is set.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty()
            && self.kafka.is_empty()
            && self.dns.is_empty()
            && self.l7proto.as_deref().is_none_or(str::is_empty)
            && self.l7.is_empty()
    }
}

/// `rules.http` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub headers: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub header_matches: Vec<HeaderMatch>,
}

/// `rules.http[].headerMatches` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `rules.kafka` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A DNS name or pattern (`toFQDNs` and `rules.dns` entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// A TLS context of the L7 proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    #[serde(default, rename = "trustedCA", skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// A reference to a Kubernetes secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// `listener`: redirect the traffic to an Envoy listener of a CiliumEnvoyConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub envoy_config: EnvoyConfigRef,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// The CiliumEnvoyConfig (or cluster-wide one) a listener lives in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfigRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// A `toServices` entry: a Kubernetes service by name or by label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_selector: Option<ServiceSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service: Option<ServiceName>,
}

/// Services selected by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSelector {
    #[serde(default, deserialize_with = "super::de::selector")]
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A service by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceName {
    #[serde(default)]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A `fromGroups` / `toGroups` entry (cloud provider security groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsGroup>,
}

/// AWS security groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsGroup {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub security_groups_ids: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub security_groups_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `authentication`: the peers must authenticate (mutual TLS) before traffic is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    #[serde(default)]
    pub mode: String,
}

/// `auth`: the pre-1.14 form of [`Authentication`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyAuth {
    #[serde(default, rename = "type")]
    pub auth_type: String,
}
