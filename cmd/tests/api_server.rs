//! The REST API against the real actors over the fake datapath, driven by the client.

mod common;

use cilium_cmd::api::{
    self, BackendAddress, BpfMap, BpfMapList, ClusterNodeStatus, IpamResponse, L4Address,
    PolicyDeleteRequest, ServiceSpec,
};
use cilium_cmd::client::ClientError;
use common::{BAD_POLICY, GOOD_POLICY, TestAgent};
use datapath::api::{MapName, MetricDirection, MetricEntry};
use hyper::{Method, StatusCode};

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> StatusCode {
    result
        .expect_err("the request must fail")
        .status()
        .expect("the agent answered")
}

#[actix_rt::test]
async fn healthz_reports_the_node() {
    let agent = TestAgent::start().await;
    let status = agent.client.healthz().await.expect("healthz");
    assert_eq!(status.cilium.state, "Ok");
    assert_eq!(status.kvstore.state, "Disabled");
    assert_eq!(status.node_name, "node-a");
    assert_eq!(status.cluster.name, "test");
    assert_eq!(status.cluster.id, 1);
    let ipam = status.ipam.expect("ipam configured");
    assert_eq!(ipam.alloc_range, "10.200.0.0/24");
    assert_eq!(ipam.router.to_string(), "10.200.0.1");
    assert!(status.identity_count > 0, "reserved identities are known");

    let mode = std::fs::metadata(&agent.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("socket exists");
    assert_eq!(mode, 0o660);
    agent.stop().await;
}

#[actix_rt::test]
async fn not_ready_until_restored() {
    let agent = TestAgent::start_unrestored().await;
    assert_eq!(
        status_of(agent.client.healthz().await),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let request = api::EndpointChangeRequest {
        container_id: "c1".to_owned(),
        interface_name: "eth0".to_owned(),
        netns_path: "/var/run/netns/c1".to_owned(),
        k8s_pod_name: "p".to_owned(),
        k8s_namespace: "default".to_owned(),
        labels: Vec::new(),
    };
    let create = agent
        .client
        .send_json::<_, api::Endpoint>(Method::PUT, "/endpoint/0", &request)
        .await;
    assert_eq!(status_of(create), StatusCode::SERVICE_UNAVAILABLE);
    agent.restore().await;
    let status = agent.client.healthz().await.expect("ready after restore");
    assert_eq!(status.cilium.state, "Ok");
    agent.stop().await;
}

#[actix_rt::test]
async fn unknown_routes_answer_json_404() {
    let agent = TestAgent::start().await;
    let err = agent
        .client
        .get::<serde_json::Value>("/nothing-here")
        .await
        .expect_err("no such route");
    match err {
        ClientError::Api {
            status, message, ..
        } => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(message, "no such API route");
        }
        other => panic!("unexpected error {other}"),
    }
    agent.stop().await;
}

#[actix_rt::test]
async fn policy_import_is_all_or_nothing() {
    let agent = TestAgent::start().await;
    let before: api::Policy = agent.client.get("/policy").await.expect("get policy");
    assert_eq!(before.policy.trim(), "[]");

    let imported = agent
        .client
        .policy_import(GOOD_POLICY.to_owned())
        .await
        .expect("good policy imports");
    assert!(imported.revision > before.revision);
    assert!(imported.policy.contains("frontend"), "{}", imported.policy);

    let selectors: Vec<api::SelectorIdentityMapping> = agent
        .client
        .get("/policy/selectors")
        .await
        .expect("selectors");
    assert!(
        selectors.iter().any(|s| s.selector.contains("app=frontend")
            || s.selector.contains("app:frontend")
            || s.selector.contains("frontend")),
        "{selectors:?}"
    );

    let err = agent
        .client
        .policy_import(BAD_POLICY.to_owned())
        .await
        .expect_err("bad policy is refused");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("fromEndpointz"), "{err}");
    let after: api::Policy = agent.client.get("/policy").await.expect("get policy");
    assert_eq!(after, imported, "a refused import changes nothing");

    // Every kind of malformed document is refused whole, names what is wrong, and changes
    // nothing: a bad selector, ports out of range, a bad CIDR, and a valid document followed
    // by a broken one in the same import.
    let rule = |peer: &str, ports: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\n  \
             namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: x\n  \
             ingress:\n  - {peer}\n    toPorts:\n    - ports:\n      - {ports}\n"
        )
    };
    let bad_documents = [
        (
            rule(
                "fromEndpoints:\n    - matchExpressions:\n      - {key: app, operator: Maybe}",
                "{port: \"80\", protocol: TCP}",
            ),
            "Maybe",
        ),
        (
            rule(
                "fromEndpoints:\n    - matchExpressions:\n      - {key: app, operator: In}",
                "{port: \"80\", protocol: TCP}",
            ),
            "values",
        ),
        (
            rule(
                "fromEndpoints:\n    - {}",
                "{port: \"70000\", protocol: TCP}",
            ),
            "70000",
        ),
        (
            rule(
                "fromEndpoints:\n    - {}",
                "{port: \"8080\", endPort: 80, protocol: TCP}",
            ),
            "endPort",
        ),
        (
            rule(
                "fromCIDR:\n    - 10.0.0.0/33",
                "{port: \"80\", protocol: TCP}",
            ),
            "10.0.0.0/33",
        ),
        (format!("{GOOD_POLICY}\n---\n{BAD_POLICY}"), "fromEndpointz"),
    ];
    for (document, named) in &bad_documents {
        let err = agent
            .client
            .policy_import(document.clone())
            .await
            .expect_err("a malformed document is refused");
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        assert!(
            err.to_string().contains(named),
            "{named:?} not named in: {err}"
        );
        let after: api::Policy = agent.client.get("/policy").await.expect("get policy");
        assert_eq!(
            after, imported,
            "a refused import changes nothing: {document}"
        );
    }

    assert_eq!(
        status_of(agent.client.policy_import("   ".to_owned()).await),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status_of(
            agent
                .client
                .policy_delete(&PolicyDeleteRequest::default())
                .await
        ),
        StatusCode::BAD_REQUEST,
        "a delete must say what to delete"
    );
    assert_eq!(
        status_of(
            agent
                .client
                .policy_delete(&PolicyDeleteRequest {
                    name: Some("no-such-policy".to_owned()),
                    namespace: Some("default".to_owned()),
                    ..PolicyDeleteRequest::default()
                })
                .await
        ),
        StatusCode::NOT_FOUND
    );
    let deleted = agent
        .client
        .policy_delete(&PolicyDeleteRequest {
            name: Some("backend".to_owned()),
            namespace: Some("default".to_owned()),
            ..PolicyDeleteRequest::default()
        })
        .await
        .expect("delete by name");
    assert_eq!(deleted.deleted, 1);
    assert!(deleted.revision > imported.revision);
    let empty: api::Policy = agent.client.get("/policy").await.expect("get policy");
    assert_eq!(empty.policy.trim(), "[]");
    agent.stop().await;
}

