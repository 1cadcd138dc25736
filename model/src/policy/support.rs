//! The support check: which valid policy features this project enforces today.
//!
//! Kept apart from parsing and validation on purpose: a feature that lands only has to be
//! removed from this file. Refusing an unsupported feature (rather than ignoring it) matters
//! for security: an ignored `toFQDNs` or L7 rule would leave the traffic it was meant to
//! restrict either wide open or entirely blocked, without any sign of it.
//!
//! The check walks a rule in a fixed order (rule-level fields, then `ingress`, `ingressDeny`,
//! `egress`, `egressDeny`; within a section the peers, then `toPorts`, then authentication)
//! and reports the first unsupported feature.

use super::cilium::{
    CidrRule, EgressDenyRule, EgressRule, Groups, IngressDenyRule, IngressRule, PortProtocol,
    PortRule, Rule,
};
use super::error::{Feature, PolicyError};
use super::path::FieldPath;
use crate::selector::LabelSelector;

impl Rule {
    /// Refuses features that parse and validate but are not enforced yet; paths in errors are
    /// relative to the rule.
    pub fn check_supported(&self) -> Result<(), PolicyError> {
        rule(&FieldPath::root(), self)
    }
}

pub(crate) fn rule(path: &FieldPath, rule: &Rule) -> Result<(), PolicyError> {
    if rule.node_selector.is_some() {
        return Err(PolicyError::unsupported(
            path.field("nodeSelector"),
            Feature::HostPolicy,
        ));
    }
    for (i, r) in rule.ingress.iter().enumerate() {
        ingress(&path.field("ingress").index(i), r)?;
    }
    for (i, r) in rule.ingress_deny.iter().enumerate() {
        ingress_deny(&path.field("ingressDeny").index(i), r)?;
    }
    for (i, r) in rule.egress.iter().enumerate() {
        egress(&path.field("egress").index(i), r)?;
    }
    for (i, r) in rule.egress_deny.iter().enumerate() {
        egress_deny(&path.field("egressDeny").index(i), r)?;
    }
    Ok(())
}

/// Peer kinds that are refused whenever present, with their JSON name.
fn refuse_present(path: &FieldPath, present: &[(&str, bool, Feature)]) -> Result<(), PolicyError> {
    match present.iter().find(|(_, is_present, _)| *is_present) {
        Some((name, _, feature)) => Err(PolicyError::unsupported(path.field(name), *feature)),
        None => Ok(()),
    }
}

fn cidr_sets(path: &FieldPath, name: &str, sets: &[CidrRule]) -> Result<(), PolicyError> {
    for (i, set) in sets.iter().enumerate() {
        let path = path.field(name).index(i);
        if !set.cidr_group_ref.is_empty() {
            return Err(PolicyError::unsupported(
                path.field("cidrGroupRef"),
                Feature::CidrGroups,
            ));
        }
        if set.cidr_group_selector.is_some() {
            return Err(PolicyError::unsupported(
                path.field("cidrGroupSelector"),
                Feature::CidrGroups,
            ));
        }
    }
    Ok(())
}

fn common_peers(
    path: &FieldPath,
    requires: (&str, &[LabelSelector]),
    nodes: (&str, &[LabelSelector]),
    groups: (&str, &[Groups]),
) -> Result<(), PolicyError> {
    refuse_present(
        path,
        &[
            (requires.0, !requires.1.is_empty(), Feature::Requires),
            (nodes.0, !nodes.1.is_empty(), Feature::Nodes),
            (groups.0, !groups.1.is_empty(), Feature::Groups),
        ],
    )
}

fn ingress(path: &FieldPath, r: &IngressRule) -> Result<(), PolicyError> {
    common_peers(
        path,
        ("fromRequires", &r.from_requires),
        ("fromNodes", &r.from_nodes),
        ("fromGroups", &r.from_groups),
    )?;
    cidr_sets(path, "fromCIDRSet", &r.from_cidr_set)?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        allow_ports(&path.field("toPorts").index(i), port_rule)?;
    }
    authentication(path, r.authentication.is_some(), r.auth.is_some())
}

