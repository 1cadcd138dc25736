//! `hubble::filter`: every supported field alone, combinations, whitelist/blacklist semantics
//! and every kind of invalid input, against upstream Hubble's filter semantics.

use hubble::filter::{FilterError, FlowFilters};
use proptest::prelude::*;
use proto::flow::{
    CiliumEventType, DropReason, Endpoint, EventTypeFilter, Flow, FlowFilter, HttpHeader, IcmPv4,
    IcmPv6, Ip, IpVersion, Layer4, Layer7, Sctp, Tcp, TcpFlags, TrafficDirection, Udp, Verdict,
    Workload, flow_filter, layer4, layer7,
};

fn endpoint(namespace: &str, pod: &str, identity: u32, labels: &[&str]) -> Endpoint {
    Endpoint {
        namespace: namespace.to_owned(),
        pod_name: pod.to_owned(),
        identity,
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..Endpoint::default()
    }
}

fn tcp(source_port: u32, destination_port: u32, flags: TcpFlags) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port,
            destination_port,
            flags: Some(flags),
        })),
    })
}

fn syn() -> TcpFlags {
    TcpFlags {
        syn: true,
        ..TcpFlags::default()
    }
}

/// A forwarded TCP flow default/client-1 (10.0.0.1:41234, id 1234) -> prod/echo-abc
/// (10.0.1.5:8080, id 5678), SYN, on node `kind-worker`.
fn flow() -> Flow {
    let mut flow = Flow {
        ip: Some(Ip {
            source: "10.0.0.1".to_owned(),
            destination: "10.0.1.5".to_owned(),
            ip_version: IpVersion::IPv4 as i32,
            ..Ip::default()
        }),
        l4: tcp(41234, 8080, syn()),
        source: Some(endpoint(
            "default",
            "client-1",
            1234,
            &["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
        )),
        destination: Some(endpoint(
            "prod",
            "echo-abc",
            5678,
            &["k8s:app=echo", "k8s:tier=backend", "k8s:replicas=3"],
        )),
        node_name: "kind-worker".to_owned(),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        }),
        is_reply: Some(false),
        source_names: vec!["client.example.com".to_owned()],
        destination_names: vec!["api.cilium.io".to_owned()],
        ..Flow::default()
    };
    flow.set_verdict(Verdict::Forwarded);
    flow.set_traffic_direction(TrafficDirection::Egress);
    flow
}

fn dropped() -> Flow {
    let mut flow = flow();
    flow.set_verdict(Verdict::Dropped);
    flow.set_drop_reason_desc(DropReason::PolicyDenied);
    flow.drop_reason = 133;
    flow
}

