//! Validation of Cilium rules: the checks upstream's `Rule.Validate`/`Sanitize` make that do
//! not depend on agent configuration, each reported with the path of the offending field.
//!
//! Validation is about the policy language, not about what this project enforces: a valid L7
//! rule passes here and is refused later by [`super::support`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::PolicyKind;
use super::cilium::{
    CidrRule, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, EgressDenyRule, EgressRule,
    FqdnSelector, IcmpFamily, IcmpRule, IngressDenyRule, IngressRule, L4Proto, L7Rules,
    PortProtocol, PortRule, PortSpec, Rule,
};
use super::de::IntOrString;
use super::error::PolicyError;
use super::meta::Scope;
use super::path::FieldPath;
use crate::selector::LabelSelector;

/// Upstream's limit of ports in one port rule.
const MAX_PORTS: usize = 40;
/// Upstream's limit of fields in one ICMP rule.
const MAX_ICMP_FIELDS: usize = 40;

/// ICMPv4 type names upstream accepts, with their numbers.
const ICMPV4_TYPES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// ICMPv6 type names upstream accepts, with their numbers.
const ICMPV6_TYPES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

/// The number of an ICMP type given as a number or an upstream type name; `None` when the
/// value is neither for the family.
pub fn icmp_type_number(family: IcmpFamily, icmp_type: &IntOrString) -> Option<u8> {
    match icmp_type {
        IntOrString::Int(n) => u8::try_from(*n).ok(),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u8>() {
                return Some(n);
            }
            let table = match family {
                IcmpFamily::Ipv4 => ICMPV4_TYPES,
                IcmpFamily::Ipv6 => ICMPV6_TYPES,
            };
            table
                .iter()
                .find(|(name, _)| name == s)
                .map(|(_, number)| *number)
        }
    }
}

impl Rule {
    /// Validates the rule; paths in errors are relative to the rule (`ingress[0].toPorts`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        rule(&FieldPath::root(), self)
    }
}