fn spec(id: u16, backends: &[(&str, u16)]) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend_address: L4Address {
            ip: "10.96.0.10".parse().expect("ip"),
            port: 80,
            protocol: Some("TCP".to_owned()),
        },
        backend_addresses: backends
            .iter()
            .map(|(ip, port)| BackendAddress {
                ip: ip.parse().expect("ip"),
                port: *port,
                state: None,
                backend_id: None,
            })
            .collect(),
    }
}

#[actix_rt::test]
async fn services_update_list_delete() {
    let agent = TestAgent::start().await;
    let created = agent
        .client
        .service_update(&spec(7, &[("10.200.0.5", 8080), ("10.200.0.6", 8080)]))
        .await
        .expect("create");
    assert_eq!(created.id, 7);
    assert!(created.created);
    let updated = agent
        .client
        .service_update(&spec(7, &[("10.200.0.6", 8080)]))
        .await
        .expect("update");
    assert!(!updated.created);

    let list: Vec<api::Service> = agent.client.get("/service").await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].spec.id, 7);
    assert_eq!(list[0].spec.frontend_address.port, 80);
    let backends: Vec<_> = list[0]
        .spec
        .backend_addresses
        .iter()
        .map(|b| b.socket_addr().to_string())
        .collect();
    assert_eq!(backends, ["10.200.0.6:8080"]);
    assert_eq!(agent.fake.entries(MapName::Lb4Backends).len(), 1);

    let lb: BpfMap = agent
        .client
        .get("/map/cilium_lb4_services_v2")
        .await
        .expect("lb map");
    assert_eq!(lb.cache.len(), 2, "master entry and one slot: {lb:?}");
    assert!(lb.path.ends_with("tc/globals/cilium_lb4_services_v2"));

    let mut bad = spec(8, &[("10.200.0.6", 8080)]);
    bad.frontend_address.protocol = Some("SCTP".to_owned());
    let err = agent.client.service_update(&bad).await.expect_err("sctp");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        err.to_string().contains("frontend-address.protocol"),
        "{err}"
    );
    let mismatch = agent
        .client
        .send_json::<_, api::ServiceUpdated>(Method::PUT, "/service/9", &spec(8, &[]))
        .await;
    assert_eq!(status_of(mismatch), StatusCode::BAD_REQUEST);

    agent.client.service_delete(7).await.expect("delete");
    assert_eq!(
        status_of(agent.client.service_delete(7).await),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(agent.client.service_delete(0).await),
        StatusCode::BAD_REQUEST
    );
    let list: Vec<api::Service> = agent.client.get("/service").await.expect("list");
    assert!(list.is_empty());
    assert!(agent.fake.entries(MapName::Lb4Services).is_empty());
    agent.stop().await;
}

