//! From a [`Rule`] to what the repository evaluates: the subject selector, default-deny per
//! direction, and per section (`ingress`, `ingressDeny`, `egress`, `egressDeny` entry) the
//! peers as selectors and the ports as policy-key protocol/port pairs.
//!
//! This is where the policy language's peer and port semantics are decided, once per rule at
//! import, so that resolving an endpoint only walks precomputed data:
//! - `from/toEndpoints`: label selectors. Without an `io.cilium.k8s.policy.cluster`
//!   requirement they are narrowed to the local cluster (DESIGN 4.7); selectors that name
//!   reserved labels are not, because reserved identities carry no cluster label. The
//!   wildcard `{}` (only reachable unscoped through a NetworkPolicy's empty peer list) selects
//!   every peer and becomes identity 0, like `all`.
//! - `from/toEntities`, as upstream's `api/entity.go`: `all` is the wildcard (identity 0),
//!   `world` is `reserved:world` (plus the per-family world labels with both families on),
//!   `cluster` is every reserved in-cluster identity (host, remote-node, init, ingress,
//!   health, unmanaged, kube-apiserver) plus every identity of the local cluster, `none`
//!   selects nothing, the rest are their reserved label.
//! - `from/toCIDR` and `from/toCIDRSet`: CIDR selectors (prefix containment minus `except`);
//!   a `/0` also selects the world identities (see [`Selector::Cidr`]).
//! - A section without peers but with ports or ICMP types is L4-only: it applies to every
//!   peer (identity 0). A section without peers and without ports selects nothing but still
//!   puts the endpoint into default deny (the `ingress: [{}]` idiom).
//! - Ports: no `toPorts`/`icmps` means every protocol and port (L3-only). Protocol `ANY` is
//!   expanded to TCP, UDP and SCTP as upstream does, so it never covers ICMP. Port 0 means
//!   every port of the protocol; `endPort` gives a range, split into port prefixes. ICMP types
//!   go into the port field of an ICMP (or ICMPv6) key, as the datapath looks them up.
//!   Named ports are kept by name and resolved per endpoint.

use std::collections::BTreeSet;
use std::net::IpAddr;

use datapath::api::{Direction, PolicyKey, PortPrefix, Protocol, port_range_prefixes};
use ipnet::IpNet;
use model::identity::{ClusterName, NumericIdentity};
use model::labels::{Label, keys, source};
use model::policy::{
    CidrRule, Entity, IcmpFamily, IcmpRule, L4Proto, PortProtocol, PortSpec, Rule, icmp_type_number,
};
use model::selector::{LabelSelector, SelectorKey};

use super::messages::PolicyError;
use super::selector_cache::Selector;

/// A protocol and port (prefix) as they appear in a policy key. Only built through
/// [`L4::new`], which refuses a port without a protocol, so every `L4` makes a valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct L4 {
    pub protocol: Protocol,
    pub port: PortPrefix,
}

impl L4 {
    /// Every protocol and port.
    pub const ANY: L4 = L4 {
        protocol: Protocol::ANY,
        port: PortPrefix::ANY,
    };

    pub fn new(protocol: Protocol, port: PortPrefix) -> Result<L4, PolicyError> {
        // The datapath key type is the authority on which combinations are valid.
        PolicyKey::new(NumericIdentity::UNKNOWN, Direction::Ingress, protocol, port)?;
        Ok(L4 { protocol, port })
    }

    /// Every port of one protocol.
    pub const fn protocol(protocol: Protocol) -> L4 {
        L4 {
            protocol,
            port: PortPrefix::ANY,
        }
    }

    /// The key of this protocol/port for one peer identity and direction.
    pub fn key(self, identity: NumericIdentity, direction: Direction) -> Option<PolicyKey> {
        PolicyKey::new(identity, direction, self.protocol, self.port).ok()
    }