/// Validates a rule located at `path`.
pub(crate) fn rule(path: &FieldPath, rule: &Rule) -> Result<(), PolicyError> {
    match (&rule.endpoint_selector, &rule.node_selector) {
        (None, None) => {
            return Err(PolicyError::invalid(
                path,
                "a rule must have one of endpointSelector or nodeSelector",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(PolicyError::invalid(
                path,
                "a rule cannot have both endpointSelector and nodeSelector",
            ));
        }
        (Some(s), None) => selector(&path.field("endpointSelector"), s)?,
        (None, Some(s)) => selector(&path.field("nodeSelector"), s)?,
    }
    if rule.ingress.is_empty()
        && rule.ingress_deny.is_empty()
        && rule.egress.is_empty()
        && rule.egress_deny.is_empty()
    {
        return Err(PolicyError::invalid(
            path,
            "a rule must have at least one of ingress, ingressDeny, egress or egressDeny",
        ));
    }
    for (i, label) in rule.labels.iter().enumerate() {
        label
            .validate()
            .map_err(|e| PolicyError::invalid(path.field("labels").index(i), e.to_string()))?;
    }
    let host_policy = rule.node_selector.is_some();
    for (i, r) in rule.ingress.iter().enumerate() {
        ingress(&path.field("ingress").index(i), r, host_policy)?;
    }
    for (i, r) in rule.ingress_deny.iter().enumerate() {
        ingress_deny(&path.field("ingressDeny").index(i), r)?;
    }
    for (i, r) in rule.egress.iter().enumerate() {
        egress(&path.field("egress").index(i), r, host_policy)?;
    }
    for (i, r) in rule.egress_deny.iter().enumerate() {
        egress_deny(&path.field("egressDeny").index(i), r)?;
    }
    Ok(())
}

/// The peers of one ingress or egress rule, by their JSON names, for the checks that treat
/// allow and deny rules alike.
struct Peers<'a> {
    endpoints: (&'static str, &'a [LabelSelector]),
    requires: (&'static str, &'a [LabelSelector]),
    nodes: (&'static str, &'a [LabelSelector]),
    cidrs: (&'static str, &'a [String]),
    cidr_sets: (&'static str, &'a [CidrRule]),
    /// Every kind of L3 peer with its count, for upstream's "one kind per rule" check.
    kinds: Vec<(&'static str, usize)>,
}

fn peers(path: &FieldPath, peers: &Peers<'_>) -> Result<(), PolicyError> {
    let mut present = peers.kinds.iter().filter(|(_, count)| *count > 0);
    if let (Some((first, _)), Some((second, _))) = (present.next(), present.next()) {
        return Err(PolicyError::invalid(
            path,
            format!("combining {first} and {second} in one rule is not supported, use two rules"),
        ));
    }
    for (name, list) in [peers.endpoints, peers.requires, peers.nodes] {
        for (i, s) in list.iter().enumerate() {
            selector(&path.field(name).index(i), s)?;
        }
    }
    let (name, cidrs) = peers.cidrs;
    for (i, cidr) in cidrs.iter().enumerate() {
        cidr_or_ip(&path.field(name).index(i), cidr)?;
    }
    let (name, sets) = peers.cidr_sets;
    for (i, set) in sets.iter().enumerate() {
        cidr_rule(&path.field(name).index(i), set)?;
    }
    Ok(())
}

fn ingress(path: &FieldPath, r: &IngressRule, host_policy: bool) -> Result<(), PolicyError> {
    peers(
        path,
        &Peers {
            endpoints: ("fromEndpoints", &r.from_endpoints),
            requires: ("fromRequires", &r.from_requires),
            nodes: ("fromNodes", &r.from_nodes),
            cidrs: ("fromCIDR", &r.from_cidr),
            cidr_sets: ("fromCIDRSet", &r.from_cidr_set),
            kinds: vec![
                ("fromEndpoints", r.from_endpoints.len()),
                ("fromCIDR", r.from_cidr.len()),
                ("fromCIDRSet", r.from_cidr_set.len()),
                ("fromEntities", r.from_entities.len()),
                ("fromNodes", r.from_nodes.len()),
                ("fromGroups", r.from_groups.len()),
            ],
        },
    )?;
    icmps_without_ports(path, !r.icmps.is_empty(), !r.to_ports.is_empty())?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        allow_ports(
            &path.field("toPorts").index(i),
            port_rule,
            Direction::Ingress,
            host_policy,
        )?;
    }
    icmps(path, &r.icmps)
}

fn ingress_deny(path: &FieldPath, r: &IngressDenyRule) -> Result<(), PolicyError> {
    peers(
        path,
        &Peers {
            endpoints: ("fromEndpoints", &r.from_endpoints),
            requires: ("fromRequires", &r.from_requires),
            nodes: ("fromNodes", &r.from_nodes),
            cidrs: ("fromCIDR", &r.from_cidr),
            cidr_sets: ("fromCIDRSet", &r.from_cidr_set),
            kinds: vec![
                ("fromEndpoints", r.from_endpoints.len()),
                ("fromCIDR", r.from_cidr.len()),
                ("fromCIDRSet", r.from_cidr_set.len()),
                ("fromEntities", r.from_entities.len()),
                ("fromNodes", r.from_nodes.len()),
                ("fromGroups", r.from_groups.len()),
            ],
        },
    )?;
    icmps_without_ports(path, !r.icmps.is_empty(), !r.to_ports.is_empty())?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        port_list(&path.field("toPorts").index(i), &port_rule.ports, false)?;
    }
    icmps(path, &r.icmps)
}