fn compile(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> FlowFilters {
    match FlowFilters::compile(whitelist, blacklist) {
        Ok(filters) => filters,
        Err(error) => panic!("filters {whitelist:?} / {blacklist:?} failed to compile: {error}"),
    }
}

fn whitelist(filter: FlowFilter) -> FlowFilters {
    compile(&[filter], &[])
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// Asserts that the filter keeps `yes` and drops `no`, both as a whitelist and, inverted, as a
/// blacklist.
#[track_caller]
fn check(filter: FlowFilter, yes: &Flow, no: &Flow) {
    let white = whitelist(filter.clone());
    assert!(white.matches(yes), "{filter:?} should match {yes:?}");
    assert!(!white.matches(no), "{filter:?} should not match {no:?}");
    let black = compile(&[], std::slice::from_ref(&filter));
    assert!(
        !black.matches(yes),
        "blacklist {filter:?} should drop {yes:?}"
    );
    assert!(black.matches(no), "blacklist {filter:?} should keep {no:?}");
}

#[track_caller]
fn invalid(filter: FlowFilter) -> FilterError {
    match FlowFilters::compile(std::slice::from_ref(&filter), &[]) {
        Ok(_) => panic!("{filter:?} compiled but is invalid"),
        Err(error) => {
            // The same error from the blacklist side.
            let black = FlowFilters::compile(&[], &[filter]).err();
            assert_eq!(black.as_ref(), Some(&error));
            error
        }
    }
}

/// Asserts the gRPC form: InvalidArgument, and a message naming the field and the value.
#[track_caller]
fn assert_invalid_argument(error: FilterError, field: &str, value: &str) {
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains(field),
        "message {:?} should name field {field}",
        status.message()
    );
    assert!(
        status.message().contains(value),
        "message {:?} should contain value {value}",
        status.message()
    );
}

// ---- every field alone ----

#[test]
fn source_ip_exact_and_cidr() {
    let mut other = flow();
    other.ip.as_mut().unwrap().source = "192.168.1.1".to_owned();
    for value in ["10.0.0.1", "10.0.0.0/24", "10.0.0.1/32", "10.0.0.200/8"] {
        check(
            FlowFilter {
                source_ip: strings(&[value]),
                ..FlowFilter::default()
            },
            &flow(),
            &other,
        );
    }
}

#[test]
fn destination_ip_exact_cidr_and_ipv6() {
    let mut other = flow();
    other.ip.as_mut().unwrap().destination = "10.0.2.5".to_owned();
    check(
        FlowFilter {
            destination_ip: strings(&["10.0.1.0/24"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    let mut v6 = flow();
    v6.ip.as_mut().unwrap().destination = "fd00::1:5".to_owned();
    // Exact IPv6 matching compares addresses, not spellings.
    check(
        FlowFilter {
            destination_ip: strings(&["fd00:0::1:5"]),
            ..FlowFilter::default()
        },
        &v6,
        &flow(),
    );
    check(
        FlowFilter {
            destination_ip: strings(&["fd00::/64"]),
            ..FlowFilter::default()
        },
        &v6,
        &flow(),
    );
}

#[test]
fn ip_filter_never_matches_a_flow_without_ip() {
    let mut no_ip = flow();
    no_ip.ip = None;
    check(
        FlowFilter {
            source_ip: strings(&["0.0.0.0/0"]),
            ..FlowFilter::default()
        },
        &flow(),
        &no_ip,
    );
}

#[test]
fn source_ip_xlated() {
    let mut snat = flow();
    snat.ip.as_mut().unwrap().source_xlated = "172.18.0.2".to_owned();
    check(
        FlowFilter {
            source_ip_xlated: strings(&["172.18.0.0/16"]),
            ..FlowFilter::default()
        },
        &snat,
        &flow(),
    );
}

#[test]
fn source_pod_prefix_and_namespace() {
    let mut other = flow();
    other.source = Some(endpoint("default", "server-1", 1, &[]));
    check(
        FlowFilter {
            source_pod: strings(&["default/client"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    // Without a namespace the pod is looked up in "default".
    check(
        FlowFilter {
            source_pod: strings(&["client-"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    let mut elsewhere = flow();
    elsewhere.source = Some(endpoint("kube-system", "client-1", 1, &[]));
    check(
        FlowFilter {
            source_pod: strings(&["default/"]),
            ..FlowFilter::default()
        },
        &flow(),
        &elsewhere,
    );
}

#[test]
fn destination_pod_and_the_namespace_convenience() {
    let mut other = flow();
    other.destination = Some(endpoint("default", "echo-abc", 1, &[]));
    check(
        FlowFilter {
            destination_pod: strings(&["prod/echo"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    // `hubble observe --namespace prod`: source_pod "prod/" OR destination_pod "prod/".
    let namespace = compile(
        &[
            FlowFilter {
                source_pod: strings(&["prod/"]),
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_pod: strings(&["prod/"]),
                ..FlowFilter::default()
            },
        ],
        &[],
    );
    assert!(namespace.matches(&flow()));
    assert!(!namespace.matches(&other));
}

#[test]
fn pod_filter_skips_endpoints_without_namespace_and_name() {
    let mut unnamed = flow();
    unnamed.destination = Some(endpoint("", "", 2, &["reserved:world"]));
    check(
        FlowFilter {
            destination_pod: strings(&["prod/"]),
            ..FlowFilter::default()
        },
        &flow(),
        &unnamed,
    );
}

#[test]
fn source_label_forms() {
    let mut other = flow();
    other.source = Some(endpoint(
        "default",
        "x",
        1,
        &["k8s:app=other", "container:tier=web"],
    ));
    for selector in [
        "k8s:app=client",
        "app=client",
        "app==client",
        "any:app=client",
        "app in (client, server)",
        "app notin (other)",
        "k8s:io.kubernetes.pod.namespace",
        "!tier",
        "k8s:app=client, k8s:io.kubernetes.pod.namespace=default",
        "",
    ] {
        if selector.is_empty() {
            // The empty selector selects every endpoint, as a Kubernetes selector does.
            let all = whitelist(FlowFilter {
                source_label: strings(&[selector]),
                ..FlowFilter::default()
            });
            assert!(all.matches(&flow()) && all.matches(&other));
            continue;
        }
        check(
            FlowFilter {
                source_label: strings(&[selector]),
                ..FlowFilter::default()
            },
            &flow(),
            &other,
        );
    }
}

#[test]
fn label_source_must_match_when_given() {
    let mut container = flow();
    container.source = Some(endpoint("default", "x", 1, &["container:app=client"]));
    check(
        FlowFilter {
            source_label: strings(&["k8s:app=client"]),
            ..FlowFilter::default()
        },
        &flow(),
        &container,
    );
}

#[test]
fn destination_label_inequalities() {
    let mut other = flow();
    other.destination = Some(endpoint(
        "prod",
        "echo",
        1,
        &["k8s:app=echo", "k8s:replicas=1"],
    ));
    for selector in ["replicas>2", "app=echo,replicas>1", "tier!=frontend, tier"] {
        check(
            FlowFilter {
                destination_label: strings(&[selector]),
                ..FlowFilter::default()
            },
            &flow(),
            &other,
        );
    }
    check(
        FlowFilter {
            destination_label: strings(&["replicas<2"]),
            ..FlowFilter::default()
        },
        &other,
        &flow(),
    );
    // `!=` holds when the key is absent.
    check(
        FlowFilter {
            destination_label: strings(&["tier!=backend"]),
            ..FlowFilter::default()
        },
        &other,
        &flow(),
    );
}

#[test]
fn labels_of_a_missing_endpoint() {
    let mut anonymous = flow();
    anonymous.source = None;
    check(
        FlowFilter {
            source_label: strings(&["app"]),
            ..FlowFilter::default()
        },
        &flow(),
        &anonymous,
    );
}

#[test]
fn reserved_labels() {
    let mut world = flow();
    world.destination = Some(endpoint("", "", 2, &["reserved:world"]));
    check(
        FlowFilter {
            destination_label: strings(&["reserved:world"]),
            ..FlowFilter::default()
        },
        &world,
        &flow(),
    );
}

#[test]
fn identities() {
    let mut other = flow();
    other.source.as_mut().unwrap().identity = 2;
    other.destination.as_mut().unwrap().identity = 2;
    check(
        FlowFilter {
            source_identity: vec![7, 1234],
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    check(
        FlowFilter {
            destination_identity: vec![5678],
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
}

#[test]
fn verdict() {
    check(
        FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..FlowFilter::default()
        },
        &dropped(),
        &flow(),
    );
    check(
        FlowFilter {
            verdict: vec![Verdict::Audit as i32, Verdict::Forwarded as i32],
            ..FlowFilter::default()
        },
        &flow(),
        &dropped(),
    );
}

#[test]
fn drop_reason_desc_needs_a_drop() {
    let mut other_reason = dropped();
    other_reason.set_drop_reason_desc(DropReason::ServiceBackendNotFound);
    let filter = FlowFilter {
        drop_reason_desc: vec![DropReason::PolicyDenied as i32],
        ..FlowFilter::default()
    };
    check(filter.clone(), &dropped(), &other_reason);
    // A forwarded flow with a stale reason is not a drop.
    let mut forwarded = flow();
    forwarded.set_drop_reason_desc(DropReason::PolicyDenied);
    check(filter, &dropped(), &forwarded);
}

#[test]
fn event_type_and_sub_type() {
    let mut drop_event = flow();
    drop_event.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 133,
    });
    check(
        FlowFilter {
            event_type: vec![EventTypeFilter {
                r#type: 4,
                ..EventTypeFilter::default()
            }],
            ..FlowFilter::default()
        },
        &flow(),
        &drop_event,
    );
    // Sub type 0 is meaningful once match_sub_type is set.
    check(
        FlowFilter {
            event_type: vec![EventTypeFilter {
                r#type: 0,
                match_sub_type: true,
                sub_type: 0,
            }],
            ..FlowFilter::default()
        },
        &flow(),
        &drop_event,
    );
    let mut no_event = flow();
    no_event.event_type = None;
    check(
        FlowFilter {
            event_type: vec![EventTypeFilter::default()],
            ..FlowFilter::default()
        },
        &flow(),
        &no_event,
    );
}

#[test]
fn protocols_case_insensitive() {
    let udp = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 5353,
                destination_port: 53,
            })),
        }),
        ..flow()
    };
    let icmp4 = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })),
        }),
        ..flow()
    };
    let icmp6 = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::IcmPv6(IcmPv6 {
                r#type: 128,
                code: 0,
            })),
        }),
        ..flow()
    };
    let sctp = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Sctp(Sctp {
                source_port: 1,
                destination_port: 2,
            })),
        }),
        ..flow()
    };
    let dns = Flow {
        l7: Some(Layer7 {
            record: Some(layer7::Record::Dns(Default::default())),
            ..Layer7::default()
        }),
        ..udp.clone()
    };
    let proto = |p: &str| FlowFilter {
        protocol: strings(&[p]),
        ..FlowFilter::default()
    };
    check(proto("TCP"), &flow(), &udp);
    check(proto("udp"), &udp, &flow());
    check(proto("Sctp"), &sctp, &flow());
    check(proto("icmpv4"), &icmp4, &icmp6);
    check(proto("ICMPv6"), &icmp6, &icmp4);
    check(proto("dns"), &dns, &udp);
    for yes in [&icmp4, &icmp6] {
        check(proto("icmp"), yes, &flow());
    }
    let either = whitelist(FlowFilter {
        protocol: strings(&["udp", "icmp"]),
        ..FlowFilter::default()
    });
    assert!(either.matches(&udp) && either.matches(&icmp6) && !either.matches(&flow()));
}

