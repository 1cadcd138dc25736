//! `Label::parse`, `Display` and validation.

use model::labels::{Label, LabelError, source};

fn label(source: &str, key: &str, value: &str) -> Label {
    Label::new(source, key, value)
}

#[test]
fn parses_source_key_value() {
    assert_eq!(Label::parse("k8s:app=foo"), Ok(label("k8s", "app", "foo")));
}

#[test]
fn key_value_without_source_is_unspec() {
    assert_eq!(
        Label::parse("app=foo"),
        Ok(label(source::UNSPEC, "app", "foo"))
    );
}

#[test]
fn source_and_key_without_value() {
    assert_eq!(Label::parse("reserved:host"), Ok(Label::host()));
    assert_eq!(Label::parse("k8s:app"), Ok(label("k8s", "app", "")));
}

#[test]
fn dollar_is_reserved_shorthand() {
    assert_eq!(Label::parse("$host"), Ok(Label::host()));
    assert_eq!(Label::parse("$world"), Ok(Label::world()));
}

#[test]
fn colon_after_first_equals_belongs_to_the_value() {
    assert_eq!(
        Label::parse("app=a:b"),
        Ok(label(source::UNSPEC, "app", "a:b"))
    );
    assert_eq!(
        Label::parse("k8s:url=http://x=y"),
        Ok(label("k8s", "url", "http://x=y"))
    );
}

#[test]
fn upstream_reserved_quirks() {
    assert_eq!(Label::parse("reserved:=host"), Ok(Label::host()));
    assert_eq!(Label::parse("reserved.health"), Ok(Label::health()));
}

#[test]
fn empty_key_is_rejected() {
    for input in ["", "k8s:", "$", "k8s:=foo", "=foo"] {
        assert!(
            matches!(Label::parse(input), Err(LabelError::EmptyKey { .. })),
            "{input:?} parsed as {:?}",
            Label::parse(input)
        );
    }
}

#[test]
fn invalid_sources_are_rejected() {
    for input in [":app=foo", "k 8s:app=foo", "k8s.io:app"] {
        assert!(
            matches!(Label::parse(input), Err(LabelError::InvalidSource { .. })),
            "{input:?} parsed as {:?}",
            Label::parse(input)
        );
    }
}

#[test]
fn key_characters_are_checked() {
    let err = Label::parse("k8s:a pp=foo").unwrap_err();
    assert_eq!(
        err,
        LabelError::InvalidKeyChar {
            input: "k8s:a pp=foo".into(),
            ch: ' ',
            position: 1
        }
    );
    assert!(matches!(
        Label::parse("k8s:a;b=foo"),
        Err(LabelError::InvalidKeyChar { ch: ';', .. })
    ));
    assert!(matches!(
        Label::parse("k8s:a:b=foo"),
        Err(LabelError::InvalidKeyChar { ch: ':', .. })
    ));
    assert!(matches!(
        Label::parse("k8s:a\u{0}b"),
        Err(LabelError::InvalidKeyChar { ch: '\u{0}', .. })
    ));
}

#[test]
fn key_slash_rules() {
    assert!(Label::parse("k8s:app.kubernetes.io/name=x").is_ok());
    for input in ["k8s:/name=x", "k8s:prefix/=x", "k8s:a/b/c=x"] {
        assert!(
            matches!(Label::parse(input), Err(LabelError::InvalidKeySlash { .. })),
            "{input:?} parsed as {:?}",
            Label::parse(input)
        );
    }
}

#[test]
fn value_characters_are_checked() {
    assert!(matches!(
        Label::parse("k8s:app=a;b"),
        Err(LabelError::InvalidValueChar {
            ch: ';',
            position: 1,
            ..
        })
    ));
    assert!(matches!(
        Label::parse("k8s:app=a\nb"),
        Err(LabelError::InvalidValueChar { ch: '\n', .. })
    ));
}

#[test]
fn cidr_labels_need_a_prefix_key_and_no_value() {
    assert!(Label::parse("cidr:10.0.0.0/8").is_ok());
    assert!(Label::parse("cidr:2001-db8--0/32").is_ok());
    assert!(matches!(
        Label::parse("cidr:banana"),
        Err(LabelError::InvalidCidrKey { .. })
    ));
    assert!(matches!(
        Label::parse("cidr:10.0.0.0/8=x"),
        Err(LabelError::CidrLabelWithValue { .. })
    ));
}

#[test]
fn display_matches_upstream_string() {
    assert_eq!(label("k8s", "app", "foo").to_string(), "k8s:app=foo");
    assert_eq!(Label::host().to_string(), "reserved:host");
    assert_eq!(label("k8s", "empty", "").to_string(), "k8s:empty");
}

#[test]
fn error_messages_name_the_input() {
    let err = Label::parse("k8s:a pp").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("\"k8s:a pp\""), "{message}");
    assert!(message.contains("byte 1"), "{message}");
}

#[test]
fn reserved_constructors() {
    let all = [
        (Label::host(), "reserved:host"),
        (Label::world(), "reserved:world"),
        (Label::health(), "reserved:health"),
        (Label::init(), "reserved:init"),
        (Label::remote_node(), "reserved:remote-node"),
        (Label::kube_apiserver(), "reserved:kube-apiserver"),
        (Label::unmanaged(), "reserved:unmanaged"),
        (Label::ingress(), "reserved:ingress"),
        (Label::world_ipv4(), "reserved:world-ipv4"),
        (Label::world_ipv6(), "reserved:world-ipv6"),
    ];
    for (label, text) in all {
        assert!(label.is_reserved());
        assert_eq!(label.to_string(), text);
        assert_eq!(Label::parse(text), Ok(label));
    }
}

#[test]
fn json_shape_matches_upstream() {
    let json = serde_json::to_value(label("k8s", "app", "foo")).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"source": "k8s", "key": "app", "value": "foo"})
    );
    let json = serde_json::to_value(Label::host()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"source": "reserved", "key": "host"})
    );
}
