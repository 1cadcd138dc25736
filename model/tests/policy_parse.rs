//! Reading policy documents: formats, multi-document input, kind dispatch, shape errors.

use model::policy::{
    Entity, L4Proto, PolicyDocument, PolicyError, PolicyKind, parse_documents,
    parse_documents_lenient,
};

const CNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: tcp
"#;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n";

fn single(text: &str) -> PolicyDocument {
    let mut docs = parse_documents(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn a_yaml_document_is_read_with_its_fields() {
    let doc = single(CNP);
    assert_eq!(doc.kind(), PolicyKind::CiliumNetworkPolicy);
    assert_eq!(doc.name(), "web");
    assert_eq!(doc.namespace(), Some("shop"));
    let rules = doc.rules();
    assert_eq!(rules.len(), 1);
    let port = &rules[0].ingress[0].to_ports[0].ports[0];
    assert_eq!(port.port, "80");
    // Protocols are read case-insensitively, as upstream normalises them.
    assert_eq!(port.protocol, Some(L4Proto::Tcp));
    assert_eq!(
        rules[0].ingress[0].from_endpoints[0].match_labels["app"],
        "client"
    );
}

#[test]
fn multi_document_yaml_keeps_order_and_skips_empty_documents() {
    let ccnp = "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\n\
                spec: {endpointSelector: {}, egress: [{toEntities: [world]}]}\n";
    let text = format!("---\n{CNP}\n---\n---\n{ccnp}\n...\n");
    let docs = parse_documents(&text).expect("two policies");
    let kinds: Vec<_> = docs.iter().map(PolicyDocument::kind).collect();
    assert_eq!(
        kinds,
        [
            PolicyKind::CiliumNetworkPolicy,
            PolicyKind::CiliumClusterwideNetworkPolicy
        ]
    );
    assert_eq!(docs[1].rules()[0].egress[0].to_entities, [Entity::World]);
}

#[test]
fn json_object_array_and_list_are_accepted() {
    let object = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
        "metadata":{"name":"j"},
        "spec":{"endpointSelector":{},"egress":[{"toPorts":[{"ports":[{"port":53,"protocol":"UDP"}]}]}]}}"#;
    let doc = single(object);
    // A JSON number is read as the port string upstream uses.
    assert_eq!(doc.rules()[0].egress[0].to_ports[0].ports[0].port, "53");

    let array = format!("[{object}, {object}]");
    assert_eq!(parse_documents(&array).expect("array").len(), 2);

    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{object}]}}"#);
    assert_eq!(parse_documents(&list).expect("list").len(), 1);

    // Tab-indented JSON (not valid YAML block indentation) still reads.
    let tabbed = "{\n\t\"kind\": \"CiliumNetworkPolicy\",\n\t\"metadata\": {\"name\": \"t\"},\n\t\
                  \"spec\": {\"endpointSelector\": {}, \"ingress\": [{}]}\n}";
    assert_eq!(single(tabbed).name(), "t");
}

