//! The support check: every not-yet-enforced feature is refused with its path and name, and
//! everything the design lists as supported passes.

use model::policy::{Feature, PolicyError, parse_documents};

fn support_error(kind: &str, spec: &str) -> Option<PolicyError> {
    let text = format!("kind: {kind}\nmetadata: {{name: p}}\nspec: {spec}\n");
    let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{spec} is invalid: {e}"));
    docs.iter().find_map(|d| d.check_supported().err())
}

#[test]
fn every_unsupported_feature_is_named_with_its_path() {
    let cases: &[(&str, &str, Feature, &str)] = &[
        (
            "CiliumClusterwideNetworkPolicy",
            "{nodeSelector: {}, ingress: [{}]}",
            Feature::HostPolicy,
            "spec.nodeSelector",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]}]}",
            Feature::L7Http,
            "spec.ingress[0].toPorts[0].rules.http",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '9092', protocol: TCP}], rules: {kafka: [{topic: t}]}}]}]}",
            Feature::L7Kafka,
            "spec.ingress[0].toPorts[0].rules.kafka",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '53', protocol: ANY}], rules: {dns: [{matchPattern: '*'}]}}]}]}",
            Feature::L7Dns,
            "spec.egress[0].toPorts[0].rules.dns",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {l7proto: r2d2, l7: [{cmd: READ}]}}]}]}",
            Feature::L7Generic,
            "spec.egress[0].toPorts[0].rules.l7proto",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toFQDNs: [{matchName: cilium.io}]}]}",
            Feature::Fqdn,
            "spec.egress[0].toFQDNs",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toServices: [{k8sService: {serviceName: s}}]}]}",
            Feature::Services,
            "spec.egress[0].toServices",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egressDeny: [{toServices: [{}]}]}",
            Feature::Services,
            "spec.egressDeny[0].toServices",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingress: [{fromRequires: [{matchLabels: {env: prod}}]}]}",
            Feature::Requires,
            "spec.ingress[0].fromRequires",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toRequires: [{}]}]}",
            Feature::Requires,
            "spec.egress[0].toRequires",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingressDeny: [{fromNodes: [{}]}]}",
            Feature::Nodes,
            "spec.ingressDeny[0].fromNodes",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toGroups: [{aws: {region: eu}}]}]}",
            Feature::Groups,
            "spec.egress[0].toGroups",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toCIDRSet: [{cidrGroupRef: office}]}]}",
            Feature::CidrGroups,
            "spec.egress[0].toCIDRSet[0].cidrGroupRef",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingress: [{fromCIDRSet: [{cidrGroupSelector: {}}]}]}",
            Feature::CidrGroups,
            "spec.ingress[0].fromCIDRSet[0].cidrGroupSelector",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], listener: {name: l, envoyConfig: {name: c}}}]}]}",
            Feature::Listener,
            "spec.egress[0].toPorts[0].listener",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [a.example]}]}]}",
            Feature::ServerNames,
            "spec.egress[0].toPorts[0].serverNames",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '443', protocol: TCP}], originatingTLS: {secret: {name: s}}}]}]}",
            Feature::TlsContext,
            "spec.egress[0].toPorts[0].originatingTLS",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, ingress: [{fromEndpoints: [{}], authentication: {mode: required}}]}",
            Feature::Authentication,
            "spec.ingress[0].authentication",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egress: [{toEndpoints: [{}], auth: {type: spire}}]}",
            Feature::Authentication,
            "spec.egress[0].auth",
        ),
        (
            "CiliumNetworkPolicy",
            "{endpointSelector: {}, egressDeny: [{toPorts: [{ports: [{protocol: IGMP}]}]}]}",
            Feature::ExtendedIpProtocols,
            "spec.egressDeny[0].toPorts[0].ports[0].protocol",
        ),
    ];
    for (kind, spec, feature, path) in cases {
        let err = support_error(kind, spec).unwrap_or_else(|| panic!("{spec} was accepted"));
        match &err {
            PolicyError::Unsupported {
                path: p,
                feature: f,
            } => {
                assert_eq!((p.as_str(), f), (*path, feature), "{spec}");
            }
            other => panic!("{spec}: unexpected error {other}"),
        }
        assert!(err.is_unsupported());
        assert_eq!(
            err.to_string(),
            format!("{path}: {} are not supported", feature.description())
        );
    }
}

#[test]
fn the_message_names_the_feature_as_users_write_it() {
    let err = support_error(
        "CiliumNetworkPolicy",
        "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '9092', protocol: TCP}], rules: {kafka: [{role: consume}]}}]}]}",
    )
    .expect("kafka");
    assert_eq!(
        err.to_string(),
        "spec.ingress[0].toPorts[0].rules.kafka: L7 Kafka rules are not supported"
    );
}

#[test]
fn the_supported_language_passes() {
    let supported = [
        "{endpointSelector: {matchLabels: {app: a}, matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}, \
          ingress: [{fromEndpoints: [{matchLabels: {app: b}}], toPorts: [{ports: [{port: '80', protocol: TCP}, {port: http}]}]}, \
                    {fromEntities: [world, cluster, host, remote-node, health, init, unmanaged, kube-apiserver, all]}, \
                    {fromCIDR: [10.0.0.0/8]}, {fromCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]}, \
                    {icmps: [{fields: [{type: EchoRequest}]}]}], \
          ingressDeny: [{fromEntities: [world], toPorts: [{ports: [{port: '22', protocol: TCP}]}]}], \
          egress: [{toEndpoints: [{}], toPorts: [{ports: [{port: '1000', endPort: 2000, protocol: UDP}, {port: '0', protocol: SCTP}, {port: '5', protocol: ANY}]}]}, \
                   {toCIDR: [192.0.2.1]}, {toCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8::/64']}]}], \
          egressDeny: [{toEntities: [world-ipv4]}], \
          enableDefaultDeny: {ingress: false, egress: true}}",
        "{endpointSelector: {}, egress: [{}]}",
    ];
    for spec in supported {
        assert_eq!(support_error("CiliumNetworkPolicy", spec), None, "{spec}");
    }
}

#[test]
fn network_policies_are_supported() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: x}\n\
                spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: a}}\n    \
                - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports:\n    - port: 8080\n      endPort: 8090\n";
    let docs = parse_documents(text).expect("valid");
    assert_eq!(docs[0].check_supported(), Ok(()));
}
