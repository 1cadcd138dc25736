//! Unit tests of the policy state machine: revisions, replace/delete, enforcement modes,
//! incremental identity and rule changes, realized revisions, CIDR requests, named ports.

use datapath::api::{Direction, EndpointId, PolicyEntry, PolicyKey, Protocol};
use model::identity::{ClusterName, NumericIdentity};
use model::labels::Labels;
use model::policy::parse_documents;
use proptest::prelude::*;

use super::*;
use crate::policy::messages::{EndpointPolicyWanted, NamedPort, PolicySource, policy_name_labels};

fn documents(yaml: &str) -> PolicySource {
    PolicySource::Documents(parse_documents(yaml).expect("test policy parses"))
}

fn pod(namespace: &str, app: &str) -> Labels {
    Labels::from_k8s_pod(namespace, [("app", app)], &ClusterName::default()).unwrap()
}

fn id(n: u32) -> NumericIdentity {
    NumericIdentity::new(n)
}

fn ep(n: u16) -> EndpointId {
    EndpointId::new(n)
}

fn wanted(endpoint: u16, identity: u32, labels: Labels) -> EndpointPolicyWanted {
    EndpointPolicyWanted {
        endpoint: ep(endpoint),
        identity: id(identity),
        labels,
        named_ports: Vec::new(),
    }
}

/// The endpoint's entries, ingress first.
fn show(state: &PolicyState, endpoint: u16) -> Vec<String> {
    let mut entries: Vec<_> = state
        .entries(ep(endpoint))
        .expect("endpoint known")
        .iter()
        .collect();
    entries.sort_by_key(|(k, _)| (k.direction(), **k));
    entries
        .into_iter()
        .map(|(k, e)| format!("{k} {}", if e.deny { "deny" } else { "allow" }))
        .collect()
}

/// The endpoints an effect list updates, with the keys each update adds and removes.
fn updates(effects: &[Effect]) -> Vec<(u16, Vec<String>, Vec<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::EndpointPolicy {
                endpoint, delta, ..
            } => Some((
                endpoint.get(),
                delta.upserted.iter().map(|(k, _)| k.to_string()).collect(),
                delta.removed.iter().map(ToString::to_string).collect(),
            )),
            Effect::CidrIdentities(_) => None,
        })
        .collect()
}

const BACKEND_FROM_FRONTEND: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

/// frontend (identity 1000), two backends (1001, endpoints 2 and 3), db (1002).
fn three_tier() -> PolicyState {
    let mut state = PolicyState::new(PolicyConfig::default());
    state.upsert_identities([
        (id(1000), pod("default", "frontend")),
        (id(1001), pod("default", "backend")),
        (id(1002), pod("default", "db")),
    ]);
    state.upsert_endpoint(wanted(1, 1000, pod("default", "frontend")));
    state.upsert_endpoint(wanted(2, 1001, pod("default", "backend")));
    state.upsert_endpoint(wanted(3, 1001, pod("default", "backend")));
    state.upsert_endpoint(wanted(4, 1002, pod("default", "db")));
    state.import(documents(BACKEND_FROM_FRONTEND)).unwrap();
    state
}

#[test]
fn endpoints_without_rules_allow_everything() {
    let mut state = PolicyState::new(PolicyConfig::default());
    let effects = state.upsert_endpoint(wanted(1, 1000, pod("default", "a")));
    assert_eq!(
        updates(&effects).len(),
        1,
        "a new endpoint always gets an update"
    );
    assert_eq!(
        show(&state, 1),
        [
            "ingress identity 0 ANY/* allow",
            "egress identity 0 ANY/* allow"
        ]
    );
}

#[test]
fn a_rule_enforces_only_its_direction_and_keeps_the_host_allowed() {
    let state = three_tier();
    assert_eq!(
        show(&state, 2),
        [
            "ingress identity 1 ANY/* allow",
            "ingress identity 1000 TCP/80 allow",
            "egress identity 0 ANY/* allow",
        ]
    );
    // Endpoints the rule does not select are untouched.
    assert_eq!(show(&state, 4).len(), 2);
    let dump = state.dump();
    let backend = dump.endpoints.iter().find(|e| e.endpoint == ep(2)).unwrap();
    assert!(backend.ingress_enforced && !backend.egress_enforced);
}

