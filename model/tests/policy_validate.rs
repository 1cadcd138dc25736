//! Validation: upstream's rule checks, each error naming the offending field.

use model::policy::{PolicyError, PortSpec, Rule, is_iana_service_name, parse_documents};

/// Parses a CiliumNetworkPolicy whose `spec` is `spec` (YAML flow or block) and returns the
/// error message, or `None` if it is accepted.
fn cnp_error(spec: &str) -> Option<String> {
    let text = format!("kind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n");
    parse_documents(&text).err().map(|e| e.to_string())
}

fn assert_invalid(spec: &str, expected: &str) {
    match cnp_error(spec) {
        Some(message) => assert!(message.contains(expected), "{spec}\n  got: {message}"),
        None => panic!("{spec} was accepted, expected {expected:?}"),
    }
}

fn assert_valid(spec: &str) {
    if let Some(message) = cnp_error(spec) {
        panic!("{spec} was refused: {message}");
    }
}

fn egress_port(port: &str) -> String {
    format!("{{endpointSelector: {{}}, egress: [{{toPorts: [{{ports: [{port}]}}]}}]}}")
}

#[test]
fn ports_are_numbers_or_service_names() {
    for ok in [
        "{port: '0'}",
        "{port: '80', protocol: TCP}",
        "{port: '65535', protocol: udp}",
        "{port: http, protocol: TCP}",
        "{port: HTTP-Alt}",
        "{port: '80', endPort: 90, protocol: SCTP}",
        "{port: '80', endPort: 0}",
        "{port: '8', protocol: ICMP}",
    ] {
        assert_valid(&egress_port(ok));
    }
    let path = "spec.egress[0].toPorts[0].ports[0]";
    for (bad, reason) in [
        (
            "{port: '65536'}",
            "\"65536\" is not a port number or a valid port name",
        ),
        ("{port: '-1'}", "\"-1\" is not a port number"),
        ("{port: 'a--b'}", "\"a--b\" is not a port number"),
        ("{port: '0080'}", "\"0080\" is not a port number"),
        (
            "{port: 'averyveryverylongname'}",
            "\"averyveryverylongname\" is not a port number",
        ),
        ("{port: '', protocol: TCP}", "a port must be given"),
        ("{protocol: TCP}", "a port must be given"),
    ] {
        assert_invalid(&egress_port(bad), &format!("{path}.port: {reason}"));
    }
    assert_invalid(
        &egress_port("{port: '90', endPort: 80}"),
        &format!("{path}.endPort: 80 must be between port 90 and 65535"),
    );
    assert_invalid(
        &egress_port("{port: '90', endPort: 70000}"),
        &format!("{path}.endPort: 70000 must be between"),
    );
    assert_invalid(
        &egress_port("{port: http, endPort: 90}"),
        &format!("{path}.endPort: endPort requires a numeric port"),
    );
    assert_invalid(
        &egress_port("{port: '112', protocol: VRRP}"),
        &format!("{path}.port: protocol VRRP has no ports"),
    );
    assert_valid(&egress_port("{protocol: VRRP}"));
}

#[test]
fn iana_service_names_follow_rfc_6335() {
    for name in ["http", "h2", "a-b-c", "HTTPS", "x1234567890abcd"] {
        assert!(is_iana_service_name(name), "{name}");
    }
    for name in [
        "",
        "80",
        "-http",
        "http-",
        "a--b",
        "a_b",
        "x1234567890abcde",
    ] {
        assert!(!is_iana_service_name(name), "{name}");
    }
    assert_eq!(PortSpec::parse("Http"), Some(PortSpec::Name("http".into())));
    assert_eq!(PortSpec::parse("443"), Some(PortSpec::Number(443)));
    assert_eq!(PortSpec::parse("0x50"), Some(PortSpec::Name("0x50".into())));
    assert_eq!(PortSpec::parse("65536"), None);
}

#[test]
fn too_many_ports_are_refused() {
    let ports: Vec<String> = (1..=41).map(|p| format!("{{port: '{p}'}}")).collect();
    assert_invalid(
        &egress_port(&ports.join(", ")),
        "spec.egress[0].toPorts[0].ports: too many ports (41), at most 40",
    );
}