fn egress(path: &FieldPath, r: &EgressRule, host_policy: bool) -> Result<(), PolicyError> {
    peers(
        path,
        &Peers {
            endpoints: ("toEndpoints", &r.to_endpoints),
            requires: ("toRequires", &r.to_requires),
            nodes: ("toNodes", &r.to_nodes),
            cidrs: ("toCIDR", &r.to_cidr),
            cidr_sets: ("toCIDRSet", &r.to_cidr_set),
            kinds: vec![
                ("toEndpoints", r.to_endpoints.len()),
                ("toCIDR", r.to_cidr.len()),
                ("toCIDRSet", r.to_cidr_set.len()),
                ("toEntities", r.to_entities.len()),
                ("toServices", r.to_services.len()),
                ("toGroups", r.to_groups.len()),
                ("toNodes", r.to_nodes.len()),
                ("toFQDNs", r.to_fqdns.len()),
            ],
        },
    )?;
    for (i, service) in r.to_services.iter().enumerate() {
        if let Some(s) = &service.k8s_service_selector {
            let path = path
                .field("toServices")
                .index(i)
                .field("k8sServiceSelector");
            selector(&path.field("selector"), &s.selector)?;
        }
    }
    for (i, fqdn) in r.to_fqdns.iter().enumerate() {
        fqdn_selector(&path.field("toFQDNs").index(i), fqdn)?;
    }
    icmps_without_ports(path, !r.icmps.is_empty(), !r.to_ports.is_empty())?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        allow_ports(
            &path.field("toPorts").index(i),
            port_rule,
            Direction::Egress,
            host_policy,
        )?;
    }
    icmps(path, &r.icmps)
}

fn egress_deny(path: &FieldPath, r: &EgressDenyRule) -> Result<(), PolicyError> {
    peers(
        path,
        &Peers {
            endpoints: ("toEndpoints", &r.to_endpoints),
            requires: ("toRequires", &r.to_requires),
            nodes: ("toNodes", &r.to_nodes),
            cidrs: ("toCIDR", &r.to_cidr),
            cidr_sets: ("toCIDRSet", &r.to_cidr_set),
            kinds: vec![
                ("toEndpoints", r.to_endpoints.len()),
                ("toCIDR", r.to_cidr.len()),
                ("toCIDRSet", r.to_cidr_set.len()),
                ("toEntities", r.to_entities.len()),
                ("toServices", r.to_services.len()),
                ("toGroups", r.to_groups.len()),
                ("toNodes", r.to_nodes.len()),
            ],
        },
    )?;
    icmps_without_ports(path, !r.icmps.is_empty(), !r.to_ports.is_empty())?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        port_list(&path.field("toPorts").index(i), &port_rule.ports, false)?;
    }
    icmps(path, &r.icmps)
}