#[test]
fn a_new_matching_identity_adds_exactly_its_entries_to_exactly_the_affected_endpoints() {
    let mut state = three_tier();
    let before_db = state.entries(ep(4)).unwrap().clone();
    let effects = state.upsert_identities([(id(1003), pod("default", "frontend"))]);
    assert_eq!(
        updates(&effects),
        [
            (2, vec!["ingress identity 1003 TCP/80".to_owned()], vec![]),
            (3, vec!["ingress identity 1003 TCP/80".to_owned()], vec![]),
        ]
    );
    assert_eq!(state.entries(ep(4)).unwrap(), &before_db);
    // An identity nobody selects changes nothing at all.
    assert!(
        state
            .upsert_identities([(id(1004), pod("default", "unrelated"))])
            .is_empty()
    );
    // A frontend of another namespace is not selected: the rule is namespace-scoped.
    assert!(
        state
            .upsert_identities([(id(1005), pod("other", "frontend"))])
            .is_empty()
    );
    // Removal takes exactly those entries back.
    let effects = state.remove_identities([id(1003)]);
    assert_eq!(
        updates(&effects),
        [
            (2, vec![], vec!["ingress identity 1003 TCP/80".to_owned()]),
            (3, vec![], vec!["ingress identity 1003 TCP/80".to_owned()]),
        ]
    );
}

#[test]
fn peers_of_other_clusters_are_not_selected_without_a_cluster_label() {
    let mut state = three_tier();
    let remote = Labels::from_k8s_pod(
        "default",
        [("app", "frontend")],
        &ClusterName::new("remote").unwrap(),
    )
    .unwrap();
    assert!(
        state
            .upsert_identities([(id(0x0002_0100), remote)])
            .is_empty()
    );
}

#[test]
fn a_rule_change_recomputes_only_the_endpoints_it_selects() {
    let mut state = three_tier();
    let revision = state.revision();
    let (new_revision, effects) = state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress: [{}]
",
        ))
        .unwrap();
    assert_eq!(new_revision, revision.next());
    let touched: Vec<u16> = updates(&effects).iter().map(|u| u.0).collect();
    assert_eq!(touched, [4]);
    assert_eq!(
        show(&state, 4),
        ["ingress identity 0 ANY/* allow"],
        "empty egress section: default deny, nothing allowed"
    );
    // Unaffected endpoints moved to the new revision without an update.
    assert!(
        state
            .dump()
            .endpoints
            .iter()
            .all(|e| e.revision == new_revision)
    );
}

#[test]
fn replacing_a_policy_swaps_its_rules_atomically_and_delete_removes_them() {
    let mut state = three_tier();
    let (revision, effects) = state
        .import(documents(&BACKEND_FROM_FRONTEND.replace("'80'", "'8080'")))
        .unwrap();
    assert_eq!(state.dump().rules.len(), 1);
    assert_eq!(
        updates(&effects),
        [
            (
                2,
                vec!["ingress identity 1000 TCP/8080".to_owned()],
                vec!["ingress identity 1000 TCP/80".to_owned()]
            ),
            (
                3,
                vec!["ingress identity 1000 TCP/8080".to_owned()],
                vec!["ingress identity 1000 TCP/80".to_owned()]
            ),
        ]
    );

    let missing = state.delete(&policy_name_labels("backend", Some("other")));
    assert!(matches!(missing, Err(PolicyError::NotFound { .. })));
    assert_eq!(state.revision(), revision);

    let (after, deleted, effects) = state
        .delete(&policy_name_labels("backend", Some("default")))
        .unwrap();
    assert_eq!((after, deleted), (revision.next(), 1));
    assert_eq!(updates(&effects).len(), 2);
    assert_eq!(show(&state, 2).len(), 2);
    // The rule's selectors left the cache with it.
    assert!(state.dump().selectors.is_empty());
}

