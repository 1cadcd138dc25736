//! Property tests: the parsers never panic, whatever the input, and valid rules survive a
//! serialise/parse round trip in both YAML and JSON.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::policy::{
    CidrRule, CiliumNetworkPolicy, DefaultDenyConfig, EgressDenyRule, EgressRule, Entity,
    IcmpFamily, IcmpField, IcmpRule, IngressDenyRule, IngressRule, IntOrString, L4Proto,
    ObjectMeta, PolicyDocument, PortDenyRule, PortProtocol, PortRule, Rule, parse_documents,
    parse_documents_lenient,
};
use model::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
use proptest::prelude::*;

/// Runs every stage on whatever parses; none of them may panic.
fn exercise(text: &str) {
    let _ = parse_documents(text);
    if let Ok(parsed) = parse_documents_lenient(text) {
        for doc in &parsed.policies {
            let _ = doc.check_supported();
            let _ = doc.to_rules();
            let _ = doc.rules();
        }
    }
}

const VALID: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      org: empire
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
      matchExpressions:
      - {key: class, operator: In, values: [a]}
    toPorts:
    - ports:
      - port: "80"
        endPort: 90
        protocol: TCP
  egress:
  - toCIDRSet:
    - cidr: 10.0.0.0/8
      except: [10.96.0.0/12]
  - icmps:
    - fields: [{type: 8, family: IPv4}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: np}
