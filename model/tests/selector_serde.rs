//! Deserialising selectors from policy documents, validation and the canonical rendering.

use model::selector::{LabelSelector, SelectorError, SelectorOperator};

fn yaml(text: &str) -> LabelSelector {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn kubernetes_shape() {
    let selector = yaml(
        r#"
matchLabels:
  app: web
matchExpressions:
  - key: "k8s:io.cilium.k8s.policy.cluster"
    operator: "In"
    values: ["cluster2"]
  - key: "k8s:io.kubernetes.pod.namespace"
    operator: Exists
"#,
    );
    assert_eq!(
        selector.match_labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(selector.match_expressions.len(), 2);
    assert_eq!(selector.match_expressions[0].operator, SelectorOperator::In);
    assert_eq!(
        selector.match_expressions[1].operator,
        SelectorOperator::Exists
    );
    assert!(selector.match_expressions[1].values.is_empty());
    assert_eq!(selector.validate(), Ok(()));
}

#[test]
fn operators_are_case_insensitive() {
    for (text, expected) in [
        ("in", SelectorOperator::In),
        ("IN", SelectorOperator::In),
        ("notin", SelectorOperator::NotIn),
        ("NotIn", SelectorOperator::NotIn),
        ("exists", SelectorOperator::Exists),
        ("doesNotExist", SelectorOperator::DoesNotExist),
    ] {
        let parsed: SelectorOperator = serde_json::from_value(serde_json::json!(text)).unwrap();
        assert_eq!(parsed, expected, "{text}");
    }
}

#[test]
fn operators_serialise_in_kubernetes_spelling() {
    assert_eq!(
        serde_json::to_value(SelectorOperator::NotIn).unwrap(),
        "NotIn"
    );
    assert_eq!(
        serde_json::to_value(SelectorOperator::DoesNotExist).unwrap(),
        "DoesNotExist"
    );
}

#[test]
fn unknown_operator_lists_the_valid_ones() {
    let err = serde_json::from_value::<SelectorOperator>(serde_json::json!("Equals")).unwrap_err();
    let message = err.to_string();
    for name in ["Equals", "In", "NotIn", "Exists", "DoesNotExist"] {
        assert!(message.contains(name), "{message}");
    }
}

/// Upstream's `and-statement.yaml` writes the operator in lower case.
#[test]
fn upstream_lower_case_operator_example() {
    let selector = yaml(
        r#"
matchExpressions:
  - key: role
    operator: in
    values:
    - frontend
"#,
    );
    assert_eq!(selector.match_expressions[0].operator, SelectorOperator::In);
}

/// Upstream's `multi_rule.yaml` indents `role: frontend` as a sibling of `matchLabels`, which is
/// then null. Go reads that as an empty selector, and so do we.
#[test]
fn null_match_labels_is_empty() {
    let selector = yaml(
        r#"
matchLabels:
role: frontend
"#,
    );
    assert!(selector.selects_all());
    let selector = yaml("matchLabels: null\nmatchExpressions: null\n");
    assert!(selector.selects_all());
    let selector = yaml("matchExpressions:\n  - key: a\n    operator: Exists\n    values: null\n");
    assert!(selector.match_expressions[0].values.is_empty());
}

#[test]
fn serialisation_round_trip_skips_empty_fields() {
    let selector = yaml("matchLabels:\n  app: web\n");
    let json = serde_json::to_value(&selector).unwrap();
    assert_eq!(json, serde_json::json!({"matchLabels": {"app": "web"}}));
    assert_eq!(
        serde_json::from_value::<LabelSelector>(json).unwrap(),
        selector
    );
    assert_eq!(
        serde_json::to_value(LabelSelector::default()).unwrap(),
        serde_json::json!({})
    );
}

#[test]
fn in_needs_values() {
    let selector = yaml("matchExpressions:\n  - key: a\n    operator: In\n");
    assert_eq!(
        selector.validate(),
        Err(SelectorError::MissingValues {
            field: "matchExpressions[0].values".into(),
            operator: SelectorOperator::In
        })
    );
    let selector = yaml("matchExpressions:\n  - key: a\n    operator: NotIn\n    values: []\n");
    assert!(matches!(
        selector.validate(),
        Err(SelectorError::MissingValues { .. })
    ));
}

#[test]
fn exists_takes_no_values() {
    let selector = yaml(
        "matchExpressions:\n  - key: a\n    operator: Exists\n    values: [x]\n  - key: b\n    operator: DoesNotExist\n    values: [y]\n",
    );
    let err = selector.validate().unwrap_err();
    assert_eq!(
        err,
        SelectorError::UnexpectedValues {
            field: "matchExpressions[0].values".into(),
            operator: SelectorOperator::Exists
        }
    );
    assert_eq!(
        err.to_string(),
        "matchExpressions[0].values: operator Exists takes no values"
    );
}

#[test]
fn invalid_keys_name_the_field() {
    let selector = yaml("matchLabels:\n  \"k8s:\": web\n");
    match selector.validate() {
        Err(SelectorError::InvalidKey { field, key, .. }) => {
            assert_eq!(field, r#"matchLabels["k8s:"]"#);
            assert_eq!(key, "k8s:");
        }
        other => panic!("unexpected {other:?}"),
    }
    let selector = yaml(
        "matchExpressions:\n  - key: a\n    operator: Exists\n  - key: \"bad key\"\n    operator: Exists\n",
    );
    assert!(matches!(
        selector.validate(),
        Err(SelectorError::InvalidKey { field, .. }) if field == "matchExpressions[1].key"
    ));
}

#[test]
fn invalid_values_name_the_field() {
    let selector = yaml("matchLabels:\n  app: \"a;b\"\n");
    assert!(matches!(
        selector.validate(),
        Err(SelectorError::InvalidValue { field, .. }) if field == r#"matchLabels["app"]"#
    ));
}

#[test]
fn canonical_display() {
    let selector = yaml(
        "matchLabels:\n  app: web\nmatchExpressions:\n  - key: k8s:tier\n    operator: exists\n  - key: env\n    operator: NotIn\n    values: [b, a]\n",
    );
    assert_eq!(
        selector.to_string(),
        r#"{"any:app" In ["web"], "any:env" NotIn ["a", "b"], "k8s:tier" Exists}"#
    );
    assert_eq!(LabelSelector::default().to_string(), "{}");
}

#[test]
fn equivalent_spellings_render_the_same() {
    let a = yaml("matchLabels:\n  app: web\n");
    let b = yaml("matchExpressions:\n  - key: any:app\n    operator: In\n    values: [web, web]\n");
    assert_eq!(a.to_string(), b.to_string());
    let c = yaml("matchExpressions:\n  - key: env\n    operator: In\n    values: [x, y]\n");
    let d = yaml("matchExpressions:\n  - key: env\n    operator: In\n    values: [y, x]\n");
    assert_eq!(c.to_string(), d.to_string());
}

#[test]
fn different_selectors_render_differently() {
    let pairs = [
        (
            "matchLabels:\n  app: web\n",
            "matchLabels:\n  k8s:app: web\n",
        ),
        (
            "matchLabels:\n  app: web\n",
            "matchLabels:\n  app: \"web\\\", \\\"x\"\n",
        ),
        (
            "matchExpressions:\n  - key: a\n    operator: In\n    values: [\"x, y\"]\n",
            "matchExpressions:\n  - key: a\n    operator: In\n    values: [x, y]\n",
        ),
        (
            "matchExpressions:\n  - key: a\n    operator: Exists\n",
            "matchExpressions:\n  - key: a\n    operator: DoesNotExist\n",
        ),
    ];
    for (left, right) in pairs {
        assert_ne!(
            yaml(left).to_string(),
            yaml(right).to_string(),
            "{left} vs {right}"
        );
    }
}

#[test]
fn operator_from_str() {
    assert_eq!("notIN".parse(), Ok(SelectorOperator::NotIn));
    assert_eq!(
        "Gt".parse::<SelectorOperator>(),
        Err(SelectorError::UnknownOperator {
            operator: "Gt".into()
        })
    );
    assert_eq!(
        SelectorError::UnknownOperator {
            operator: "Gt".into()
        }
        .to_string(),
        r#"unknown selector operator "Gt", expected one of In, NotIn, Exists, DoesNotExist"#
    );
}
