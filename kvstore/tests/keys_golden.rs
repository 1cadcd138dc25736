//! Golden tests: JSON exactly as upstream Cilium writes it decodes to the expected values and,
//! where upstream's encoding is deterministic, encodes back to the same bytes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kvstore::keys::{
    self, BackendZone, Capabilities, ClusterConfig, ClusterService, ForZone, IpCacheEntry, IpMask,
    L4Addr, NamedPort, Node, NodeAddress, NodeCidr, StoreValue,
};
use model::identity::NumericIdentity;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn cidr(text: &str) -> NodeCidr {
    NodeCidr::new(text.parse::<IpNet>().expect("test CIDR"))
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Decodes `json`, compares with `expected`, and checks that encoding gives `json` back.
fn golden<T: StoreValue + PartialEq + std::fmt::Debug>(json: &str, expected: &T) {
    let decoded = T::decode(json.as_bytes()).expect("golden JSON decodes");
    assert_eq!(&decoded, expected);
    let encoded = expected.encode().expect("encodes");
    assert_eq!(String::from_utf8(encoded).expect("utf8"), json);
}

#[test]
fn ipcache_host_entry() {
    let json = r#"{"IP":"10.0.1.23","Mask":null,"HostIP":"192.168.1.10","ID":196864,"Key":0,"Metadata":"cilium-global:default:node1:2048","K8sNamespace":"default","K8sPodName":"web-1","NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}"#;
    let mut entry = IpCacheEntry::host(
        ip("10.0.1.23"),
        NumericIdentity::new(196_864),
        Some(ip("192.168.1.10")),
    );
    entry.metadata = "cilium-global:default:node1:2048".to_owned();
    entry.k8s_namespace = "default".to_owned();
    entry.k8s_pod_name = "web-1".to_owned();
    entry.named_ports = vec![NamedPort {
        name: "http".to_owned(),
        port: 80,
        protocol: "TCP".to_owned(),
    }];
    golden(json, &entry);
    assert_eq!(entry.key_name(), "10.0.1.23");
    assert_eq!(
        keys::ipcache_key(&entry.key_name()),
        "cilium/state/ip/v1/default/10.0.1.23"
    );
}

#[test]
fn ipcache_cidr_entry_with_service_account() {
    let json = r#"{"IP":"10.10.0.0","Mask":"//8AAA==","HostIP":"","ID":16777217,"Key":3,"Metadata":"","K8sServiceAccount":"builder"}"#;
    let mut entry = IpCacheEntry::host(ip("10.10.0.0"), NumericIdentity::new(16_777_217), None);
    entry.mask = IpMask::from_prefix_len(16, 32);
    entry.encrypt_key = 3;
    entry.k8s_service_account = "builder".to_owned();
    golden(json, &entry);
    assert_eq!(entry.key_name(), "10.10.0.0/16");
}

#[test]
fn ipcache_ipv6_entry() {
    let json = r#"{"IP":"f00d::a0f:0:0:6f2e","Mask":null,"HostIP":"fd00::1","ID":256,"Key":0,"Metadata":""}"#;
    let entry = IpCacheEntry::host(
        ip("f00d::a0f:0:0:6f2e"),
        NumericIdentity::new(256),
        Some(ip("fd00::1")),
    );
    golden(json, &entry);
}

fn current_node() -> Node {
    Node {
        name: "node1".to_owned(),
        cluster: "cluster1".to_owned(),
        ip_addresses: vec![
            NodeAddress {
                address_type: "InternalIP".to_owned(),
                ip: Some(ip("192.168.1.10")),
            },
            NodeAddress {
                address_type: "CiliumInternalIP".to_owned(),
                ip: Some(ip("10.0.1.1")),
            },
        ],
        ipv4_alloc_cidr: Some(cidr("10.0.1.0/24")),
        ipv6_alloc_cidr: Some(cidr("fd00:10:0:1::/64")),
        ipv4_health_ip: Some(ip("10.0.1.20")),
        cluster_id: 3,
        source: "local".to_owned(),
        labels: map(&[("kubernetes.io/hostname", "node1")]),
        boot_id: "3c2f4a3e-7a7b-4d2f-9b1e-1f2d3c4b5a69".to_owned(),
        ..Node::default()
    }
}

#[test]
fn node_as_current_upstream_writes_it() {
    let json = r#"{"Name":"node1","Cluster":"cluster1","IPAddresses":[{"Type":"InternalIP","IP":"192.168.1.10"},{"Type":"CiliumInternalIP","IP":"10.0.1.1"}],"IPv4AllocCIDR":{"IP":"10.0.1.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":{"IP":"fd00:10:0:1::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"10.0.1.20","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"local","EncryptionKey":0,"Labels":{"kubernetes.io/hostname":"node1"},"Annotations":null,"WireguardPubKey":"","BootID":"3c2f4a3e-7a7b-4d2f-9b1e-1f2d3c4b5a69"}"#;
    golden(json, &current_node());
    assert_eq!(current_node().key_name(), "cluster1/node1");
    assert_eq!(
        keys::node_key("cluster1", "node1"),
        "cilium/state/nodes/v1/cluster1/node1"
    );
}

#[test]
fn node_of_an_older_release_with_node_identity() {
    // Releases up to 1.17: net.IP health addresses, NodeIdentity, no BootID.
    let json = r#"{"Name":"node2","Cluster":"default","IPAddresses":[{"Type":"InternalIP","IP":"192.168.1.11"}],"IPv4AllocCIDR":{"IP":"10.0.2.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":[{"IP":"10.1.2.0","Mask":"/////w=="}],"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":0,"Source":"kvstore","EncryptionKey":5,"Labels":null,"Annotations":{"a":"b"},"NodeIdentity":6,"WireguardPubKey":"wg-key"}"#;
    let node = Node::decode(json.as_bytes()).expect("decodes");
    let expected = Node {
        name: "node2".to_owned(),
        cluster: "default".to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(ip("192.168.1.11")),
        }],
        ipv4_alloc_cidr: Some(cidr("10.0.2.0/24")),
        ipv4_secondary_alloc_cidrs: vec![cidr("10.1.2.0/32")],
        source: "kvstore".to_owned(),
        encryption_key: 5,
        annotations: map(&[("a", "b")]),
        node_identity: Some(6),
        wireguard_pub_key: "wg-key".to_owned(),
        ..Node::default()
    };
    assert_eq!(node, expected);
    // Re-encoding keeps NodeIdentity and adds the newer BootID field.
    let reencoded = String::from_utf8(node.encode().expect("encodes")).expect("utf8");
    assert!(reencoded.ends_with(r#""NodeIdentity":6,"WireguardPubKey":"wg-key","BootID":""}"#));
}

#[test]
fn node_with_string_cidrs_and_other_case_field_names() {
    let json = r#"{"name":"node1","CLUSTER":"cluster1","ipaddresses":[{"type":"InternalIP","ip":"192.168.1.10"},{"TYPE":"CiliumInternalIP","Ip":"10.0.1.1"}],"ipv4AllocCidr":"10.0.1.0/24","Ipv6allocCIDR":{"ip":"fd00:10:0:1::","mask":"//////////8AAAAAAAAAAA=="},"ipv4healthip":"10.0.1.20","clusterId":3,"source":"local","labels":{"kubernetes.io/hostname":"node1"},"bootid":"3c2f4a3e-7a7b-4d2f-9b1e-1f2d3c4b5a69","SomethingNew":{"x":[1]}}"#;
    assert_eq!(Node::decode(json.as_bytes()), Ok(current_node()));
}

#[test]
fn node_cidr_string_form_is_canonicalised() {
    let json = r#"{"Name":"n","Cluster":"c","IPv4AllocCIDR":"10.0.1.77/24"}"#;
    let node = Node::decode(json.as_bytes()).expect("decodes");
    assert_eq!(node.ipv4_alloc_cidr, Some(cidr("10.0.1.0/24")));
}

#[test]
fn node_rejects_what_upstream_rejects() {
    for bad in [
        r#"{"Name":"n"}"#,
        r#"{"Cluster":"c"}"#,
        r#"{"Name":"n","Cluster":"c","IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"/wD/AA=="}}"#,
        r#"{"Name":"n","Cluster":"c","IPv4AllocCIDR":"10.0.0.0/33"}"#,
        r#"{"Name":"n","Cluster":"c","IPv4HealthIP":"not-an-ip"}"#,
        r#"{"Name":"n","Cluster":"c","EncryptionKey":256}"#,
        r#"[]"#,
    ] {
        assert!(Node::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

fn web_service() -> ClusterService {
    let port = |protocol: &str, port: u16| {
        Some(L4Addr {
            protocol: protocol.to_owned(),
            port,
        })
    };
    ClusterService {
        cluster: "cluster1".to_owned(),
        namespace: "default".to_owned(),
        name: "web".to_owned(),
        frontends: BTreeMap::from([(
            "10.96.0.10".to_owned(),
            BTreeMap::from([
                ("http".to_owned(), port("TCP", 80)),
                ("dns".to_owned(), port("UDP", 53)),
            ]),
        )]),
        backends: BTreeMap::from([
            (
                "10.0.1.23".to_owned(),
                BTreeMap::from([("http".to_owned(), port("TCP", 8080))]),
            ),
            (
                "10.0.2.7".to_owned(),
                BTreeMap::from([("http".to_owned(), port("TCP", 8080))]),
            ),
        ]),
        labels: map(&[("app", "web")]),
        selector: map(&[("app", "web")]),
        include_external: true,
        shared: true,
        cluster_id: 3,
        ..ClusterService::default()
    }
}

#[test]
fn cluster_service_as_upstream_writes_it() {
    let json = r#"{"cluster":"cluster1","namespace":"default","name":"web","frontends":{"10.96.0.10":{"dns":{"Protocol":"UDP","Port":53},"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.0.1.23":{"http":{"Protocol":"TCP","Port":8080}},"10.0.2.7":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{"app":"web"},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":3}"#;
    golden(json, &web_service());
    assert_eq!(web_service().key_name(), "cluster1/default/web");
    assert_eq!(
        keys::service_key("cluster1", "default", "web"),
        "cilium/state/services/v1/cluster1/default/web"
    );
}

#[test]
fn cluster_service_with_hostnames_and_zones() {
    let json = r#"{"cluster":"c","namespace":"ns","name":"db","frontends":{},"backends":{"10.0.1.5":{"pg":{"Protocol":"TCP","Port":5432}}},"hostnames":{"10.0.1.5":"db-0"},"zones":{"10.0.1.5":{"zone":"a","forZones":[{"name":"a"},{"name":"b"}]}},"labels":{},"selector":{},"includeExternal":false,"shared":false,"clusterID":0}"#;
    let svc = ClusterService {
        cluster: "c".to_owned(),
        namespace: "ns".to_owned(),
        name: "db".to_owned(),
        backends: BTreeMap::from([(
            "10.0.1.5".to_owned(),
            BTreeMap::from([(
                "pg".to_owned(),
                Some(L4Addr {
                    protocol: "TCP".to_owned(),
                    port: 5432,
                }),
            )]),
        )]),
        hostnames: map(&[("10.0.1.5", "db-0")]),
        zones: BTreeMap::from([(
            "10.0.1.5".to_owned(),
            BackendZone {
                zone: "a".to_owned(),
                for_zones: vec![
                    ForZone {
                        name: "a".to_owned(),
                    },
                    ForZone {
                        name: "b".to_owned(),
                    },
                ],
            },
        )]),
        ..ClusterService::default()
    };
    golden(json, &svc);
}

#[test]
fn cluster_service_null_port_and_validation() {
    let json = r#"{"cluster":"c","namespace":"ns","name":"x","frontends":{"10.0.0.1":{"p":null}},"backends":null}"#;
    let svc = ClusterService::decode(json.as_bytes()).expect("decodes");
    assert_eq!(svc.frontends["10.0.0.1"]["p"], None);
    assert!(svc.backends.is_empty());

    for bad in [
        r#"{"namespace":"ns","name":"x"}"#,
        r#"{"cluster":"c","name":"x"}"#,
        r#"{"cluster":"c","namespace":"ns"}"#,
        r#"{"cluster":"c","namespace":"ns","name":"x","backends":{"not-an-ip":{}}}"#,
    ] {
        assert!(ClusterService::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn cluster_config_as_upstream_writes_it() {
    let cases = [
        (
            r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#,
            ClusterConfig {
                id: 3,
                capabilities: Capabilities {
                    synced_canaries: true,
                    max_connected_clusters: 255,
                    ..Capabilities::default()
                },
            },
        ),
        (
            r#"{"id":7,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511,"serviceExportsEnabled":false}}"#,
            ClusterConfig {
                id: 7,
                capabilities: Capabilities {
                    synced_canaries: true,
                    cached: true,
                    max_connected_clusters: 511,
                    service_exports_enabled: Some(false),
                },
            },
        ),
        (r#"{"capabilities":{}}"#, ClusterConfig::default()),
    ];
    for (json, expected) in cases {
        assert_eq!(
            ClusterConfig::decode(json.as_bytes()).as_ref(),
            Ok(&expected)
        );
        let encoded = expected.encode().expect("encodes");
        assert_eq!(String::from_utf8(encoded).expect("utf8"), json);
    }
    // Older releases wrote only the id.
    assert_eq!(ClusterConfig::decode(br#"{"id":4}"#).map(|c| c.id), Ok(4));
    assert_eq!(keys::cluster_config_key("c1"), "cilium/cluster-config/c1");
}

#[test]
fn identity_and_other_key_layouts() {
    let labels = "k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;";
    assert_eq!(
        keys::identity_master_key(NumericIdentity::new(196_864)),
        "cilium/state/identities/v1/id/196864"
    );
    assert_eq!(
        keys::identity_slave_key(labels, "10.0.0.1"),
        "cilium/state/identities/v1/value/k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;/10.0.0.1"
    );
    assert_eq!(
        keys::identity_lock_key(labels),
        "cilium/state/identities/v1/locks/k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;"
    );
    assert_eq!(
        keys::sync_canary_key("cluster1", keys::NODES_PREFIX),
        "cilium/synced/cluster1/cilium/state/nodes/v1"
    );
    assert_eq!(
        keys::sync_canary_key("remote", &keys::state_to_cache_prefix(keys::NODES_PREFIX)),
        "cilium/synced/remote/cilium/cache/nodes/v1"
    );
    assert_eq!(keys::HEARTBEAT_KEY, "cilium/.heartbeat");
    assert_eq!(
        keys::policy_key("default", "allow-web"),
        "cilium/config/policies/v1/default/allow-web"
    );
    assert_eq!(
        keys::ipam_key("cluster1", "node1"),
        "cilium/config/ipam/v1/cluster1/node1"
    );
}

#[test]
fn slave_keys_match_only_their_exact_label_string() {
    let short = keys::identity_slave_prefix("k8s:a=b;");
    let long_key = keys::identity_slave_key("k8s:a=b;k8s:c=d;", "10.0.0.1");
    let own_key = keys::identity_slave_key("k8s:a=b;", "10.0.0.1");
    assert!(long_key.starts_with(&short));
    assert!(!keys::is_slave_key_of(&short, &long_key));
    assert!(keys::is_slave_key_of(&short, &own_key));

    // Label keys may contain '/': the node suffix is always after the last one.
    let slashy = "k8s:app.kubernetes.io/name=web;";
    let key = keys::identity_slave_key(slashy, "fd00::1");
    assert!(keys::is_slave_key_of(
        &keys::identity_slave_prefix(slashy),
        &key
    ));
    assert_eq!(
        keys::parse_identity_slave_key(&key).expect("parses"),
        (slashy, "fd00::1")
    );
}

#[test]
fn master_keys_parse_strictly() {
    assert_eq!(
        keys::parse_identity_master_key("cilium/state/identities/v1/id/256").expect("parses"),
        NumericIdentity::new(256)
    );
    for bad in [
        "cilium/state/identities/v1/id/",
        "cilium/state/identities/v1/id/-1",
        "cilium/state/identities/v1/id/+5",
        "cilium/state/identities/v1/id/12a",
        "cilium/state/identities/v1/id/99999999999",
        "cilium/state/identities/v1/idx/5",
        "cilium/state/nodes/v1/c/n",
    ] {
        assert!(
            matches!(
                keys::parse_identity_master_key(bad),
                Err(kvstore::Error::MalformedKey { .. })
            ),
            "{bad}"
        );
    }
}