    /// Whether every packet this `L4` matches is also matched by `self`; a deny entry covers
    /// the allow entries of the same peer it is broader than.
    pub fn covers(self, other: L4) -> bool {
        if self.protocol.is_any() {
            return true;
        }
        self.protocol == other.protocol
            && self.port.prefix_len() <= other.port.prefix_len()
            && self.port.contains(other.port.first())
    }
}

/// The ports of one section: fixed protocol/port pairs, and named ports to resolve per
/// endpoint (protocol, lower-cased name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ports {
    pub fixed: Vec<L4>,
    pub named: Vec<(Protocol, String)>,
}

/// A peer of a section before its selector is interned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerPlan {
    /// Every peer: the identity-0 ("any identity") key.
    Wildcard,
    Selector(Selector),
}

/// One `ingress`/`ingressDeny`/`egress`/`egressDeny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionPlan {
    pub direction: Direction,
    pub deny: bool,
    pub peers: Vec<PeerPlan>,
    pub ports: Ports,
}

/// A rule ready to be interned into the selector cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RulePlan {
    pub subject: LabelSelector,
    /// Whether selecting an endpoint puts it into default deny, per direction.
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    pub sections: Vec<SectionPlan>,
    /// Prefixes that need a local CIDR identity (see `CidrIdentitiesWanted`).
    pub cidr_prefixes: BTreeSet<IpNet>,
}

/// Node facts the planning depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanContext<'a> {
    pub cluster: &'a ClusterName,
    pub dual_stack: bool,
}

/// The peers of a section, whichever direction it has.
struct PeerFields<'a> {
    endpoints: &'a [LabelSelector],
    cidrs: &'a [String],
    cidr_sets: &'a [CidrRule],
    entities: &'a [Entity],
}

/// Plans a rule. The rule is expected to be validated and support-checked; what is checked
/// here is only what planning itself needs (parsable CIDRs, ICMP types, port ranges).
pub(crate) fn plan_rule(rule: &Rule, ctx: PlanContext<'_>) -> Result<RulePlan, PolicyError> {
    let subject = rule
        .endpoint_selector
        .clone()
        .ok_or(PolicyError::MissingEndpointSelector)?;
    let mut plan = RulePlan {
        subject,
        default_deny_ingress: rule.default_deny_ingress(),
        default_deny_egress: rule.default_deny_egress(),
        sections: Vec::new(),
        cidr_prefixes: BTreeSet::new(),
    };
    for r in &rule.ingress {
        let peers = PeerFields {
            endpoints: &r.from_endpoints,
            cidrs: &r.from_cidr,
            cidr_sets: &r.from_cidr_set,
            entities: &r.from_entities,
        };
        let ports: Vec<&PortProtocol> = r.to_ports.iter().flat_map(|p| &p.ports).collect();
        let section = plan_section(
            Direction::Ingress,
            false,
            &peers,
            (!r.to_ports.is_empty(), &ports, &r.icmps),
            ctx,
            &mut plan.cidr_prefixes,
        )?;
        plan.sections.push(section);
    }
    for r in &rule.ingress_deny {
        let peers = PeerFields {
            endpoints: &r.from_endpoints,
            cidrs: &r.from_cidr,
            cidr_sets: &r.from_cidr_set,
            entities: &r.from_entities,
        };
        let ports: Vec<&PortProtocol> = r.to_ports.iter().flat_map(|p| &p.ports).collect();
        let section = plan_section(
            Direction::Ingress,
            true,
            &peers,
            (!r.to_ports.is_empty(), &ports, &r.icmps),
            ctx,
            &mut plan.cidr_prefixes,
        )?;
        plan.sections.push(section);
    }
    for r in &rule.egress {
        let peers = PeerFields {
            endpoints: &r.to_endpoints,
            cidrs: &r.to_cidr,
            cidr_sets: &r.to_cidr_set,
            entities: &r.to_entities,
        };
        let ports: Vec<&PortProtocol> = r.to_ports.iter().flat_map(|p| &p.ports).collect();
        let section = plan_section(
            Direction::Egress,
            false,
            &peers,
            (!r.to_ports.is_empty(), &ports, &r.icmps),
            ctx,
            &mut plan.cidr_prefixes,
        )?;
        plan.sections.push(section);
    }
    for r in &rule.egress_deny {
        let peers = PeerFields {
            endpoints: &r.to_endpoints,
            cidrs: &r.to_cidr,
            cidr_sets: &r.to_cidr_set,
            entities: &r.to_entities,
        };
        let ports: Vec<&PortProtocol> = r.to_ports.iter().flat_map(|p| &p.ports).collect();
        let section = plan_section(
            Direction::Egress,
            true,
            &peers,
            (!r.to_ports.is_empty(), &ports, &r.icmps),
            ctx,
            &mut plan.cidr_prefixes,
        )?;
        plan.sections.push(section);
    }
    Ok(plan)
}