#[actix_rt::test]
async fn identities_list_and_get() {
    let agent = TestAgent::start().await;
    let list: Vec<api::Identity> = agent.client.get("/identity").await.expect("list");
    let host = list
        .iter()
        .find(|i| i.id == 1)
        .expect("reserved:host is identity 1");
    assert_eq!(host.labels, ["reserved:host"]);
    let one: api::Identity = agent.client.get("/identity/1").await.expect("get");
    assert_eq!(&one, host);
    assert_eq!(
        status_of(agent.client.get::<api::Identity>("/identity/99999").await),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(agent.client.get::<api::Identity>("/identity/abc").await),
        StatusCode::BAD_REQUEST
    );
    agent.stop().await;
}

#[actix_rt::test]
async fn maps_list_dump_and_metrics() {
    let agent = TestAgent::start().await;
    let maps: BpfMapList = agent.client.get("/map").await.expect("map list");
    let names: Vec<_> = maps
        .maps
        .iter()
        .filter_map(|m| m.path.rsplit('/').next())
        .collect();
    for map in MapName::GLOBAL {
        assert!(names.contains(&map.to_string().as_str()), "{names:?}");
    }
    assert_eq!(
        status_of(agent.client.get::<BpfMap>("/map/cilium_nothing").await),
        StatusCode::NOT_FOUND
    );

    agent.fake.add_metric(MetricEntry {
        reason: 133,
        direction: MetricDirection::Ingress,
        line: 10,
        file: 1,
        packets: 4,
        bytes: 256,
    });
    let metrics: BpfMap = agent
        .client
        .get("/map/cilium_metrics")
        .await
        .expect("metrics");
    assert_eq!(metrics.cache.len(), 1);
    assert_eq!(metrics.cache[0].value_data["packets"], 4);
    assert_eq!(metrics.cache[0].key_data["reason"], 133);

    let nodes: ClusterNodeStatus = agent.client.get("/cluster/nodes").await.expect("nodes");
    assert_eq!(nodes.self_name, "test/node-a");
    assert_eq!(nodes.nodes_added.len(), 1);
    agent.stop().await;
}

#[actix_rt::test]
async fn ipam_allocates_and_releases() {
    let agent = TestAgent::start().await;
    let first: IpamResponse = agent
        .client
        .request(Method::POST, "/ipam?owner=pod-a", None)
        .await
        .expect("allocate");
    assert_eq!(first.ipv4.gateway.to_string(), "10.200.0.1");
    assert_eq!(first.ipv4.cidrs, ["10.200.0.0/24"]);
    let second: IpamResponse = agent
        .client
        .request(Method::POST, "/ipam?owner=pod-b", None)
        .await
        .expect("allocate");
    assert_ne!(first.address.ipv4, second.address.ipv4);
    let taken = agent
        .client
        .request::<IpamResponse>(
            Method::POST,
            &format!("/ipam?owner=pod-c&ip={}", first.address.ipv4),
            None,
        )
        .await;
    assert_eq!(status_of(taken), StatusCode::BAD_REQUEST);

    let path = format!("/ipam/{}", first.address.ipv4);
    agent
        .client
        .request_raw(Method::DELETE, &path, None)
        .await
        .expect("release");
    assert_eq!(
        status_of(agent.client.request_raw(Method::DELETE, &path, None).await),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(
            agent
                .client
                .request_raw(Method::DELETE, "/ipam/not-an-ip", None)
                .await
        ),
        StatusCode::BAD_REQUEST
    );
    agent.stop().await;
}

#[actix_rt::test]
async fn metrics_use_upstream_names() {
    let agent = TestAgent::start().await;
    agent
        .client
        .policy_import(GOOD_POLICY.to_owned())
        .await
        .expect("import");
    agent.fake.add_metric(MetricEntry {
        reason: 133,
        direction: MetricDirection::Ingress,
        line: 10,
        file: 1,
        packets: 4,
        bytes: 256,
    });
    agent.fake.add_metric(MetricEntry {
        reason: 0,
        direction: MetricDirection::Egress,
        line: 0,
        file: 0,
        packets: 9,
        bytes: 900,
    });
    let text = cilium_cmd::metrics::render(agent.handles())
        .await
        .expect("metrics");
    for line in [
        "cilium_policy 1",
        "cilium_endpoint 0",
        "cilium_services 0",
        r#"cilium_drop_count_total{reason="Policy denied",direction="INGRESS"} 4"#,
        r#"cilium_drop_bytes_total{reason="Policy denied",direction="INGRESS"} 256"#,
        r#"cilium_forward_count_total{direction="EGRESS"} 9"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"cilium_identity{type="reserved"} "#)),
        "{text}"
    );
    agent.stop().await;
}
