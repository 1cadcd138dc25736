//! `NumericIdentity`: reserved identities, scope and cluster bits, text and serde forms.

use model::identity::{ClusterId, IdentityParseError, NumericIdentity, ReservedIdentity};
use model::labels::{Label, Labels};
use proptest::prelude::*;

#[test]
fn reserved_numbers_match_upstream() {
    let expected = [
        (0, "unknown"),
        (1, "host"),
        (2, "world"),
        (3, "unmanaged"),
        (4, "health"),
        (5, "init"),
        (6, "remote-node"),
        (7, "kube-apiserver"),
        (8, "ingress"),
        (9, "world-ipv4"),
        (10, "world-ipv6"),
    ];
    for (id, name) in expected {
        let identity = NumericIdentity::new(id);
        assert!(identity.is_reserved(), "{id}");
        assert_eq!(identity.reserved_name(), Some(name));
        let reserved = ReservedIdentity::from_name(name).unwrap();
        assert_eq!(reserved.id(), identity);
        assert_eq!(reserved.to_string(), name);
    }
    assert_eq!(NumericIdentity::HOST.get(), 1);
    assert_eq!(NumericIdentity::WORLD_IPV6.get(), 10);
    assert!(!NumericIdentity::new(11).is_reserved());
    assert!(!NumericIdentity::new(256).is_reserved());
    assert_eq!(NumericIdentity::new(11).reserved_name(), None);
    assert_eq!(ReservedIdentity::from_name("nope"), None);
}

#[test]
fn reserved_labels_both_ways() {
    assert_eq!(
        ReservedIdentity::Host.labels().to_kvstore_string(),
        "reserved:host=;"
    );
    assert_eq!(
        ReservedIdentity::WorldIpv4.labels().to_kvstore_string(),
        "reserved:world-ipv4=;"
    );
    // Upstream gives the kube-apiserver identity the remote-node label too.
    assert_eq!(
        ReservedIdentity::KubeApiServer.labels().to_kvstore_string(),
        "reserved:kube-apiserver=;reserved:remote-node=;"
    );
    assert!(ReservedIdentity::Unknown.labels().is_empty());
    for reserved in ReservedIdentity::ALL {
        if reserved != ReservedIdentity::Unknown {
            assert_eq!(
                ReservedIdentity::from_labels(&reserved.labels()),
                Some(reserved)
            );
        }
    }
    let host_and_app: Labels = [Label::host(), Label::k8s("app", "x")]
        .into_iter()
        .collect();
    assert_eq!(ReservedIdentity::from_labels(&host_and_app), None);
    assert_eq!(ReservedIdentity::from_labels(&Labels::new()), None);
}

#[test]
fn local_scope_flag() {
    assert_eq!(NumericIdentity::LOCAL_SCOPE_FLAG, 16_777_216);
    assert!(!NumericIdentity::new(256).is_local_scope());
    assert!(NumericIdentity::new(NumericIdentity::LOCAL_SCOPE_FLAG | 5).is_local_scope());
    let range = NumericIdentity::local_scope_range();
    assert_eq!(range.start().get(), 16_777_217);
    assert_eq!(range.end().get(), 33_554_431);
    assert!(range.start().is_local_scope() && range.end().is_local_scope());
}

#[test]
fn cluster_id_bits() {
    assert_eq!(NumericIdentity::new(256).cluster_id(), ClusterId::new(0));
    assert_eq!(
        NumericIdentity::new(5 << 16 | 42).cluster_id(),
        ClusterId::new(5)
    );
    assert_eq!(
        NumericIdentity::new(0x00FF_FFFF).cluster_id(),
        ClusterId::new(255)
    );
    // The local-scope bit is not part of the cluster id.
    assert_eq!(
        NumericIdentity::new(NumericIdentity::LOCAL_SCOPE_FLAG | 3 << 16).cluster_id(),
        ClusterId::new(3)
    );
}

#[test]
fn display_is_decimal() {
    assert_eq!(NumericIdentity::HOST.to_string(), "1");
    assert_eq!(NumericIdentity::new(65535).to_string(), "65535");
}

#[test]
fn parsing_is_strict_decimal() {
    assert_eq!("0".parse(), Ok(NumericIdentity::UNKNOWN));
    assert_eq!("4294967295".parse(), Ok(NumericIdentity::new(u32::MAX)));
    assert_eq!(
        "".parse::<NumericIdentity>(),
        Err(IdentityParseError::Empty)
    );
    assert_eq!(
        "010".parse::<NumericIdentity>(),
        Err(IdentityParseError::LeadingZero {
            input: "010".into()
        })
    );
    assert_eq!(
        "4294967296".parse::<NumericIdentity>(),
        Err(IdentityParseError::Overflow {
            input: "4294967296".into()
        })
    );
    for input in ["+1", "-1", " 1", "1 ", "0x10", "1_000"] {
        assert!(
            matches!(
                input.parse::<NumericIdentity>(),
                Err(IdentityParseError::InvalidDigit { .. })
            ),
            "{input:?}"
        );
    }
}

#[test]
fn serde_is_a_plain_number() {
    assert_eq!(
        serde_json::to_string(&NumericIdentity::new(256)).unwrap(),
        "256"
    );
    assert_eq!(
        serde_json::from_str::<NumericIdentity>("65536").unwrap(),
        NumericIdentity::new(65536)
    );
    assert!(serde_json::from_str::<NumericIdentity>("\"256\"").is_err());
    assert!(serde_json::from_str::<NumericIdentity>("-1").is_err());
}

proptest! {
    #[test]
    fn display_parse_round_trip(id in any::<u32>()) {
        let identity = NumericIdentity::new(id);
        prop_assert_eq!(identity.to_string().parse(), Ok(identity));
    }

    #[test]
    fn parse_never_panics(input in any::<String>()) {
        let _ = input.parse::<NumericIdentity>();
    }
}