fn plan_section(
    direction: Direction,
    deny: bool,
    fields: &PeerFields<'_>,
    (has_port_rules, ports, icmps): (bool, &[&PortProtocol], &[IcmpRule]),
    ctx: PlanContext<'_>,
    cidr_prefixes: &mut BTreeSet<IpNet>,
) -> Result<SectionPlan, PolicyError> {
    let mut peers = Vec::new();
    for selector in fields.endpoints {
        peers.push(endpoint_peer(selector, ctx.cluster));
    }
    for entity in fields.entities {
        peers.extend(entity_peers(*entity, ctx));
    }
    for cidr in fields.cidrs {
        let prefix = parse_prefix(cidr)?;
        peers.extend(cidr_peers(prefix, Vec::new(), ctx, cidr_prefixes));
    }
    for set in fields.cidr_sets {
        let prefix = parse_prefix(&set.cidr)?;
        let except = set
            .except
            .iter()
            .map(|e| parse_prefix(e))
            .collect::<Result<Vec<_>, _>>()?;
        peers.extend(cidr_peers(prefix, except, ctx, cidr_prefixes));
    }
    let no_peer_fields = fields.endpoints.is_empty()
        && fields.entities.is_empty()
        && fields.cidrs.is_empty()
        && fields.cidr_sets.is_empty();
    let ports = plan_ports(has_port_rules, ports, icmps)?;
    if no_peer_fields && (has_port_rules || !icmps.is_empty()) {
        peers.push(PeerPlan::Wildcard);
    }
    peers.dedup();
    Ok(SectionPlan {
        direction,
        deny,
        peers,
        ports,
    })
}

/// An endpoint selector as a peer, narrowed to the local cluster unless it names a cluster or
/// a reserved label.
fn endpoint_peer(selector: &LabelSelector, cluster: &ClusterName) -> PeerPlan {
    if selector.selects_all() {
        return PeerPlan::Wildcard;
    }
    let names_reserved = selector
        .match_labels
        .keys()
        .chain(selector.match_expressions.iter().map(|r| &r.key))
        .filter_map(|key| SelectorKey::parse(key).ok())
        .any(|key| key.source.as_deref() == Some(source::RESERVED));
    let mut selector = selector.clone();
    if !selector.has_cluster_key() && !names_reserved {
        selector.match_labels.insert(
            format!("{}:{}", source::K8S, keys::POLICY_CLUSTER),
            cluster.as_str().to_owned(),
        );
    }
    PeerPlan::Selector(Selector::Labels(selector))
}

/// A selector that requires exactly this one label.
fn label_peer(label: Label) -> PeerPlan {
    PeerPlan::Selector(Selector::Labels(LabelSelector::from_labels(
        &std::iter::once(label).collect(),
    )))
}

fn world_peers(ctx: PlanContext<'_>) -> Vec<PeerPlan> {
    let mut peers = vec![label_peer(Label::world())];
    if ctx.dual_stack {
        peers.push(label_peer(Label::world_ipv4()));
        peers.push(label_peer(Label::world_ipv6()));
    }
    peers
}