#[test]
fn ports() {
    let mut other = flow();
    other.l4 = tcp(1, 2, syn());
    check(
        FlowFilter {
            source_port: strings(&["41234"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    check(
        FlowFilter {
            destination_port: strings(&["80", "8080"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    let icmp = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::IcmPv4(IcmPv4::default())),
        }),
        ..flow()
    };
    // ICMP has no ports, not even port 0.
    let mut port_zero = flow();
    port_zero.l4 = tcp(0, 0, syn());
    check(
        FlowFilter {
            destination_port: strings(&["0"]),
            ..FlowFilter::default()
        },
        &port_zero,
        &icmp,
    );
}

#[test]
fn reply() {
    let mut reply = flow();
    reply.is_reply = Some(true);
    check(
        FlowFilter {
            reply: vec![true],
            ..FlowFilter::default()
        },
        &reply,
        &flow(),
    );
    check(
        FlowFilter {
            reply: vec![false],
            ..FlowFilter::default()
        },
        &flow(),
        &reply,
    );
    // Unknown direction: a forwarded flow matches neither; a drop counts as not a reply.
    let mut unknown = flow();
    unknown.is_reply = None;
    let mut unknown_drop = dropped();
    unknown_drop.is_reply = None;
    for wanted in [true, false] {
        assert!(
            !whitelist(FlowFilter {
                reply: vec![wanted],
                ..FlowFilter::default()
            })
            .matches(&unknown)
        );
    }
    check(
        FlowFilter {
            reply: vec![false],
            ..FlowFilter::default()
        },
        &unknown_drop,
        &unknown,
    );
}

#[test]
fn node_name_globs() {
    let mut other = flow();
    other.node_name = "cluster2/kind-control-plane".to_owned();
    let node = |pattern: &str| FlowFilter {
        node_name: strings(&[pattern]),
        ..FlowFilter::default()
    };
    check(node("kind-worker"), &flow(), &other);
    check(node("kind-w*"), &flow(), &other);
    check(node("default/kind-*er"), &flow(), &other);
    check(node("Default/KIND-worker."), &flow(), &other);
    check(node("cluster2/"), &other, &flow());
    check(node("/kind-control-*"), &other, &flow());
    check(node("*2/*"), &other, &flow());
    let mut nameless = flow();
    nameless.node_name.clear();
    check(node("*"), &flow(), &nameless);
}

#[test]
fn traffic_direction_and_ip_version() {
    let mut ingress = flow();
    ingress.set_traffic_direction(TrafficDirection::Ingress);
    check(
        FlowFilter {
            traffic_direction: vec![TrafficDirection::Egress as i32],
            ..FlowFilter::default()
        },
        &flow(),
        &ingress,
    );
    let mut v6 = flow();
    v6.ip.as_mut().unwrap().ip_version = IpVersion::IPv6 as i32;
    check(
        FlowFilter {
            ip_version: vec![IpVersion::IPv6 as i32],
            ..FlowFilter::default()
        },
        &v6,
        &flow(),
    );
}

#[test]
fn tcp_flags_subset() {
    let mut syn_ack = flow();
    syn_ack.l4 = tcp(
        41234,
        8080,
        TcpFlags {
            syn: true,
            ack: true,
            ..TcpFlags::default()
        },
    );
    let mut fin = flow();
    fin.l4 = tcp(
        41234,
        8080,
        TcpFlags {
            fin: true,
            ..TcpFlags::default()
        },
    );
    let ack_only = TcpFlags {
        ack: true,
        ..TcpFlags::default()
    };
    let syn_ack_flags = TcpFlags {
        syn: true,
        ack: true,
        ..TcpFlags::default()
    };
    check(
        FlowFilter {
            tcp_flags: vec![syn()],
            ..FlowFilter::default()
        },
        &syn_ack,
        &fin,
    );
    // Every flag of one entry must be present: SYN alone lacks ACK.
    check(
        FlowFilter {
            tcp_flags: vec![syn_ack_flags],
            ..FlowFilter::default()
        },
        &syn_ack,
        &flow(),
    );
    // Entries are alternatives.
    let either = whitelist(FlowFilter {
        tcp_flags: vec![
            ack_only,
            TcpFlags {
                fin: true,
                ..TcpFlags::default()
            },
        ],
        ..FlowFilter::default()
    });
    assert!(either.matches(&syn_ack) && either.matches(&fin) && !either.matches(&flow()));
    let udp = Flow {
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp::default())),
        }),
        ..flow()
    };
    check(
        FlowFilter {
            tcp_flags: vec![TcpFlags::default()],
            ..FlowFilter::default()
        },
        &flow(),
        &udp,
    );
}