fn ingress_deny(path: &FieldPath, r: &IngressDenyRule) -> Result<(), PolicyError> {
    common_peers(
        path,
        ("fromRequires", &r.from_requires),
        ("fromNodes", &r.from_nodes),
        ("fromGroups", &r.from_groups),
    )?;
    cidr_sets(path, "fromCIDRSet", &r.from_cidr_set)?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        ports(&path.field("toPorts").index(i), &port_rule.ports)?;
    }
    Ok(())
}

fn egress(path: &FieldPath, r: &EgressRule) -> Result<(), PolicyError> {
    common_peers(
        path,
        ("toRequires", &r.to_requires),
        ("toNodes", &r.to_nodes),
        ("toGroups", &r.to_groups),
    )?;
    refuse_present(
        path,
        &[
            ("toServices", !r.to_services.is_empty(), Feature::Services),
            ("toFQDNs", !r.to_fqdns.is_empty(), Feature::Fqdn),
        ],
    )?;
    cidr_sets(path, "toCIDRSet", &r.to_cidr_set)?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        allow_ports(&path.field("toPorts").index(i), port_rule)?;
    }
    authentication(path, r.authentication.is_some(), r.auth.is_some())
}

fn egress_deny(path: &FieldPath, r: &EgressDenyRule) -> Result<(), PolicyError> {
    common_peers(
        path,
        ("toRequires", &r.to_requires),
        ("toNodes", &r.to_nodes),
        ("toGroups", &r.to_groups),
    )?;
    refuse_present(
        path,
        &[("toServices", !r.to_services.is_empty(), Feature::Services)],
    )?;
    cidr_sets(path, "toCIDRSet", &r.to_cidr_set)?;
    for (i, port_rule) in r.to_ports.iter().enumerate() {
        ports(&path.field("toPorts").index(i), &port_rule.ports)?;
    }
    Ok(())
}

fn allow_ports(path: &FieldPath, port_rule: &PortRule) -> Result<(), PolicyError> {
    ports(path, &port_rule.ports)?;
    refuse_present(
        path,
        &[
            (
                "serverNames",
                !port_rule.server_names.is_empty(),
                Feature::ServerNames,
            ),
            (
                "terminatingTLS",
                port_rule.terminating_tls.is_some(),
                Feature::TlsContext,
            ),
            (
                "originatingTLS",
                port_rule.originating_tls.is_some(),
                Feature::TlsContext,
            ),
            ("listener", port_rule.listener.is_some(), Feature::Listener),
        ],
    )?;
    if let Some(rules) = &port_rule.rules {
        let has_generic = rules.l7proto.as_deref().is_some_and(|p| !p.is_empty());
        refuse_present(
            &path.field("rules"),
            &[
                ("http", !rules.http.is_empty(), Feature::L7Http),
                ("kafka", !rules.kafka.is_empty(), Feature::L7Kafka),
                ("dns", !rules.dns.is_empty(), Feature::L7Dns),
                ("l7proto", has_generic, Feature::L7Generic),
                ("l7", !rules.l7.is_empty(), Feature::L7Generic),
            ],
        )?;
    }
    Ok(())
}

fn ports(path: &FieldPath, ports: &[PortProtocol]) -> Result<(), PolicyError> {
    for (i, port) in ports.iter().enumerate() {
        if port.protocol().is_portless() {
            return Err(PolicyError::unsupported(
                path.field("ports").index(i).field("protocol"),
                Feature::ExtendedIpProtocols,
            ));
        }
    }
    Ok(())
}

fn authentication(path: &FieldPath, current: bool, legacy: bool) -> Result<(), PolicyError> {
    refuse_present(
        path,
        &[
            ("authentication", current, Feature::Authentication),
            ("auth", legacy, Feature::Authentication),
        ],
    )
}