/// Upstream's `EntitySelectorMapping`.
fn entity_peers(entity: Entity, ctx: PlanContext<'_>) -> Vec<PeerPlan> {
    match entity {
        Entity::All => vec![PeerPlan::Wildcard],
        Entity::None => Vec::new(),
        Entity::World => world_peers(ctx),
        Entity::WorldIpv4 => vec![label_peer(Label::world_ipv4())],
        Entity::WorldIpv6 => vec![label_peer(Label::world_ipv6())],
        Entity::Host => vec![label_peer(Label::host())],
        Entity::Init => vec![label_peer(Label::init())],
        Entity::Ingress => vec![label_peer(Label::ingress())],
        Entity::Unmanaged => vec![label_peer(Label::unmanaged())],
        Entity::RemoteNode => vec![label_peer(Label::remote_node())],
        Entity::Health => vec![label_peer(Label::health())],
        Entity::KubeApiserver => vec![label_peer(Label::kube_apiserver())],
        Entity::Cluster => vec![
            label_peer(Label::host()),
            label_peer(Label::remote_node()),
            label_peer(Label::init()),
            label_peer(Label::ingress()),
            label_peer(Label::health()),
            label_peer(Label::unmanaged()),
            label_peer(Label::kube_apiserver()),
            label_peer(Label::k8s(keys::POLICY_CLUSTER, ctx.cluster.as_str())),
        ],
    }
}

fn cidr_peers(
    prefix: IpNet,
    except: Vec<IpNet>,
    ctx: PlanContext<'_>,
    cidr_prefixes: &mut BTreeSet<IpNet>,
) -> Vec<PeerPlan> {
    // A /0 has no CIDR identity of its own (its labels would be just the world label).
    let mut wanted = std::iter::once(prefix).chain(except.iter().copied());
    cidr_prefixes.extend(
        wanted
            .by_ref()
            .filter(|p| p.prefix_len() > 0)
            .map(|p| p.trunc()),
    );
    vec![PeerPlan::Selector(Selector::cidr(
        prefix,
        except,
        ctx.dual_stack,
    ))]
}

/// A CIDR field: a prefix, or a bare address meaning its host prefix, as upstream accepts.
pub(crate) fn parse_prefix(text: &str) -> Result<IpNet, PolicyError> {
    if let Ok(prefix) = text.parse::<IpNet>() {
        return Ok(prefix.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| PolicyError::InvalidCidr {
            cidr: text.to_owned(),
        })
}

fn protocols(proto: L4Proto) -> Vec<Protocol> {
    match proto {
        L4Proto::Any => vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP],
        L4Proto::Tcp => vec![Protocol::TCP],
        L4Proto::Udp => vec![Protocol::UDP],
        L4Proto::Sctp => vec![Protocol::SCTP],
        L4Proto::Icmp => vec![Protocol::ICMP],
        L4Proto::Icmpv6 => vec![Protocol::ICMPV6],
        L4Proto::Vrrp => vec![Protocol::new(112)],
        L4Proto::Igmp => vec![Protocol::new(2)],
    }
}