#[test]
fn fqdns() {
    let mut other = flow();
    other.destination_names = vec!["example.org".to_owned()];
    other.source_names.clear();
    check(
        FlowFilter {
            destination_fqdn: strings(&["*.cilium.io"]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
    check(
        FlowFilter {
            source_fqdn: strings(&["Client.Example.COM."]),
            ..FlowFilter::default()
        },
        &flow(),
        &other,
    );
}

// ---- combinations ----

#[test]
fn fields_of_one_filter_are_anded() {
    let filter = FlowFilter {
        source_pod: strings(&["default/client"]),
        destination_port: strings(&["8080"]),
        verdict: vec![Verdict::Forwarded as i32],
        ..FlowFilter::default()
    };
    let white = whitelist(filter);
    assert!(white.matches(&flow()));
    assert!(!white.matches(&dropped()), "verdict differs");
    let mut other_port = flow();
    other_port.l4 = tcp(41234, 9090, syn());
    assert!(!white.matches(&other_port), "port differs");
    let mut other_pod = flow();
    other_pod.source = Some(endpoint("default", "server", 1, &[]));
    assert!(!white.matches(&other_pod), "pod differs");
}

#[test]
fn filters_of_one_list_are_ored() {
    let filters = compile(
        &[
            FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_port: strings(&["8080"]),
                ..FlowFilter::default()
            },
        ],
        &[],
    );
    assert!(filters.matches(&flow()), "second filter");
    let mut dropped_elsewhere = dropped();
    dropped_elsewhere.l4 = tcp(1, 9, syn());
    assert!(filters.matches(&dropped_elsewhere), "first filter");
    let mut neither = flow();
    neither.l4 = tcp(1, 9, syn());
    assert!(!filters.matches(&neither));
}

#[test]
fn whitelist_and_blacklist() {
    let filters = compile(
        &[FlowFilter {
            source_pod: strings(&["default/"]),
            ..FlowFilter::default()
        }],
        &[FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..FlowFilter::default()
        }],
    );
    assert!(filters.matches(&flow()));
    assert!(!filters.matches(&dropped()), "blacklisted");
    let mut outside = flow();
    outside.source = Some(endpoint("kube-system", "coredns", 1, &[]));
    assert!(!filters.matches(&outside), "not whitelisted");

    // Any one blacklist filter excludes.
    let blacklist = compile(
        &[],
        &[
            FlowFilter {
                destination_port: strings(&["53"]),
                ..FlowFilter::default()
            },
            FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..FlowFilter::default()
            },
        ],
    );
    assert!(blacklist.matches(&flow()));
    assert!(!blacklist.matches(&dropped()));
}