#[test]
fn a_failed_import_changes_nothing() {
    let mut state = three_tier();
    let before = state.dump();
    let error = state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: ok}
spec:
  endpointSelector: {}
  egress: [{toEntities: [world]}]
---
kind: CiliumNetworkPolicy
metadata: {name: l7}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]
",
        ))
        .unwrap_err();
    assert!(
        error.to_string().starts_with("policy document 1 (l7): "),
        "{error}"
    );
    assert_eq!(state.dump(), before);
}

#[test]
fn enforcement_modes() {
    let policy = "
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: [world]}]
";
    let run = |enforcement, allow_localhost| {
        let mut state = PolicyState::new(PolicyConfig {
            enforcement,
            allow_localhost,
            ..PolicyConfig::default()
        });
        state.import(documents(policy)).unwrap();
        state.upsert_endpoint(wanted(1, 1000, pod("default", "a")));
        state.upsert_endpoint(wanted(2, 1001, pod("default", "b")));
        (show(&state, 1), show(&state, 2))
    };
    let (a, b) = run(EnforcementMode::Never, true);
    assert_eq!(
        a,
        [
            "ingress identity 0 ANY/* allow",
            "egress identity 0 ANY/* allow"
        ]
    );
    assert_eq!(a, b);
    let (a, b) = run(EnforcementMode::Always, true);
    assert_eq!(
        a,
        [
            "ingress identity 1 ANY/* allow",
            "ingress identity 2 ANY/* allow"
        ]
    );
    assert_eq!(b, ["ingress identity 1 ANY/* allow"]);
    let (a, b) = run(EnforcementMode::Always, false);
    assert_eq!(a, ["ingress identity 2 ANY/* allow"]);
    assert!(
        b.is_empty(),
        "always, no rule, no host: default deny both ways"
    );
}

#[test]
fn enable_default_deny_false_adds_allows_without_enforcing() {
    let mut state = three_tier();
    state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: extra}
spec:
  endpointSelector: {matchLabels: {app: db}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
",
        ))
        .unwrap();
    assert_eq!(
        show(&state, 4),
        [
            "ingress identity 0 ANY/* allow",
            "ingress identity 0 TCP/5432 allow",
            "ingress identity 1000 ANY/* deny",
            "egress identity 0 ANY/* allow",
        ]
    );
}

#[test]
fn realized_revision_follows_acknowledgements() {
    let mut state = PolicyState::new(PolicyConfig::default());
    assert_eq!(state.realized_revision(), Revision::INITIAL);
    let effects = state.upsert_endpoint(wanted(1, 1000, pod("default", "backend")));
    state.upsert_endpoint(wanted(2, 1001, pod("default", "db")));
    assert_eq!(state.realized_revision(), Revision::new(0));
    let Some(Effect::EndpointPolicy { seq, revision, .. }) = effects.first().cloned() else {
        panic!("no update for a new endpoint: {effects:?}");
    };
    state.acknowledge(ep(1), seq, revision);
    state.acknowledge(ep(2), 1, revision);
    assert_eq!(state.realized_revision(), Revision::INITIAL);

    // A rule for endpoint 1: endpoint 2 is unaffected and realizes the new revision at once.
    let (r2, effects) = state.import(documents(BACKEND_FROM_FRONTEND)).unwrap();
    let dump = state.dump();
    assert_eq!(dump.endpoints[1].realized_revision, Some(r2));
    assert_eq!(dump.endpoints[0].realized_revision, Some(Revision::INITIAL));
    assert_eq!(state.realized_revision(), Revision::INITIAL);
    let Some(Effect::EndpointPolicy { seq, revision, .. }) = effects.first().cloned() else {
        panic!("no update for the selected endpoint: {effects:?}");
    };
    assert_eq!(revision, r2);
    // A stale or unknown acknowledgement changes nothing.
    state.acknowledge(ep(1), seq + 5, r2);
    state.acknowledge(ep(9), 1, r2);
    assert_eq!(state.realized_revision(), Revision::INITIAL);
    state.acknowledge(ep(1), seq, r2);
    assert_eq!(state.realized_revision(), r2);
    state.remove_endpoint(ep(1));
    assert_eq!(state.dump().endpoints.len(), 1);
}

