//! Cluster ids, their identity ranges, and cluster names.

use model::identity::{ClusterConfigError, ClusterId, ClusterName, NumericIdentity};

fn range_of(cluster: u8) -> (u32, u32) {
    let range = ClusterId::new(cluster).identity_range();
    (range.start().get(), range.end().get())
}

#[test]
fn cluster_zero_owns_256_to_65535() {
    assert_eq!(range_of(0), (256, 65535));
}

#[test]
fn cluster_n_owns_its_16_bit_block() {
    assert_eq!(range_of(1), (65536, 131_071));
    assert_eq!(range_of(2), (131_072, 196_607));
    assert_eq!(range_of(255), (255 << 16, (256 << 16) - 1));
}

#[test]
fn ranges_agree_with_cluster_bits() {
    for cluster in [0u8, 1, 7, 128, 255] {
        let range = ClusterId::new(cluster).identity_range();
        assert_eq!(range.start().cluster_id(), ClusterId::new(cluster));
        assert_eq!(range.end().cluster_id(), ClusterId::new(cluster));
    }
}

#[test]
fn contains_rejects_other_clusters_reserved_and_local_ids() {
    let one = ClusterId::new(1);
    assert!(one.contains(NumericIdentity::new(65536)));
    assert!(one.contains(NumericIdentity::new(131_071)));
    assert!(!one.contains(NumericIdentity::new(65535)));
    assert!(!one.contains(NumericIdentity::new(131_072)));
    assert!(!one.contains(NumericIdentity::new(
        NumericIdentity::LOCAL_SCOPE_FLAG | 65536
    )));
    let zero = ClusterId::UNSET;
    assert!(!zero.contains(NumericIdentity::HOST));
    assert!(!zero.contains(NumericIdentity::new(255)));
    assert!(zero.contains(NumericIdentity::MINIMAL_ALLOCATION));
}

#[test]
fn cluster_id_parsing() {
    assert_eq!("0".parse(), Ok(ClusterId::new(0)));
    assert_eq!("255".parse(), Ok(ClusterId::new(255)));
    for input in ["256", "-1", "", "+1", "1.0", "one"] {
        assert_eq!(
            input.parse::<ClusterId>(),
            Err(ClusterConfigError::InvalidClusterId {
                input: input.into()
            }),
            "{input:?}"
        );
    }
    assert_eq!(ClusterId::try_from(255u32), Ok(ClusterId::new(255)));
    assert!(ClusterId::try_from(256u32).is_err());
    assert_eq!(serde_json::to_string(&ClusterId::new(7)).unwrap(), "7");
}

#[test]
fn valid_cluster_names() {
    for name in [
        "default",
        "cluster1",
        "a",
        "1",
        "eu-west-1",
        &"a".repeat(32),
    ] {
        let parsed = ClusterName::new(name).unwrap();
        assert_eq!(parsed.as_str(), name);
        assert_eq!(parsed.to_string(), name);
    }
    assert_eq!(ClusterName::default().as_str(), "default");
}

#[test]
fn invalid_cluster_names() {
    assert_eq!(
        ClusterName::new(""),
        Err(ClusterConfigError::EmptyClusterName)
    );
    assert_eq!(
        ClusterName::new("a".repeat(33)),
        Err(ClusterConfigError::ClusterNameTooLong {
            name: "a".repeat(33),
            len: 33
        })
    );
    assert_eq!(
        ClusterName::new("Cluster1"),
        Err(ClusterConfigError::InvalidClusterNameChar {
            name: "Cluster1".into(),
            ch: 'C',
            position: 0
        })
    );
    for name in ["my_cluster", "my.cluster", "my cluster", "clüster"] {
        assert!(
            matches!(
                ClusterName::new(name),
                Err(ClusterConfigError::InvalidClusterNameChar { .. })
            ),
            "{name:?}"
        );
    }
    for name in ["-cluster", "cluster-", "-"] {
        assert!(
            matches!(
                ClusterName::new(name),
                Err(ClusterConfigError::ClusterNameEdge { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn cluster_name_serde_validates() {
    let name: ClusterName = serde_json::from_str("\"cluster2\"").unwrap();
    assert_eq!(name.as_str(), "cluster2");
    assert_eq!(serde_json::to_string(&name).unwrap(), "\"cluster2\"");
    let err = serde_json::from_str::<ClusterName>("\"Bad_Name\"").unwrap_err();
    assert!(err.to_string().contains("Bad_Name"), "{err}");
}