#[test]
fn empty_lists_and_empty_filters() {
    let all = compile(&[], &[]);
    assert!(all.matches(&flow()) && all.matches(&Flow::default()));
    assert!(FlowFilters::default().matches(&dropped()));
    // An empty FlowFilter has no conditions and so matches every flow, as upstream.
    let empty = whitelist(FlowFilter::default());
    assert!(empty.matches(&flow()) && empty.matches(&Flow::default()));
    let nothing = compile(&[], &[FlowFilter::default()]);
    assert!(!nothing.matches(&flow()));
    // An empty experimental block is no CEL filter.
    let experimental = FlowFilter {
        experimental: Some(flow_filter::Experimental::default()),
        ..FlowFilter::default()
    };
    assert!(whitelist(experimental).matches(&flow()));
}

// ---- invalid input ----

#[test]
fn invalid_ips() {
    for (field, value) in [
        ("source_ip", "10.0.0.256"),
        ("source_ip", "10.0.0.0/33"),
        ("source_ip", "not-an-ip"),
        ("destination_ip", "fd00::/129"),
        ("destination_ip", ""),
        ("source_ip_xlated", "1.2.3/8"),
    ] {
        let mut filter = FlowFilter::default();
        match field {
            "source_ip" => filter.source_ip = strings(&[value]),
            "destination_ip" => filter.destination_ip = strings(&[value]),
            _ => filter.source_ip_xlated = strings(&[value]),
        }
        let error = invalid(filter);
        assert!(matches!(error, FilterError::InvalidIp { field: f, .. } if f == field));
        assert_invalid_argument(error, field, value);
    }
}