#[test]
fn cidr_prefixes_are_requested_and_released_with_their_rules() {
    let mut state = PolicyState::new(PolicyConfig::default());
    let (_, effects) = state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: cidr}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  - toCIDR: [10.0.0.0/8, 0.0.0.0/0]
",
        ))
        .unwrap();
    let requests: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::CidrIdentities(r) => Some(r.clone()),
            Effect::EndpointPolicy { .. } => None,
        })
        .collect();
    assert_eq!(
        requests,
        [CidrIdentitiesWanted {
            added: vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap()
            ],
            removed: vec![],
        }]
    );
    let (_, _, effects) = state.delete(&[]).unwrap();
    assert_eq!(
        effects,
        [Effect::CidrIdentities(CidrIdentitiesWanted {
            added: vec![],
            removed: vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap()
            ],
        })]
    );
}

#[test]
fn named_ports_resolve_against_the_endpoint_at_ingress_and_the_node_at_egress() {
    let mut state = PolicyState::new(PolicyConfig {
        allow_localhost: false,
        ..PolicyConfig::default()
    });
    state.upsert_identities([
        (id(1000), pod("default", "web")),
        (id(1001), pod("default", "client")),
    ]);
    state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: named}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: HTTP, protocol: TCP}]}]
",
        ))
        .unwrap();
    let http = |port| NamedPort {
        name: "Http".to_owned(),
        port,
        protocol: Protocol::TCP,
    };
    state.upsert_endpoint(EndpointPolicyWanted {
        named_ports: vec![http(8080)],
        ..wanted(1, 1000, pod("default", "web"))
    });
    state.upsert_endpoint(wanted(2, 1001, pod("default", "client")));
    assert_eq!(
        show(&state, 1),
        [
            "ingress identity 1001 TCP/8080 allow",
            "egress identity 1000 TCP/8080 allow"
        ]
    );
    // The client has no port named http: nothing at its ingress; its egress uses the node's.
    assert_eq!(show(&state, 2), ["egress identity 1000 TCP/8080 allow"]);
    // A new web pod with another number for the name widens every egress user.
    let effects = state.upsert_endpoint(EndpointPolicyWanted {
        named_ports: vec![http(9090)],
        ..wanted(3, 1000, pod("default", "web"))
    });
    let touched: Vec<u16> = updates(&effects).iter().map(|u| u.0).collect();
    assert_eq!(touched, [1, 2, 3]);
    assert!(show(&state, 2).contains(&"egress identity 1000 TCP/9090 allow".to_owned()));
    let effects = state.remove_endpoint(ep(3));
    assert_eq!(updates(&effects).len(), 2);
    assert_eq!(show(&state, 2), ["egress identity 1000 TCP/8080 allow"]);
}

#[test]
fn deny_wins_over_allow_from_another_rule() {
    let mut state = three_tier();
    state
        .import(documents(
            "
kind: CiliumNetworkPolicy
metadata: {name: deny}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '0', protocol: TCP}]}]
",
        ))
        .unwrap();
    assert_eq!(
        show(&state, 2),
        [
            "ingress identity 1 ANY/* allow",
            "ingress identity 1000 TCP/* deny",
            "egress identity 0 ANY/* allow",
        ]
    );
    // A new frontend identity gets the deny, not the allow.
    let effects = state.upsert_identities([(id(1003), pod("default", "frontend"))]);
    assert_eq!(updates(&effects)[0].1, ["ingress identity 1003 TCP/*"]);
    let deny = state.entries(ep(2)).unwrap().get(&PolicyKey::protocol(
        id(1003),
        Direction::Ingress,
        Protocol::TCP,
    ));
    assert_eq!(deny, Some(&PolicyEntry::deny()));
}