#[test]
fn strict_parsing_refuses_other_kinds_and_lenient_parsing_skips_them() {
    let text = format!("{SERVICE}---\n{CNP}");
    let err = parse_documents(&text).expect_err("a Service is not a policy");
    match &err {
        PolicyError::Document {
            document, error, ..
        } => {
            assert_eq!(*document, 1);
            assert!(matches!(&**error, PolicyError::NotAPolicy { kind } if kind == "Service"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        err.to_string().contains("\"Service\" is not a policy"),
        "{err}"
    );

    let parsed = parse_documents_lenient(&text).expect("lenient");
    assert_eq!(parsed.policies.len(), 1);
    assert_eq!(parsed.skipped.len(), 1);
    assert_eq!(parsed.skipped[0].kind, "Service");
    assert_eq!(parsed.skipped[0].name.as_deref(), Some("web"));
    assert_eq!(parsed.skipped[0].document, 1);
    assert_eq!(parsed.skipped[0].to_string(), "Service web (document 1)");
}

#[test]
fn a_malformed_document_rejects_the_whole_input() {
    let bad = "kind: CiliumNetworkPolicy\nmetadata: {name: bad}\nspec:\n  endpointSelector: {}\n  egress:\n    toCIDR: [1.1.1.1]\n";
    let text = format!("{CNP}---\n{bad}");
    for result in [
        parse_documents(&text).map(|d| d.len()),
        parse_documents_lenient(&text).map(|p| p.policies.len()),
    ] {
        let err = result.expect_err("all or nothing");
        let message = err.to_string();
        assert!(message.starts_with("document 2: "), "{message}");
        assert!(
            message.contains("spec.egress: invalid type: map, expected a sequence"),
            "{message}"
        );
        assert!(matches!(err.innermost(), PolicyError::Parse { .. }));
    }
}

#[test]
fn wrong_types_and_unknown_rule_fields_name_the_path() {
    let cases = [
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: {port: 80}}]}]}",
            "spec.ingress[0].toPorts[0].ports: invalid type: map, expected a sequence",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPort: []}]}",
            "spec.ingress[0]: unknown field `toPort`",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toEntities: [moon]}]}",
            "spec.egress[0].toEntities[0]: unknown variant `moon`",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '1', protocol: GRE}]}]}]}",
            "spec.egress[0].toPorts[0].ports[0].protocol: unknown protocol \"GRE\"",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '1', endPort: x}]}]}]}",
            "spec.egress[0].toPorts[0].ports[0].endPort: invalid type: string",
        ),
    ];
    for (spec, expected) in cases {
        let text = format!("kind: CiliumNetworkPolicy\nmetadata: {{name: p}}\n{spec}\n");
        let err = parse_documents(&text).expect_err(spec);
        assert!(err.to_string().contains(expected), "{spec}: {err}");
    }
}

#[test]
fn upstream_quirks_are_tolerated() {
    // Lower-case `apiversion`, a top-level description, trailing whitespace, extra metadata
    // and nulls where lists or maps are expected.
    let text = "apiversion: cilium.io/v2   \nkind: CiliumNetworkPolicy\ndescription: outside spec  \n\
                metadata:\n  name: q\n  resourceVersion: \"42\"\n  creationTimestamp: null\n  \
                labels: null\nspec:\n  endpointSelector:\n    matchLabels:\n  ingress:\n  - \
                fromEndpoints:\n    - matchLabels: {role: a}\n    toPorts: null\n";
    let doc = single(text);
    let PolicyDocument::Cnp(cnp) = &doc else {
        panic!("not a CNP: {doc:?}");
    };
    assert_eq!(cnp.api_version, "cilium.io/v2");
    assert_eq!(cnp.description.as_deref(), Some("outside spec"));
    assert_eq!(doc.rules()[0].endpoint_selector, Some(Default::default()));
}

#[test]
fn documents_that_are_not_objects_are_errors() {
    for (text, expected) in [
        ("just text", "found a string"),
        ("- 1\n- 2\n", "found a number"),
        ("metadata: {name: x}\n", "has no `kind`"),
        ("kind: [a]\n", "kind: must be a string"),
        ("kind: CiliumNetworkPolicy\nspec: [\n", "while parsing"),
    ] {
        let err = parse_documents_lenient(text).expect_err(text);
        assert!(err.to_string().contains(expected), "{text:?}: {err}");
    }
    assert!(parse_documents("").expect("empty input").is_empty());
    assert!(
        parse_documents("---\n# only a comment\n")
            .expect("comment")
            .is_empty()
    );
}

#[test]
fn an_unknown_api_version_is_refused() {
    let text = "apiVersion: cilium.io/v3\nkind: CiliumNetworkPolicy\nmetadata: {name: v}\n\
                spec: {endpointSelector: {}, ingress: [{}]}\n";
    let err = parse_documents(text).expect_err("no such version");
    assert!(
        matches!(err.innermost(), PolicyError::UnknownApiVersion { api_version, .. } if api_version == "cilium.io/v3"),
        "{err}"
    );
}

#[test]
fn errors_in_arrays_and_lists_name_the_item() {
    let good = r#"{"kind":"NetworkPolicy","metadata":{"name":"n"},"spec":{}}"#;
    let nameless = r#"{"kind":"NetworkPolicy","spec":{}}"#;
    let err = parse_documents(&format!("[{good}, {nameless}]")).expect_err("second has no name");
    assert!(
        matches!(
            err,
            PolicyError::Document {
                document: 1,
                item: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("document 1, item 1: metadata.name"),
        "{err}"
    );
}