#[test]
fn cidrs_parse_and_exceptions_lie_inside() {
    assert_valid(
        "{endpointSelector: {}, egress: [{toCIDR: [10.0.0.0/8, 192.0.2.1, '2001:db8::/32']}]}",
    );
    assert_valid(
        "{endpointSelector: {}, ingress: [{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]}",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDR: [10.0.0.0/33]}]}",
        "spec.egress[0].toCIDR[0]: \"10.0.0.0/33\" is not a CIDR prefix or an IP address",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.1}]}]}",
        "spec.egress[0].toCIDRSet[0].cidr: \"10.0.0.1\" is not a CIDR prefix",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]}",
        "spec.egress[0].toCIDRSet[0].except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/16, except: [10.0.0.0/8]}]}]}",
        "except[0]: 10.0.0.0/8 is not inside 10.0.0.0/16",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: ['::/0']}]}]}",
        "except[0]: ::/0 is not inside",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{except: [10.0.0.0/16]}]}]}",
        "spec.egress[0].toCIDRSet[0]: one of cidr, cidrGroupRef or cidrGroupSelector",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, cidrGroupRef: g}]}]}",
        "only one of cidr, cidrGroupRef or cidrGroupSelector",
    );
}

#[test]
fn a_rule_selects_endpoints_xor_nodes_and_has_a_section() {
    assert_invalid(
        "{ingress: [{}]}",
        "spec: a rule must have one of endpointSelector or nodeSelector",
    );
    let ccnp = "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\n\
                spec: {endpointSelector: {}, nodeSelector: {}, ingress: [{}]}\n";
    let err = parse_documents(ccnp).expect_err("both selectors");
    assert!(
        err.to_string()
            .contains("cannot have both endpointSelector and nodeSelector"),
        "{err}"
    );
    assert_invalid(
        "{endpointSelector: {}}",
        "spec: a rule must have at least one of ingress, ingressDeny, egress or egressDeny",
    );
    assert_invalid(
        "{nodeSelector: {}, ingress: [{}]}",
        "spec.nodeSelector: a CiliumNetworkPolicy cannot select nodes",
    );
}

#[test]
fn peer_kinds_are_not_combined_in_one_rule() {
    assert_invalid(
        "{endpointSelector: {}, ingress: [{fromEndpoints: [{}], fromEntities: [world]}]}",
        "spec.ingress[0]: combining fromEndpoints and fromEntities in one rule is not supported",
    );
    assert_invalid(
        "{endpointSelector: {}, egressDeny: [{toCIDR: [1.1.1.1], toEntities: [world]}]}",
        "spec.egressDeny[0]: combining toCIDR and toEntities",
    );
}

#[test]
fn icmp_types_are_numbers_or_names_of_their_family() {
    let icmp = |fields: &str| {
        format!("{{endpointSelector: {{}}, egress: [{{icmps: [{{fields: [{fields}]}}]}}]}}")
    };
    assert_valid(&icmp(
        "{type: 8}, {type: EchoRequest, family: IPv4}, {type: '128', family: IPv6}",
    ));
    assert_valid(&icmp("{type: NeighborSolicitation, family: IPv6}"));
    assert_invalid(
        &icmp("{type: NeighborSolicitation}"),
        "spec.egress[0].icmps[0].fields[0].type: \"NeighborSolicitation\" is not an IPv4 ICMP type",
    );
    assert_invalid(
        &icmp("{type: 256}"),
        "fields[0].type: \"256\" is not an IPv4 ICMP type",
    );
    assert_invalid(
        &icmp("{type: 8, family: IPv5}"),
        "fields[0].family: unknown variant `IPv5`",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: '80'}]}]}]}",
        "spec.egress[0].icmps: icmps may only be present without toPorts",
    );
}