#[test]
fn rules_import_replaces_rules_with_the_same_labels() {
    let mut state = PolicyState::new(PolicyConfig::default());
    let rules = |port: &str| {
        let doc = &parse_documents(&BACKEND_FROM_FRONTEND.replace("'80'", port)).unwrap()[0];
        doc.to_rules().unwrap()
    };
    state.import(PolicySource::Rules(rules("'80'"))).unwrap();
    state.import(PolicySource::Rules(rules("'81'"))).unwrap();
    assert_eq!(state.dump().rules.len(), 1);
    let mut unlabelled = rules("'82'");
    unlabelled[0].labels.clear();
    state.import(PolicySource::Rules(unlabelled)).unwrap();
    assert_eq!(state.dump().rules.len(), 2);
    // No endpointSelector (and no nodeSelector): invalid.
    let error = state
        .import(PolicySource::Rules(vec![Rule::default()]))
        .unwrap_err();
    assert!(error.to_string().starts_with("rule 0: "), "{error}");
}

#[test]
fn enforcement_mode_parses_its_flag_values() {
    for mode in [
        EnforcementMode::Default,
        EnforcementMode::Always,
        EnforcementMode::Never,
    ] {
        assert_eq!(mode.to_string().parse::<EnforcementMode>(), Ok(mode));
    }
    assert!("sometimes".parse::<EnforcementMode>().is_err());
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Add(u32, usize),
    Remove(u32),
}

const APPS: [&str; 4] = ["frontend", "backend", "db", "bad"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1000u32..1012, 0..APPS.len()).prop_map(|(i, a)| Step::Add(i, a)),
        (1000u32..1012).prop_map(Step::Remove),
    ]
}

const MIXED: &str = "
kind: CiliumNetworkPolicy
metadata: {name: mixed}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}, {matchExpressions: [{key: app, operator: In, values: [backend, bad]}]}]
    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '8000', endPort: 8100, protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: db}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: bad}}]
    toPorts: [{ports: [{port: '0', protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [db]}]}]
";

proptest! {
    /// Whatever identities come and go, the incrementally maintained entries equal a fresh
    /// resolution, and the effects carried exactly the difference.
    #[test]
    fn incremental_updates_match_a_full_resolution(steps in proptest::collection::vec(step(), 1..40)) {
        let mut state = PolicyState::new(PolicyConfig::default());
        state.import(documents(MIXED)).unwrap();
        state.upsert_endpoint(wanted(1, 900, pod("default", "backend")));
        state.upsert_endpoint(wanted(2, 901, pod("default", "frontend")));
        let mut mirror: BTreeMap<EndpointId, BTreeMap<PolicyKey, PolicyEntry>> = [1, 2]
            .into_iter()
            .map(|n| (ep(n), state.entries(ep(n)).unwrap().clone()))
            .collect();
        for step in steps {
            let effects = match step {
                Step::Add(i, app) => state.upsert_identities([(id(i), pod("default", APPS[app]))]),
                Step::Remove(i) => state.remove_identities([id(i)]),
            };
            for effect in effects {
                if let Effect::EndpointPolicy { endpoint, delta, .. } = effect {
                    let entries = mirror.get_mut(&endpoint).unwrap();
                    for key in delta.removed {
                        prop_assert!(entries.remove(&key).is_some());
                    }
                    entries.extend(delta.upserted);
                }
            }
        }
        let mut fresh = PolicyState::new(PolicyConfig::default());
        fresh.upsert_identities(state.cache.identities().clone());
        fresh.import(documents(MIXED)).unwrap();
        fresh.upsert_endpoint(wanted(1, 900, pod("default", "backend")));
        fresh.upsert_endpoint(wanted(2, 901, pod("default", "frontend")));
        for n in [1, 2] {
            prop_assert_eq!(state.entries(ep(n)), fresh.entries(ep(n)));
            prop_assert_eq!(Some(&mirror[&ep(n)]), fresh.entries(ep(n)));
        }
    }
}