#[test]
fn invalid_ports() {
    for value in ["65536", "-1", "+80", " 80", "", "http", "8080a"] {
        let error = invalid(FlowFilter {
            destination_port: strings(&["80", value]),
            ..FlowFilter::default()
        });
        assert_eq!(
            error,
            FilterError::InvalidPort {
                field: "destination_port",
                value: value.to_owned()
            }
        );
        assert_invalid_argument(error, "destination_port", value);
    }
    let error = invalid(FlowFilter {
        source_port: strings(&["99999"]),
        ..FlowFilter::default()
    });
    assert_invalid_argument(error, "source_port", "99999");
}

#[test]
fn invalid_pods() {
    for value in ["", "/", "a/b/c"] {
        let error = invalid(FlowFilter {
            source_pod: strings(&[value]),
            ..FlowFilter::default()
        });
        assert!(matches!(
            error,
            FilterError::InvalidPod {
                field: "source_pod",
                ..
            }
        ));
        assert_invalid_argument(error, "source_pod", value);
    }
}

#[test]
fn invalid_label_selectors() {
    for value in [
        "app in ()",
        "app in (a",
        "app in a",
        "app=",
        "app=a b",
        "=foo",
        "app=foo,",
        "!",
        "K8S:app=foo",
        ":app",
        "app=-bad-",
        "bad key=1",
        "app>x",
        "app==(x)",
        "toolong/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        if value == "app=" {
            // `app=` is the empty value, which is valid; it guards the loop against typos.
            assert!(
                FlowFilters::compile(
                    &[FlowFilter {
                        source_label: strings(&[value]),
                        ..FlowFilter::default()
                    }],
                    &[]
                )
                .is_ok()
            );
            continue;
        }
        let error = invalid(FlowFilter {
            destination_label: strings(&[value]),
            ..FlowFilter::default()
        });
        assert!(
            matches!(
                error,
                FilterError::InvalidLabelSelector {
                    field: "destination_label",
                    ..
                }
            ),
            "{value:?}: {error:?}"
        );
        assert_invalid_argument(error, "destination_label", value);
    }
}