#[test]
fn metadata_names_are_required_and_checked() {
    let doc = |meta: &str, kind: &str| {
        let text = format!(
            "kind: {kind}\nmetadata: {meta}\nspec: {{endpointSelector: {{}}, ingress: [{{}}]}}\n"
        );
        parse_documents(&text).err().map(|e| e.to_string())
    };
    let err = doc("{}", "CiliumNetworkPolicy").expect("no name");
    assert!(
        err.contains("metadata.name: a CiliumNetworkPolicy must have a name"),
        "{err}"
    );
    let err = doc("{name: Bad_Name}", "CiliumNetworkPolicy").expect("bad name");
    assert!(
        err.contains("metadata.name: \"Bad_Name\" is not a valid name"),
        "{err}"
    );
    let err = doc("{name: ok, namespace: a.b}", "CiliumNetworkPolicy").expect("bad namespace");
    assert!(
        err.contains("metadata.namespace: \"a.b\" is not a valid namespace"),
        "{err}"
    );
    let err = doc(
        "{name: ok, namespace: team}",
        "CiliumClusterwideNetworkPolicy",
    )
    .expect("namespaced CCNP");
    assert!(
        err.contains("metadata.namespace: a CiliumClusterwideNetworkPolicy is cluster-scoped"),
        "{err}"
    );
    assert_eq!(
        doc("{name: a.b-c, namespace: team}", "CiliumNetworkPolicy"),
        None
    );

    let empty =
        parse_documents("kind: CiliumNetworkPolicy\nmetadata: {name: e}\n").expect_err("no rule");
    assert!(
        empty
            .to_string()
            .contains("spec: a CiliumNetworkPolicy must have a rule"),
        "{empty}"
    );
}

#[test]
fn selectors_are_validated_where_they_sit() {
    let err = cnp_error(
        "{endpointSelector: {matchExpressions: [{key: app, operator: In}]}, ingress: [{}]}",
    )
    .expect("In without values");
    assert!(
        err.contains(
            "spec.endpointSelector.matchExpressions[0].values: operator In needs at least one value"
        ),
        "{err}"
    );
    let err = cnp_error(
        "{endpointSelector: {}, ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: Exists, values: [x]}]}]}]}",
    )
    .expect("Exists with values");
    assert!(
        err.contains("spec.ingress[0].fromEndpoints[0].matchExpressions[0]"),
        "{err}"
    );
}

#[test]
fn l7_rules_follow_upstream_constraints() {
    let l7 = |ports: &str, rules: &str| {
        format!(
            "{{endpointSelector: {{}}, egress: [{{toPorts: [{{ports: [{ports}], rules: {rules}}}]}}]}}"
        )
    };
    assert_valid(&l7(
        "{port: '80', protocol: TCP}",
        "{http: [{method: GET}]}",
    ));
    assert_invalid(
        &l7("{port: '80'}", "{http: [{method: GET}]}"),
        "ports[0].protocol: L7 rules apply only to TCP (not ANY)",
    );
    assert_invalid(
        &l7("{port: '0', protocol: TCP}", "{http: [{}]}"),
        "ports[0].port: L7 rules cannot be used with port 0",
    );
    assert_invalid(
        &l7(
            "{port: '80', protocol: TCP}",
            "{http: [{}], kafka: [{topic: t}]}",
        ),
        "rules: only one kind of L7 rules",
    );
    assert_invalid(
        &l7(
            "{port: '53', endPort: 60, protocol: UDP}",
            "{dns: [{matchPattern: '*'}]}",
        ),
        "endPort: DNS rules do not support port ranges",
    );
    assert_invalid(
        &l7(
            "{port: '53', protocol: UDP}",
            "{dns: [{matchName: a, matchPattern: b}]}",
        ),
        "rules.dns[0]: exactly one of matchName or matchPattern",
    );
    assert_invalid(
        &l7("{port: '80', protocol: TCP}", "{l7: [{a: b}]}"),
        "rules.l7: l7 may only be given together with l7proto",
    );
    assert_invalid(
        "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchName: a.b}]}}]}]}",
        "spec.ingress[0].toPorts[0].rules.dns: DNS rules are not allowed on ingress",
    );
    assert_invalid(
        "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], listener: {name: l, envoyConfig: {name: c}}}]}]}",
        "listener: a listener is not allowed on ingress",
    );
    assert_invalid(
        "{endpointSelector: {}, egress: [{toFQDNs: [{matchName: 'bad name'}]}]}",
        "spec.egress[0].toFQDNs[0].matchName: \"bad name\" contains ' '",
    );
}

#[test]
fn rule_validate_reports_paths_relative_to_the_rule() {
    let rule: Rule = serde_json::from_str(
        r#"{"endpointSelector":{},"egress":[{"toPorts":[{"ports":[{"port":"nope nope"}]}]}]}"#,
    )
    .expect("shape is fine");
    let err = rule.validate().expect_err("bad port");
    assert!(
        matches!(&err, PolicyError::Invalid { path, .. } if path == "egress[0].toPorts[0].ports[0].port"),
        "{err:?}"
    );
}
