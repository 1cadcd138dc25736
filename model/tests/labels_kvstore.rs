//! The kvstore label string (upstream's `SortedList`) both ways.

use ipnet::IpNet;
use model::identity::ClusterName;
use model::labels::{Label, LabelError, Labels};
use proptest::prelude::*;

fn labels(items: &[&str]) -> Labels {
    items.iter().map(|s| Label::parse(s).unwrap()).collect()
}

#[test]
fn sorted_by_key_with_trailing_semicolons() {
    let set = labels(&["k8s:io.kubernetes.pod.namespace=default", "k8s:app=foo"]);
    assert_eq!(
        set.to_kvstore_string(),
        "k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;"
    );
}

#[test]
fn empty_values_keep_the_equals_sign() {
    let set = labels(&["reserved:host"]);
    assert_eq!(set.to_kvstore_string(), "reserved:host=;");
}

#[test]
fn sorting_is_by_key_not_by_source() {
    let set = labels(&["a:zeta=1", "z:alpha=2"]);
    assert_eq!(set.to_kvstore_string(), "z:alpha=2;a:zeta=1;");
}

#[test]
fn empty_set_is_empty_string() {
    assert_eq!(Labels::new().to_kvstore_string(), "");
    assert_eq!(Labels::from_kvstore_string(""), Ok(Labels::new()));
}

#[test]
fn one_label_per_key() {
    let mut set = labels(&["k8s:app=foo"]);
    let old = set.insert(Label::parse("container:app=bar").unwrap());
    assert_eq!(old, Some(Label::parse("k8s:app=foo").unwrap()));
    assert_eq!(set.to_kvstore_string(), "container:app=bar;");
}

#[test]
fn parses_upstream_strings() {
    let parsed = Labels::from_kvstore_string(
        "k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;reserved:host=;",
    )
    .unwrap();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed.get("host"), Some(&Label::host()));
    assert_eq!(parsed.get("app").map(|l| l.value.as_str()), Some("foo"));
}

#[test]
fn values_may_contain_equals_and_colons() {
    let parsed = Labels::from_kvstore_string("k8s:url=http://a=b;").unwrap();
    assert_eq!(
        parsed.get("url").map(|l| l.value.as_str()),
        Some("http://a=b")
    );
}

#[test]
fn missing_trailing_semicolon_is_rejected() {
    assert_eq!(
        Labels::from_kvstore_string("k8s:app=foo;k8s:b=c"),
        Err(LabelError::UnterminatedEntry {
            entry: "k8s:b=c".into(),
            position: 12
        })
    );
}

#[test]
fn missing_source_is_rejected() {
    assert_eq!(
        Labels::from_kvstore_string("app=foo;"),
        Err(LabelError::MissingSource {
            entry: "app=foo".into(),
            position: 0
        })
    );
    // A ':' inside the value does not count as a source.
    assert!(matches!(
        Labels::from_kvstore_string("app=k8s:foo;"),
        Err(LabelError::MissingSource { .. })
    ));
}

#[test]
fn missing_equals_is_rejected() {
    assert_eq!(
        Labels::from_kvstore_string("reserved:host;"),
        Err(LabelError::MissingValueSeparator {
            entry: "reserved:host".into(),
            position: 0
        })
    );
    assert!(matches!(
        Labels::from_kvstore_string(";"),
        Err(LabelError::MissingValueSeparator { .. })
    ));
}

#[test]
fn duplicate_keys_are_rejected() {
    assert_eq!(
        Labels::from_kvstore_string("k8s:app=a;container:app=b;"),
        Err(LabelError::DuplicateKey {
            key: "app".into(),
            position: 10
        })
    );
}