spec:
  podSelector: {matchLabels: {id: app1}}
  ingress:
  - from: [{podSelector: {matchLabels: {id: app2}}}, {ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{port: 80, protocol: TCP}]
"#;

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, ch: char },
    DuplicateLine { line: usize },
    Indent { line: usize, spaces: usize },
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let clamp = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match mutation {
        Mutation::Delete { at, len } => {
            let start = clamp(*at);
            let end = clamp(start.saturating_add(*len).min(text.len()));
            let end = end.max(start);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert { at, text: insert } => {
            let at = clamp(*at);
            format!("{}{insert}{}", &text[..at], &text[at..])
        }
        Mutation::Replace { at, ch } => {
            let at = clamp(*at);
            let rest = &text[at..];
            let skip = rest.chars().next().map_or(0, char::len_utf8);
            format!("{}{ch}{}", &text[..at], &rest[skip..])
        }
        Mutation::DuplicateLine { line } => {
            let lines: Vec<&str> = text.lines().collect();
            let i = line % lines.len().max(1);
            let mut out: Vec<&str> = lines.clone();
            if let Some(l) = lines.get(i) {
                out.insert(i, l);
            }
            out.join("\n")
        }
        Mutation::Indent { line, spaces } => text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == line % text.lines().count().max(1) {
                    format!("{}{l}", " ".repeat(*spaces))
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragment = prop_oneof![
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("{}".to_owned()),
        Just("[".to_owned()),
        Just("\n---\n".to_owned()),
        Just("null".to_owned()),
        Just("&a *a".to_owned()),
        Just("\"".to_owned()),
        "[ -~]{0,8}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), fragment).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<char>()).prop_map(|(at, ch)| Mutation::Replace { at, ch }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), 0usize..6).prop_map(|(line, spaces)| Mutation::Indent { line, spaces }),
    ]
}

fn key() -> impl Strategy<Value = String> {
    ("(k8s:|any:)?", "[a-z][a-z0-9]{0,5}").prop_map(|(source, name)| format!("{source}{name}"))
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        key(),
        0usize..4,
        prop::collection::vec("[a-z0-9]{1,4}", 1..3),
    )
        .prop_map(|(key, op, values)| {
            let operator = [
                SelectorOperator::In,
                SelectorOperator::NotIn,
                SelectorOperator::Exists,
                SelectorOperator::DoesNotExist,
            ][op];
            LabelSelectorRequirement {
                key,
                operator,
                values: if operator.takes_values() {
                    values
                } else {
                    Vec::new()
                },
            }
        });
    (
        prop::collection::btree_map(key(), "[a-z0-9]{0,4}", 0..3),
        prop::collection::vec(requirement, 0..2),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn prefix() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(addr, len)| {
        Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("length at most 32")
            .trunc()
    })
}

fn cidr_rule() -> impl Strategy<Value = CidrRule> {
    (
        prefix(),
        prop::collection::vec((any::<u32>(), 0u8..=32), 0..3),
    )
        .prop_map(|(net, raw)| {
            let except = raw
                .into_iter()
                .map(|(offset, extra)| {
                    let len = net.prefix_len().saturating_add(extra).min(32);
                    let host_bits = u32::from(net.hostmask()) & offset;
                    let addr = Ipv4Addr::from(u32::from(net.network()) | host_bits);
                    Ipv4Net::new(addr, len)
                        .expect("length at most 32")
                        .trunc()
                        .to_string()
                })
                .collect();
            CidrRule {
                cidr: net.to_string(),
                except,
                ..CidrRule::default()
            }
        })
}

fn port() -> impl Strategy<Value = PortProtocol> {
    let protocol = prop::option::of(prop::sample::select(vec![
        L4Proto::Tcp,
        L4Proto::Udp,
        L4Proto::Sctp,
        L4Proto::Any,
    ]));
    prop_oneof![
        (
            any::<u16>(),
            prop::option::of(any::<u16>()),
            protocol.clone()
        )
            .prop_map(|(start, end, protocol)| PortProtocol {
                port: start.to_string(),
                // A range ends at or after its start; 0 would mean "no range".
                end_port: end.map(|e| i32::from(e.max(start))).filter(|e| *e != 0),
                protocol,
            }),
        (
            prop::sample::select(vec!["http", "dns-tcp", "metrics"]),
            protocol
        )
            .prop_map(|(name, protocol)| PortProtocol {
                port: name.to_owned(),
                end_port: None,
                protocol,
            }),
    ]
}

fn port_rules() -> impl Strategy<Value = Vec<PortRule>> {
    prop::collection::vec(
        prop::collection::vec(port(), 1..3).prop_map(|ports| PortRule {
            ports,
            ..PortRule::default()
        }),
        0..2,
    )
}

fn icmps() -> impl Strategy<Value = Vec<IcmpRule>> {
    let field = (
        prop::option::of(prop::sample::select(vec![
            IcmpFamily::Ipv4,
            IcmpFamily::Ipv6,
        ])),
        prop_oneof![
            (0i64..=255).prop_map(IntOrString::Int),
            Just(IntOrString::String("EchoRequest".to_owned())),
            Just(IntOrString::String("8".to_owned())),
        ],
    )
        .prop_map(|(family, icmp_type)| IcmpField { family, icmp_type });
    prop::collection::vec(
        prop::collection::vec(field, 1..3).prop_map(|fields| IcmpRule { fields }),
        1..2,
    )
}

/// The L3 peers of one rule: at most one kind, as upstream requires.
#[derive(Debug, Clone)]
enum Peers {
    None,
    Endpoints(Vec<LabelSelector>),
    Entities(Vec<Entity>),
    Cidrs(Vec<String>),
    CidrSets(Vec<CidrRule>),
}

fn peers() -> impl Strategy<Value = Peers> {
    prop_oneof![
        Just(Peers::None),
        prop::collection::vec(selector(), 1..3).prop_map(Peers::Endpoints),
        prop::collection::vec(prop::sample::select(Entity::ALL.to_vec()), 1..3)
            .prop_map(Peers::Entities),
        prop::collection::vec(prefix().prop_map(|p| p.to_string()), 1..3).prop_map(Peers::Cidrs),
        prop::collection::vec(cidr_rule(), 1..3).prop_map(Peers::CidrSets),
    ]
}

/// Ports or ICMP types, never both in one rule.
fn l4() -> impl Strategy<Value = (Vec<PortRule>, Vec<IcmpRule>)> {
    prop_oneof![
        port_rules().prop_map(|p| (p, Vec::new())),
        icmps().prop_map(|i| (Vec::new(), i)),
    ]
}

fn ingress() -> impl Strategy<Value = IngressRule> {
    (peers(), l4()).prop_map(|(peers, (to_ports, icmps))| {
        let mut rule = IngressRule {
            to_ports,
            icmps,
            ..IngressRule::default()
        };
        match peers {
            Peers::None => {}
            Peers::Endpoints(s) => rule.from_endpoints = s,
            Peers::Entities(e) => rule.from_entities = e,
            Peers::Cidrs(c) => rule.from_cidr = c,
            Peers::CidrSets(c) => rule.from_cidr_set = c,
        }
        rule
    })
}

fn egress() -> impl Strategy<Value = EgressRule> {
    (peers(), l4()).prop_map(|(peers, (to_ports, icmps))| {
        let mut rule = EgressRule {
            to_ports,
            icmps,
            ..EgressRule::default()
        };
        match peers {
            Peers::None => {}
            Peers::Endpoints(s) => rule.to_endpoints = s,
            Peers::Entities(e) => rule.to_entities = e,
            Peers::Cidrs(c) => rule.to_cidr = c,
            Peers::CidrSets(c) => rule.to_cidr_set = c,
        }
        rule
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        selector(),
        prop::collection::vec(ingress(), 0..3),
        prop::collection::vec(egress(), 0..3),
        prop::collection::vec(ingress(), 0..2),
        prop::collection::vec(egress(), 0..2),
        prop::option::of((
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        )),
        prop::option::of("[ -~]{0,20}"),
    )
        .prop_filter(
            "a rule needs a section",
            |(_, ingress, egress, ingress_deny, egress_deny, _, _)| {
                !(ingress.is_empty()
                    && egress.is_empty()
                    && ingress_deny.is_empty()
                    && egress_deny.is_empty())
            },
        )
        .prop_map(
            |(endpoint_selector, ingress, egress, ingress_deny, egress_deny, deny, description)| {
                Rule {
                    endpoint_selector: Some(endpoint_selector),
                    ingress,
                    egress,
                    // Deny rules have the same peers but only ports.
                    ingress_deny: ingress_deny
                        .into_iter()
                        .map(|r| IngressDenyRule {
                            from_endpoints: r.from_endpoints,
                            from_entities: r.from_entities,
                            from_cidr: r.from_cidr,
                            from_cidr_set: r.from_cidr_set,
                            to_ports: r
                                .to_ports
                                .into_iter()
                                .map(|p| PortDenyRule { ports: p.ports })
                                .collect(),
                            icmps: r.icmps,
                            ..IngressDenyRule::default()
                        })
                        .collect(),
                    egress_deny: egress_deny
                        .into_iter()
                        .map(|r| EgressDenyRule {
                            to_endpoints: r.to_endpoints,
                            to_entities: r.to_entities,
                            to_cidr: r.to_cidr,
                            to_cidr_set: r.to_cidr_set,
                            to_ports: r
                                .to_ports
                                .into_iter()
                                .map(|p| PortDenyRule { ports: p.ports })
                                .collect(),
                            icmps: r.icmps,
                            ..EgressDenyRule::default()
                        })
                        .collect(),
                    enable_default_deny: deny
                        .map(|(ingress, egress)| DefaultDenyConfig { ingress, egress }),
                    description,
                    ..Rule::default()
                }
            },
        )
}

fn policy() -> impl Strategy<Value = CiliumNetworkPolicy> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        prop::option::of("[a-z][a-z0-9]{0,8}"),
        prop::option::of(rule()),
        prop::collection::vec(rule(), 0..2),
    )
        .prop_filter("a policy needs a rule", |(_, _, spec, specs)| {
            spec.is_some() || !specs.is_empty()
        })
        .prop_map(|(name, namespace, spec, specs)| CiliumNetworkPolicy {
            api_version: "cilium.io/v2".to_owned(),
            kind: "CiliumNetworkPolicy".to_owned(),
            metadata: ObjectMeta {
                name: Some(name),
                namespace,
                uid: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec,
            specs,
            description: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(
        text in "(kind: (CiliumNetworkPolicy|NetworkPolicy|List)\n|spec:\n|  [a-zA-Z]{1,12}: |- |\\{|\\}|\\[|\\]|---\n|[a-z0-9./:]{0,6}|\n){0,40}"
    ) {
        exercise(&text);
    }

    #[test]
    fn mutated_documents_never_panic(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut text = VALID.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        exercise(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_policies_round_trip_through_yaml_and_json(policy in policy()) {
        let doc = PolicyDocument::Cnp(policy.clone());
        prop_assert_eq!(doc.validate(), Ok(()));
        prop_assert_eq!(doc.check_supported(), Ok(()));

        let yaml = serde_yaml_ng::to_string(&policy).expect("serialises");
        let parsed = parse_documents(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&parsed, &vec![doc.clone()]);

        let json = serde_json::to_string_pretty(&policy).expect("serialises");
        let parsed = parse_documents(&json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
        prop_assert_eq!(&parsed, &vec![doc.clone()]);

        // Scoping keeps every rule and never breaks validity.
        let rules = doc.to_rules().expect("valid");
        prop_assert_eq!(rules.len(), doc.rules().len());
        for rule in &rules {
            prop_assert_eq!(rule.validate(), Ok(()));
        }
    }
}