#[test]
fn invalid_node_names_and_fqdns() {
    for value in ["", "a/b/c", "node..", "no de", "node?", "ün"] {
        let error = invalid(FlowFilter {
            node_name: strings(&[value]),
            ..FlowFilter::default()
        });
        assert!(matches!(
            error,
            FilterError::InvalidPattern {
                field: "node_name",
                ..
            }
        ));
        assert_invalid_argument(error, "node_name", value);
    }
    for value in ["", "a b.com", "*.example.com..", "x/y"] {
        let error = invalid(FlowFilter {
            source_fqdn: strings(&[value]),
            ..FlowFilter::default()
        });
        assert!(matches!(
            error,
            FilterError::InvalidPattern {
                field: "source_fqdn",
                ..
            }
        ));
        assert_invalid_argument(error, "source_fqdn", value);
    }
}

#[test]
fn unknown_protocol() {
    for value in ["tcp6", "", "ip"] {
        let error = invalid(FlowFilter {
            protocol: strings(&["tcp", value]),
            ..FlowFilter::default()
        });
        assert_eq!(
            error,
            FilterError::UnknownProtocol {
                value: value.to_owned()
            }
        );
        assert_invalid_argument(error, "protocol", value);
    }
}

#[test]
fn unknown_enum_values() {
    let cases = [
        (
            ("verdict", "99"),
            FlowFilter {
                verdict: vec![99],
                ..FlowFilter::default()
            },
        ),
        (
            ("drop_reason_desc", "1"),
            FlowFilter {
                drop_reason_desc: vec![1],
                ..FlowFilter::default()
            },
        ),
        (
            ("traffic_direction", "7"),
            FlowFilter {
                traffic_direction: vec![7],
                ..FlowFilter::default()
            },
        ),
        (
            ("ip_version", "-1"),
            FlowFilter {
                ip_version: vec![-1],
                ..FlowFilter::default()
            },
        ),
    ];
    for ((field, value), filter) in cases {
        let error = invalid(filter);
        assert!(matches!(error, FilterError::UnknownEnumValue { field: f, .. } if f == field));
        assert_invalid_argument(error, field, value);
    }
}

#[test]
fn unsupported_fields_are_rejected_not_ignored() {
    let s = |v: &str| vec![v.to_owned()];
    let cases = [
        (
            "uuid",
            FlowFilter {
                uuid: s("x"),
                ..FlowFilter::default()
            },
        ),
        (
            "source_service",
            FlowFilter {
                source_service: s("default/svc"),
                ..FlowFilter::default()
            },
        ),
        (
            "destination_service",
            FlowFilter {
                destination_service: s("svc"),
                ..FlowFilter::default()
            },
        ),
        (
            "source_workload",
            FlowFilter {
                source_workload: vec![Workload::default()],
                ..FlowFilter::default()
            },
        ),
        (
            "destination_workload",
            FlowFilter {
                destination_workload: vec![Workload::default()],
                ..FlowFilter::default()
            },
        ),
        (
            "source_cluster_name",
            FlowFilter {
                source_cluster_name: s("c1"),
                ..FlowFilter::default()
            },
        ),
        (
            "destination_cluster_name",
            FlowFilter {
                destination_cluster_name: s("c1"),
                ..FlowFilter::default()
            },
        ),
        (
            "interface",
            FlowFilter {
                interface: vec![Default::default()],
                ..FlowFilter::default()
            },
        ),
        (
            "http_status_code",
            FlowFilter {
                http_status_code: s("404"),
                ..FlowFilter::default()
            },
        ),
        (
            "http_method",
            FlowFilter {
                http_method: s("GET"),
                ..FlowFilter::default()
            },
        ),
        (
            "http_path",
            FlowFilter {
                http_path: s("/"),
                ..FlowFilter::default()
            },
        ),
        (
            "http_url",
            FlowFilter {
                http_url: s("/"),
                ..FlowFilter::default()
            },
        ),
        (
            "http_header",
            FlowFilter {
                http_header: vec![HttpHeader::default()],
                ..FlowFilter::default()
            },
        ),
        (
            "dns_query",
            FlowFilter {
                dns_query: s(".*"),
                ..FlowFilter::default()
            },
        ),
        (
            "node_labels",
            FlowFilter {
                node_labels: s("a=b"),
                ..FlowFilter::default()
            },
        ),
        (
            "trace_id",
            FlowFilter {
                trace_id: s("abc"),
                ..FlowFilter::default()
            },
        ),
        (
            "cel_expression",
            FlowFilter {
                experimental: Some(flow_filter::Experimental {
                    cel_expression: s("true"),
                }),
                ..FlowFilter::default()
            },
        ),
    ];
    for (field, mut filter) in cases {
        // Even next to a valid, supported field.
        filter.verdict = vec![Verdict::Forwarded as i32];
        let error = invalid(filter);
        assert!(
            matches!(error, FilterError::Unsupported { .. }),
            "{field}: {error:?}"
        );
        assert_invalid_argument(error, field, "not supported");
    }
}

