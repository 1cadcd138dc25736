//! Property tests for the kvstore value codecs: decoding never panics on any input, and every
//! value we can build survives encode -> decode unchanged.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kvstore::keys::{
    self, Capabilities, ClusterConfig, ClusterService, IpCacheEntry, IpMask, L4Addr, NamedPort,
    Node, NodeAddress, NodeCidr, StoreValue,
};
use model::identity::NumericIdentity;
use proptest::prelude::*;

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn any_cidr() -> impl Strategy<Value = NodeCidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(b, len)| {
            NodeCidr::new(IpNet::new(IpAddr::V4(Ipv4Addr::from(b)), len).expect("len <= 32"))
        }),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(b, len)| {
            NodeCidr::new(IpNet::new(IpAddr::V6(Ipv6Addr::from(b)), len).expect("len <= 128"))
        }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    // Includes the characters Go escapes (<, >, &, U+2028) and a few multi-byte ones.
    "[a-zA-Z0-9<>&\"\\\\/ .:=\u{2028}\u{e9}\u{1F600}-]{0,12}"
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..4)
}

prop_compose! {
    fn any_ipcache_entry()(
        ip in any_ip(),
        mask_len in prop::option::of(0u8..=32),
        host_ip in prop::option::of(any_ip()),
        id in any::<u32>(),
        encrypt_key in any::<u8>(),
        metadata in text(),
        ns in text(),
        pod in text(),
        sa in text(),
        ports in prop::collection::vec((text(), any::<u16>(), text()), 0..3),
    ) -> IpCacheEntry {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        IpCacheEntry {
            ip,
            mask: mask_len.and_then(|len| IpMask::from_prefix_len(len, bits)),
            host_ip,
            id: NumericIdentity::new(id),
            encrypt_key,
            metadata,
            k8s_namespace: ns,
            k8s_pod_name: pod,
            k8s_service_account: sa,
            named_ports: ports
                .into_iter()
                .map(|(name, port, protocol)| NamedPort { name, port, protocol })
                .collect(),
        }
    }
}

prop_compose! {
    fn any_node()(
        name in text(),
        cluster in text(),
        addrs in prop::collection::vec((text(), prop::option::of(any_ip())), 0..3),
        v4 in prop::option::of(any_cidr()),
        v4s in prop::collection::vec(any_cidr(), 0..2),
        v6 in prop::option::of(any_cidr()),
        health in (prop::option::of(any_ip()), prop::option::of(any_ip())),
        ingress in (prop::option::of(any_ip()), prop::option::of(any_ip())),
        nums in (any::<u32>(), any::<u8>(), prop::option::of(any::<u32>())),
        strings in (text(), text(), text()),
        labels in string_map(),
        annotations in string_map(),
    ) -> Node {
        Node {
            name,
            cluster,
            ip_addresses: addrs
                .into_iter()
                .map(|(address_type, ip)| NodeAddress { address_type, ip })
                .collect(),
            ipv4_alloc_cidr: v4,
            ipv4_secondary_alloc_cidrs: v4s,
            ipv6_alloc_cidr: v6,
            ipv6_secondary_alloc_cidrs: Vec::new(),
            ipv4_health_ip: health.0,
            ipv6_health_ip: health.1,
            ipv4_ingress_ip: ingress.0,
            ipv6_ingress_ip: ingress.1,
            cluster_id: nums.0,
            source: strings.0,
            encryption_key: nums.1,
            labels,
            annotations,
            node_identity: nums.2,
            wireguard_pub_key: strings.1,
            boot_id: strings.2,
        }
    }
}

fn ports() -> impl Strategy<Value = BTreeMap<String, Option<L4Addr>>> {
    prop::collection::btree_map(
        text(),
        prop::option::of(
            (text(), any::<u16>()).prop_map(|(protocol, port)| L4Addr { protocol, port }),
        ),
        0..3,
    )
}

prop_compose! {
    fn any_service()(
        names in (text(), text(), text()),
        frontends in prop::collection::btree_map(any_ip().prop_map(|ip| ip.to_string()), ports(), 0..3),
        backends in prop::collection::btree_map(any_ip().prop_map(|ip| ip.to_string()), ports(), 0..3),
        hostnames in string_map(),
        labels in string_map(),
        selector in string_map(),
        flags in (any::<bool>(), any::<bool>(), any::<u32>()),
    ) -> ClusterService {
        ClusterService {
            cluster: names.0,
            namespace: names.1,
            name: names.2,
            frontends,
            backends,
            hostnames,
            zones: BTreeMap::new(),
            labels,
            selector,
            include_external: flags.0,
            shared: flags.1,
            cluster_id: flags.2,
        }
    }
}