fn plan_ports(
    has_port_rules: bool,
    ports: &[&PortProtocol],
    icmps: &[IcmpRule],
) -> Result<Ports, PolicyError> {
    let mut out = Ports::default();
    if !has_port_rules && icmps.is_empty() {
        out.fixed.push(L4::ANY);
        return Ok(out);
    }
    for port in ports {
        let proto = port.protocol();
        for protocol in protocols(proto) {
            if proto.is_portless() {
                out.fixed.push(L4::protocol(protocol));
                continue;
            }
            match port.port_spec() {
                None | Some(PortSpec::Number(0)) => out.fixed.push(L4::protocol(protocol)),
                Some(PortSpec::Number(start)) => match port.end_port {
                    Some(end) if end > i32::from(start) => {
                        let end = u16::try_from(end).map_err(|_| PolicyError::InvalidEndPort {
                            port: start,
                            end_port: end,
                        })?;
                        let prefixes = port_range_prefixes(start, end).map_err(|_| {
                            PolicyError::InvalidEndPort {
                                port: start,
                                end_port: i32::from(end),
                            }
                        })?;
                        for prefix in prefixes {
                            out.fixed.push(L4::new(protocol, prefix)?);
                        }
                    }
                    _ => out.fixed.push(L4::new(protocol, PortPrefix::exact(start))?),
                },
                Some(PortSpec::Name(name)) => out.named.push((protocol, name)),
            }
        }
    }
    for field in icmps.iter().flat_map(|r| &r.fields) {
        let family = field.family.unwrap_or(IcmpFamily::Ipv4);
        let protocol = match family {
            IcmpFamily::Ipv4 => Protocol::ICMP,
            IcmpFamily::Ipv6 => Protocol::ICMPV6,
        };
        let icmp_type = icmp_type_number(family, &field.icmp_type).ok_or_else(|| {
            PolicyError::InvalidIcmpType {
                icmp_type: field.icmp_type.to_string(),
            }
        })?;
        out.fixed
            .push(L4::new(protocol, PortPrefix::exact(u16::from(icmp_type)))?);
    }
    out.fixed.sort_unstable();
    out.fixed.dedup();
    out.named.sort_unstable();
    out.named.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use model::policy::{EgressRule, IngressRule, PortRule};

    use super::*;

    fn ctx(cluster: &ClusterName) -> PlanContext<'_> {
        PlanContext {
            cluster,
            dual_stack: false,
        }
    }

    fn port(port: &str, end_port: Option<i32>, protocol: Option<L4Proto>) -> PortProtocol {
        PortProtocol {
            port: port.to_owned(),
            end_port,
            protocol,
        }
    }

    fn plan_ingress(rule: IngressRule) -> SectionPlan {
        let cluster = ClusterName::default();
        let rule = Rule {
            endpoint_selector: Some(LabelSelector::default()),
            ingress: vec![rule],
            ..Rule::default()
        };
        let mut plan = plan_rule(&rule, ctx(&cluster)).unwrap();
        plan.sections.remove(0)
    }

    #[test]
    fn a_rule_without_endpoint_selector_is_refused() {
        let cluster = ClusterName::default();
        let err = plan_rule(&Rule::default(), ctx(&cluster)).unwrap_err();
        assert!(matches!(err, PolicyError::MissingEndpointSelector));
    }

    #[test]
    fn ports_expand_any_ranges_and_icmp_types() {
        let section = plan_ingress(IngressRule {
            to_ports: vec![PortRule {
                ports: vec![
                    port("80", None, None),
                    port("8080", Some(8083), Some(L4Proto::Tcp)),
                    port("0", None, Some(L4Proto::Udp)),
                    port("http", None, Some(L4Proto::Tcp)),
                ],
                ..PortRule::default()
            }],
            icmps: vec![IcmpRule {
                fields: vec![model::policy::IcmpField {
                    family: None,
                    icmp_type: model::policy::IntOrString::String("EchoRequest".into()),
                }],
            }],
            ..IngressRule::default()
        });
        // No peers but ports: L4-only, every peer.
        assert_eq!(section.peers, [PeerPlan::Wildcard]);
        let shown: Vec<String> = section
            .ports
            .fixed
            .iter()
            .map(|l4| format!("{}/{}", l4.protocol, l4.port))
            .collect();
        assert_eq!(
            shown,
            [
                "ICMP/8",
                "TCP/80",
                "TCP/8080-8083",
                "UDP/*",
                "UDP/80",
                "SCTP/80"
            ]
        );
        assert_eq!(section.ports.named, [(Protocol::TCP, "http".to_owned())]);
    }

    #[test]
    fn a_section_without_peers_and_ports_selects_nothing() {
        let section = plan_ingress(IngressRule::default());
        assert!(section.peers.is_empty());
        assert_eq!(section.ports.fixed, [L4::ANY]);
    }

    #[test]
    fn endpoint_selectors_are_scoped_to_the_local_cluster() {
        let cluster = ClusterName::new("c1").unwrap();
        let app = |extra: &[(&str, &str)]| LabelSelector {
            match_labels: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        };
        let peer = |s: LabelSelector| match endpoint_peer(&s, &cluster) {
            PeerPlan::Selector(s) => s.to_string(),
            PeerPlan::Wildcard => "wildcard".to_owned(),
        };
        assert_eq!(
            peer(app(&[("app", "web")])),
            r#"{"any:app" In ["web"], "k8s:io.cilium.k8s.policy.cluster" In ["c1"]}"#
        );
        assert_eq!(
            peer(app(&[
                ("app", "web"),
                ("io.cilium.k8s.policy.cluster", "c2")
            ])),
            r#"{"any:app" In ["web"], "any:io.cilium.k8s.policy.cluster" In ["c2"]}"#
        );
        assert_eq!(
            peer(app(&[("reserved:host", "")])),
            r#"{"reserved:host" In [""]}"#
        );
        assert_eq!(peer(app(&[])), "wildcard");
    }

    #[test]
    fn cidr_peers_request_identities_for_prefixes_and_exceptions() {
        let cluster = ClusterName::default();
        let rule = Rule {
            endpoint_selector: Some(LabelSelector::default()),
            egress: vec![EgressRule {
                to_cidr: vec!["10.1.2.3".into(), "0.0.0.0/0".into()],
                to_cidr_set: vec![CidrRule {
                    cidr: "192.168.0.0/16".into(),
                    except: vec!["192.168.1.0/24".into()],
                    ..CidrRule::default()
                }],
                ..EgressRule::default()
            }],
            ..Rule::default()
        };
        let plan = plan_rule(&rule, ctx(&cluster)).unwrap();
        let wanted: Vec<String> = plan.cidr_prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(wanted, ["10.1.2.3/32", "192.168.0.0/16", "192.168.1.0/24"]);
        let peers: Vec<String> = plan.sections[0]
            .peers
            .iter()
            .map(|p| match p {
                PeerPlan::Selector(s) => s.to_string(),
                PeerPlan::Wildcard => "wildcard".to_owned(),
            })
            .collect();
        assert_eq!(
            peers,
            [
                "cidr:10.1.2.3/32",
                "cidr:0.0.0.0/0",
                "cidr:192.168.0.0/16 except 192.168.1.0/24",
            ]
        );
        // Defaults: a rule with egress only is default deny at egress only.
        assert!(plan.default_deny_egress && !plan.default_deny_ingress);
    }

    #[test]
    fn malformed_cidrs_are_errors_not_panics() {
        for bad in ["10.0.0.0/33", "", "not-an-ip", "10.0.0"] {
            assert!(
                matches!(parse_prefix(bad), Err(PolicyError::InvalidCidr { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cover_relation_follows_the_trie() {
        let tcp = |port, len| L4 {
            protocol: Protocol::TCP,
            port: PortPrefix::new(port, len).unwrap(),
        };
        assert!(L4::ANY.covers(tcp(80, 16)));
        assert!(L4::protocol(Protocol::TCP).covers(tcp(80, 16)));
        assert!(tcp(1024, 6).covers(tcp(1030, 16)));
        assert!(!tcp(1024, 6).covers(tcp(2048, 16)));
        assert!(!tcp(80, 16).covers(tcp(0, 0)));
        assert!(!L4::protocol(Protocol::UDP).covers(tcp(80, 16)));
        assert!(!tcp(80, 16).covers(L4::ANY));
    }
}