#[test]
fn invalid_entries_name_their_position_and_reason() {
    let err = Labels::from_kvstore_string("k8s:app=a;k8s:=b;").unwrap_err();
    match &err {
        LabelError::InvalidEntry {
            entry,
            position,
            reason,
        } => {
            assert_eq!(entry, "k8s:=b");
            assert_eq!(*position, 10);
            assert!(matches!(**reason, LabelError::EmptyKey { .. }));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("byte 10"), "{err}");
    assert!(matches!(
        Labels::from_kvstore_string(":app=a;"),
        Err(LabelError::InvalidEntry { .. })
    ));
    assert!(matches!(
        Labels::from_kvstore_string("k8s:a\tb=c;"),
        Err(LabelError::InvalidEntry { .. })
    ));
}

#[test]
fn shorthand_forms_are_not_accepted_in_the_kvstore_format() {
    assert!(Labels::from_kvstore_string("$host=;").is_err());
}

#[test]
fn k8s_pod_labels() {
    let cluster = ClusterName::new("cluster1").unwrap();
    let set = Labels::from_k8s_pod(
        "default",
        [("app".to_string(), "foo".to_string())],
        &cluster,
    )
    .unwrap();
    assert_eq!(
        set.to_kvstore_string(),
        "k8s:app=foo;k8s:io.cilium.k8s.policy.cluster=cluster1;\
         k8s:io.kubernetes.pod.namespace=default;"
    );
}

#[test]
fn k8s_pod_labels_cannot_forge_namespace_or_cluster() {
    let cluster = ClusterName::default();
    let set = Labels::from_k8s_pod(
        "prod",
        [
            ("io.kubernetes.pod.namespace", "kube-system"),
            ("io.cilium.k8s.policy.cluster", "other"),
        ],
        &cluster,
    )
    .unwrap();
    assert_eq!(
        set.get("io.kubernetes.pod.namespace")
            .map(|l| l.value.as_str()),
        Some("prod")
    );
    assert_eq!(
        set.get("io.cilium.k8s.policy.cluster")
            .map(|l| l.value.as_str()),
        Some("default")
    );
}

#[test]
fn k8s_pod_labels_are_validated() {
    let cluster = ClusterName::default();
    assert_eq!(
        Labels::from_k8s_pod("", Vec::<(String, String)>::new(), &cluster),
        Err(LabelError::EmptyNamespace)
    );
    assert!(matches!(
        Labels::from_k8s_pod("ns", [("bad key", "v")], &cluster),
        Err(LabelError::InvalidKeyChar { ch: ' ', .. })
    ));
    assert!(matches!(
        Labels::from_k8s_pod("ns;x", Vec::<(String, String)>::new(), &cluster),
        Err(LabelError::InvalidValueChar { ch: ';', .. })
    ));
}

#[test]
fn rest_model_serialisation_is_a_string_list() {
    let set = labels(&["k8s:app=foo", "reserved:host"]);
    let json = serde_json::to_value(&set).unwrap();
    assert_eq!(json, serde_json::json!(["k8s:app=foo", "reserved:host"]));
    let back: Labels = serde_json::from_value(json).unwrap();
    assert_eq!(back, set);
    assert!(serde_json::from_value::<Labels>(serde_json::json!(["k8s:"])).is_err());
}

fn source_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("k8s".to_string()),
        Just("reserved".to_string()),
        Just("container".to_string()),
        Just("unspec".to_string()),
        "[a-zA-Z0-9_-]{1,12}",
    ]
}

fn plain_label() -> impl Strategy<Value = Label> {
    (
        source_strategy(),
        "[a-zA-Z0-9*][a-zA-Z0-9._*-]{0,20}(/[a-zA-Z0-9._-]{1,20})?",
        "[^;\\p{Cc}]{0,24}",
    )
        .prop_map(|(source, key, value)| Label::new(source, key, value))
}

fn cidr_label() -> impl Strategy<Value = Label> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(octets, len)| {
            IpNet::new(std::net::Ipv4Addr::from(octets).into(), len).unwrap()
        }),
        (any::<[u16; 8]>(), 0u8..=128).prop_map(|(segments, len)| {
            IpNet::new(std::net::Ipv6Addr::from(segments).into(), len).unwrap()
        }),
    ]
    .prop_map(Label::cidr)
}

fn label_set() -> impl Strategy<Value = Labels> {
    prop::collection::vec(prop_oneof![3 => plain_label(), 1 => cidr_label()], 0..8)
        .prop_map(|labels| labels.into_iter().collect())
}

proptest! {
    #[test]
    fn generated_labels_are_valid(set in label_set()) {
        prop_assert_eq!(set.validate(), Ok(()));
    }

    #[test]
    fn kvstore_round_trip(set in label_set()) {
        let text = set.to_kvstore_string();
        prop_assert_eq!(Labels::from_kvstore_string(&text), Ok(set));
    }

    #[test]
    fn label_display_round_trip(label in prop_oneof![plain_label(), cidr_label()]) {
        prop_assert_eq!(Label::parse(&label.to_string()), Ok(label));
    }

    #[test]
    fn arbitrary_strings_never_panic(input in any::<String>()) {
        let _ = Labels::from_kvstore_string(&input);
        let _ = Label::parse(&input);
    }

    #[test]
    fn structured_garbage_never_panics_and_reparses(input in "[a-z$:=;/. \\n-]{0,40}") {
        let _ = Label::parse(&input);
        if let Ok(set) = Labels::from_kvstore_string(&input) {
            // Whatever parses is canonical after one round trip.
            prop_assert_eq!(Labels::from_kvstore_string(&set.to_kvstore_string()), Ok(set));
        }
    }
}