#[test]
fn an_invalid_blacklist_fails_the_whole_request() {
    let result = FlowFilters::compile(
        &[FlowFilter::default()],
        &[FlowFilter {
            source_ip: strings(&["nope"]),
            ..FlowFilter::default()
        }],
    );
    assert!(matches!(
        result,
        Err(FilterError::InvalidIp {
            field: "source_ip",
            ..
        })
    ));
}

// ---- properties ----

proptest! {
    #[test]
    fn any_valid_port_matches_exactly_itself(port in any::<u16>(), other in any::<u16>()) {
        let filters = whitelist(FlowFilter {
            destination_port: vec![port.to_string()],
            ..FlowFilter::default()
        });
        let mut flow = flow();
        flow.l4 = tcp(1, u32::from(other), syn());
        prop_assert_eq!(filters.matches(&flow), port == other);
    }

    #[test]
    fn ports_above_u16_are_invalid(port in 65536u64..u64::MAX) {
        let result = FlowFilters::compile(&[FlowFilter {
            source_port: vec![port.to_string()],
            ..FlowFilter::default()
        }], &[]);
        prop_assert!(
            matches!(result, Err(FilterError::InvalidPort { field: "source_port", .. })),
            "port {} compiled", port
        );
    }

    #[test]
    fn ipv4_cidr_membership_matches_mask_arithmetic(
        network in any::<u32>(),
        prefix in 0u8..=32,
        address in any::<u32>(),
    ) {
        let cidr = format!("{}/{prefix}", std::net::Ipv4Addr::from(network));
        let filters = whitelist(FlowFilter {
            source_ip: vec![cidr],
            ..FlowFilter::default()
        });
        let mut flow = flow();
        flow.ip.as_mut().unwrap().source = std::net::Ipv4Addr::from(address).to_string();
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        prop_assert_eq!(filters.matches(&flow), network & mask == address & mask);
    }

    #[test]
    fn ipv6_cidr_membership_matches_mask_arithmetic(
        network in any::<u128>(),
        prefix in 0u8..=128,
        address in any::<u128>(),
    ) {
        let cidr = format!("{}/{prefix}", std::net::Ipv6Addr::from(network));
        let filters = whitelist(FlowFilter {
            destination_ip: vec![cidr],
            ..FlowFilter::default()
        });
        let mut flow = flow();
        flow.ip.as_mut().unwrap().destination = std::net::Ipv6Addr::from(address).to_string();
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        prop_assert_eq!(filters.matches(&flow), network & mask == address & mask);
    }

    #[test]
    fn arbitrary_filter_strings_never_panic(value in "\\PC{0,40}") {
        let filter = FlowFilter {
            source_ip: vec![value.clone()],
            ..FlowFilter::default()
        };
        let _ = FlowFilters::compile(&[filter], &[]);
        for filter in [
            FlowFilter { source_label: vec![value.clone()], ..FlowFilter::default() },
            FlowFilter { node_name: vec![value.clone()], ..FlowFilter::default() },
            FlowFilter { destination_fqdn: vec![value.clone()], ..FlowFilter::default() },
            FlowFilter { source_pod: vec![value.clone()], ..FlowFilter::default() },
        ] {
            if let Ok(filters) = FlowFilters::compile(&[filter], &[]) {
                let _ = filters.matches(&flow());
            }
        }
    }
}