fn icmps_without_ports(path: &FieldPath, icmps: bool, ports: bool) -> Result<(), PolicyError> {
    if icmps && ports {
        return Err(PolicyError::invalid(
            path.field("icmps"),
            "icmps may only be present without toPorts, use a separate rule for toPorts",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn allow_ports(
    path: &FieldPath,
    port_rule: &PortRule,
    direction: Direction,
    host_policy: bool,
) -> Result<(), PolicyError> {
    let l7 = port_rule.rules.as_ref().filter(|r| !r.is_empty());
    let has_dns = l7.is_some_and(|r| !r.dns.is_empty());
    let rules_path = path.field("rules");
    if direction == Direction::Ingress && has_dns {
        return Err(PolicyError::invalid(
            rules_path.field("dns"),
            "DNS rules are not allowed on ingress",
        ));
    }
    if host_policy && l7.is_some() {
        return Err(PolicyError::invalid(
            &rules_path,
            "L7 rules are not allowed in host policies",
        ));
    }
    if l7.is_some() && !port_rule.server_names.is_empty() && port_rule.terminating_tls.is_none() {
        return Err(PolicyError::invalid(
            path.field("serverNames"),
            "serverNames are not allowed with L7 rules without terminatingTLS",
        ));
    }
    if let Some(i) = port_rule.server_names.iter().position(String::is_empty) {
        return Err(PolicyError::invalid(
            path.field("serverNames").index(i),
            "an empty server name is not allowed",
        ));
    }
    port_list(path, &port_rule.ports, has_dns)?;
    if let Some(listener) = &port_rule.listener {
        let listener_path = path.field("listener");
        if direction == Direction::Ingress {
            return Err(PolicyError::invalid(
                listener_path,
                "a listener is not allowed on ingress",
            ));
        }
        if l7.is_some() {
            return Err(PolicyError::invalid(
                listener_path,
                "a listener is not allowed together with L7 rules",
            ));
        }
        if listener.name.is_empty() || listener.envoy_config.name.is_empty() {
            return Err(PolicyError::invalid(
                listener_path,
                "a listener needs a name and an envoyConfig name",
            ));
        }
    }
    let Some(l7) = l7 else {
        return Ok(());
    };
    for (i, port) in port_rule.ports.iter().enumerate() {
        let path = path.field("ports").index(i);
        if !has_dns && port.protocol() != L4Proto::Tcp {
            return Err(PolicyError::invalid(
                path.field("protocol"),
                format!(
                    "L7 rules apply only to TCP (not {}), except DNS rules",
                    port.protocol()
                ),
            ));
        }
        if port.port_spec() == Some(PortSpec::Number(0)) {
            return Err(PolicyError::invalid(
                path.field("port"),
                "L7 rules cannot be used with port 0",
            ));
        }
    }
    l7_rules(&rules_path, l7, !port_rule.ports.is_empty())
}

fn l7_rules(path: &FieldPath, rules: &L7Rules, has_ports: bool) -> Result<(), PolicyError> {
    let has_generic = rules.l7proto.as_deref().is_some_and(|p| !p.is_empty());
    let kinds = [
        !rules.http.is_empty(),
        !rules.kafka.is_empty(),
        !rules.dns.is_empty(),
        has_generic,
    ];
    if kinds.iter().filter(|set| **set).count() > 1 {
        return Err(PolicyError::invalid(
            path,
            "only one kind of L7 rules (http, kafka, dns, l7proto) may be given per port rule",
        ));
    }
    if !rules.l7.is_empty() && !has_generic {
        return Err(PolicyError::invalid(
            path.field("l7"),
            "l7 may only be given together with l7proto",
        ));
    }
    if !rules.dns.is_empty() && !has_ports {
        return Err(PolicyError::invalid(
            path.field("dns"),
            "DNS rules need the DNS port (53) in ports",
        ));
    }
    for (i, dns) in rules.dns.iter().enumerate() {
        fqdn_selector(&path.field("dns").index(i), dns)?;
    }
    for (i, http) in rules.http.iter().enumerate() {
        for (j, header) in http.header_matches.iter().enumerate() {
            if header.name.is_empty() {
                return Err(PolicyError::invalid(
                    path.field("http").index(i).field("headerMatches").index(j),
                    "a header match needs a name",
                ));
            }
        }
    }
    Ok(())
}

fn port_list(path: &FieldPath, ports: &[PortProtocol], has_dns: bool) -> Result<(), PolicyError> {
    if ports.len() > MAX_PORTS {
        return Err(PolicyError::invalid(
            path.field("ports"),
            format!(
                "too many ports ({}), at most {MAX_PORTS} are allowed",
                ports.len()
            ),
        ));
    }
    for (i, port) in ports.iter().enumerate() {
        port_protocol(&path.field("ports").index(i), port, has_dns)?;
    }
    Ok(())
}

fn port_protocol(path: &FieldPath, port: &PortProtocol, has_dns: bool) -> Result<(), PolicyError> {
    let protocol = port.protocol();
    if port.port.is_empty() {
        if protocol.is_portless() {
            return Ok(());
        }
        return Err(PolicyError::invalid(
            path.field("port"),
            "a port must be given (0 for every port)",
        ));
    }
    let start = match port.port_spec() {
        None => {
            return Err(PolicyError::invalid(
                path.field("port"),
                format!("{:?} is not a port number or a valid port name", port.port),
            ));
        }
        Some(PortSpec::Number(n)) => Some(n),
        Some(PortSpec::Name(_)) => None,
    };
    if protocol.is_portless() && start != Some(0) {
        return Err(PolicyError::invalid(
            path.field("port"),
            format!("protocol {protocol} has no ports, the port must be 0 or absent"),
        ));
    }
    let Some(end) = port.end_port.filter(|end| *end != 0) else {
        return Ok(());
    };
    let end_path = path.field("endPort");
    let Some(start) = start else {
        return Err(PolicyError::invalid(
            end_path,
            "endPort requires a numeric port",
        ));
    };
    if !(i32::from(start)..=65535).contains(&end) {
        return Err(PolicyError::invalid(
            end_path,
            format!("{end} must be between port {start} and 65535"),
        ));
    }
    if has_dns && end > i32::from(start) {
        return Err(PolicyError::invalid(
            end_path,
            "DNS rules do not support port ranges",
        ));
    }
    Ok(())
}

fn icmps(path: &FieldPath, rules: &[IcmpRule]) -> Result<(), PolicyError> {
    for (i, rule) in rules.iter().enumerate() {
        let path = path.field("icmps").index(i);
        if rule.fields.len() > MAX_ICMP_FIELDS {
            return Err(PolicyError::invalid(
                path.field("fields"),
                format!(
                    "too many ICMP fields ({}), at most {MAX_ICMP_FIELDS} are allowed",
                    rule.fields.len()
                ),
            ));
        }
        for (j, field) in rule.fields.iter().enumerate() {
            let family = field.family.unwrap_or(IcmpFamily::Ipv4);
            if icmp_type_number(family, &field.icmp_type).is_none() {
                let family_name = match family {
                    IcmpFamily::Ipv4 => "IPv4",
                    IcmpFamily::Ipv6 => "IPv6",
                };
                return Err(PolicyError::invalid(
                    path.field("fields").index(j).field("type"),
                    format!(
                        "{:?} is not an {family_name} ICMP type number (0-255) or name",
                        field.icmp_type.to_string()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn fqdn_selector(path: &FieldPath, fqdn: &FqdnSelector) -> Result<(), PolicyError> {
    let name = fqdn.match_name.as_deref().filter(|s| !s.is_empty());
    let pattern = fqdn.match_pattern.as_deref().filter(|s| !s.is_empty());
    let (field, value, allowed_extra) = match (name, pattern) {
        (Some(name), None) => ("matchName", name, ""),
        (None, Some(pattern)) => ("matchPattern", pattern, "*"),
        _ => {
            return Err(PolicyError::invalid(
                path,
                "exactly one of matchName or matchPattern must be given",
            ));
        }
    };
    let valid =
        |c: char| c.is_ascii_alphanumeric() || "-._".contains(c) || allowed_extra.contains(c);
    if let Some(bad) = value.chars().find(|c| !valid(*c)) {
        return Err(PolicyError::invalid(
            path.field(field),
            format!("{value:?} contains {bad:?}, which is not allowed in a DNS name"),
        ));
    }
    Ok(())
}

/// Checks a selector with the selector module's rules; the error keeps the selector's path.
pub(crate) fn selector(path: &FieldPath, selector: &LabelSelector) -> Result<(), PolicyError> {
    selector.validate().map_err(|source| PolicyError::Selector {
        path: path.to_string(),
        error: Box::new(source),
    })
}

/// `fromCIDR` / `toCIDR`: a prefix, or a bare address meaning a host prefix (as upstream).
fn cidr_or_ip(path: &FieldPath, value: &str) -> Result<(), PolicyError> {
    if value.parse::<IpNet>().is_ok() || value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    Err(PolicyError::invalid(
        path,
        format!("{value:?} is not a CIDR prefix or an IP address"),
    ))
}

fn cidr_rule(path: &FieldPath, rule: &CidrRule) -> Result<(), PolicyError> {
    let given = [
        !rule.cidr.is_empty(),
        !rule.cidr_group_ref.is_empty(),
        rule.cidr_group_selector.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => Err(PolicyError::invalid(
            path,
            "one of cidr, cidrGroupRef or cidrGroupSelector is required",
        )),
        1 if !rule.cidr.is_empty() => cidr_with_exceptions(path, &rule.cidr, &rule.except),
        1 => match &rule.cidr_group_selector {
            Some(s) => selector(&path.field("cidrGroupSelector"), s),
            None => Ok(()),
        },
        _ => Err(PolicyError::invalid(
            path,
            "only one of cidr, cidrGroupRef or cidrGroupSelector may be given",
        )),
    }
}

/// A CIDR in prefix notation with exceptions that must lie inside it. `parent` is the object
/// holding `cidr` and `except` (a CIDR set entry, a NetworkPolicy `ipBlock`).
pub(crate) fn cidr_with_exceptions(
    parent: &FieldPath,
    cidr: &str,
    except: &[String],
) -> Result<(), PolicyError> {
    let cidr_path = parent.field("cidr");
    let except_path = parent.field("except");
    let prefix: IpNet = cidr.parse().map_err(|_| {
        PolicyError::invalid(
            &cidr_path,
            format!("{cidr:?} is not a CIDR prefix (address/length)"),
        )
    })?;
    for (i, exception) in except.iter().enumerate() {
        let path = except_path.index(i);
        let excluded: IpNet = exception.parse().map_err(|_| {
            PolicyError::invalid(
                &path,
                format!("{exception:?} is not a CIDR prefix (address/length)"),
            )
        })?;
        if excluded.prefix_len() < prefix.prefix_len() || !prefix.contains(&excluded.addr()) {
            return Err(PolicyError::invalid(
                &path,
                format!("{exception} is not inside {cidr}"),
            ));
        }
    }
    Ok(())
}

impl CiliumNetworkPolicy {
    /// Checks metadata and every rule; a namespaced policy may not select nodes.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let kind = PolicyKind::CiliumNetworkPolicy;
        kind.check_api_version(&self.api_version)?;
        self.metadata.validate(kind.as_str(), Scope::Namespaced)?;
        document_rules(kind, self.spec.as_ref(), &self.specs)?;
        let root = FieldPath::root();
        let located = self.spec.iter().map(|r| (root.field("spec"), r)).chain(
            self.specs
                .iter()
                .enumerate()
                .map(|(i, r)| (root.field("specs").index(i), r)),
        );
        for (path, r) in located {
            if r.node_selector.is_some() {
                return Err(PolicyError::invalid(
                    path.field("nodeSelector"),
                    "a CiliumNetworkPolicy cannot select nodes, host policies must be \
                     CiliumClusterwideNetworkPolicy",
                ));
            }
        }
        Ok(())
    }
}

impl CiliumClusterwideNetworkPolicy {
    /// Checks metadata (no namespace) and every rule.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let kind = PolicyKind::CiliumClusterwideNetworkPolicy;
        kind.check_api_version(&self.api_version)?;
        self.metadata.validate(kind.as_str(), Scope::Cluster)?;
        document_rules(kind, self.spec.as_ref(), &self.specs)
    }
}

fn document_rules(
    kind: PolicyKind,
    spec: Option<&Rule>,
    specs: &[Rule],
) -> Result<(), PolicyError> {
    let root = FieldPath::root();
    if spec.is_none() && specs.is_empty() {
        return Err(PolicyError::invalid(
            root.field("spec"),
            format!("a {kind} must have a rule in spec or specs"),
        ));
    }
    if let Some(r) = spec {
        rule(&root.field("spec"), r)?;
    }
    for (i, r) in specs.iter().enumerate() {
        rule(&root.field("specs").index(i), r)?;
    }
    Ok(())
}