fn round_trip<T: StoreValue + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = value
        .encode()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let decoded = T::decode(&bytes).map_err(TestCaseError::fail)?;
    prop_assert_eq!(&decoded, value);
    Ok(())
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = IpCacheEntry::decode(&data);
        let _ = Node::decode(&data);
        let _ = ClusterService::decode(&data);
        let _ = ClusterConfig::decode(&data);
        let _ = keys::decode_timestamp(&data);
    }

    #[test]
    fn decoding_arbitrary_json_never_panics(json in arbitrary_json()) {
        let data = json.to_string().into_bytes();
        let _ = IpCacheEntry::decode(&data);
        let _ = Node::decode(&data);
        let _ = ClusterService::decode(&data);
        let _ = ClusterConfig::decode(&data);
    }

    #[test]
    fn ipcache_entries_round_trip(entry in any_ipcache_entry()) {
        round_trip(&entry)?;
        prop_assert!(keys::ipcache_key(&entry.key_name()).starts_with(keys::IPCACHE_PREFIX));
    }

    #[test]
    fn nodes_round_trip(mut node in any_node()) {
        // Upstream rejects nodes without cluster or name.
        node.name.insert(0, 'n');
        node.cluster.insert(0, 'c');
        round_trip(&node)?;
    }

    #[test]
    fn services_round_trip(mut svc in any_service()) {
        svc.cluster.insert(0, 'c');
        svc.namespace.insert(0, 'n');
        svc.name.insert(0, 's');
        round_trip(&svc)?;
    }

    #[test]
    fn cluster_configs_round_trip(
        id in any::<u32>(),
        flags in (any::<bool>(), any::<bool>(), prop::option::of(any::<bool>())),
        max in any::<u32>(),
    ) {
        let config = ClusterConfig {
            id,
            capabilities: Capabilities {
                synced_canaries: flags.0,
                cached: flags.1,
                max_connected_clusters: max,
                service_exports_enabled: flags.2,
            },
        };
        let bytes = config.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ClusterConfig::decode(&bytes), Ok(config));
    }

    #[test]
    fn field_names_in_any_case_decode_the_same(node in any_node(), seed in any::<u64>()) {
        let mut node = node;
        node.name.insert(0, 'n');
        node.cluster.insert(0, 'c');
        let bytes = node.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut rng = seed;
        let scrambled = scramble_top_level_keys(value, &mut rng);
        let decoded = Node::decode(scrambled.to_string().as_bytes()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(decoded, node);
    }
}

/// Changes the case of every letter of every top-level field name at random (labels and
/// annotations are maps: their keys keep their case).
fn scramble_top_level_keys(value: serde_json::Value, rng: &mut u64) -> serde_json::Value {
    let serde_json::Value::Object(map) = value else {
        return value;
    };
    let mut out = serde_json::Map::new();
    for (key, v) in map {
        let scrambled: String = key
            .chars()
            .map(|c| {
                *rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if *rng >> 63 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        out.insert(scrambled, v);
    }
    serde_json::Value::Object(out)
}

/// JSON documents whose keys are mostly the field names the decoders know, with values of
/// every type, to reach the deeper decoding paths.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("IP".to_owned()),
        Just("Mask".to_owned()),
        Just("HostIP".to_owned()),
        Just("ID".to_owned()),
        Just("Name".to_owned()),
        Just("Cluster".to_owned()),
        Just("IPAddresses".to_owned()),
        Just("IPv4AllocCIDR".to_owned()),
        Just("IPv4SecondaryAllocCIDRs".to_owned()),
        Just("Labels".to_owned()),
        Just("cluster".to_owned()),
        Just("namespace".to_owned()),
        Just("name".to_owned()),
        Just("frontends".to_owned()),
        Just("zones".to_owned()),
        Just("capabilities".to_owned()),
        Just("NamedPorts".to_owned()),
        "[a-zA-Z]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[0-9a-fA-F.:/=+]{0,20}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|entries| { serde_json::Value::Object(entries.into_iter().collect()) }),
        ]
    })
}
