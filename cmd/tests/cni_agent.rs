//! `cilium-cni` ADD/CHECK/DEL against an in-process agent over the fake datapath and fake
//! links: the CNI result, the endpoint in the API and the datapath, and a DEL that leaves
//! nothing behind.

mod common;

use std::path::Path;

use cilium_cmd::api;
use common::TestAgent;
use datapath::api::MapName;

struct Run {
    stdout: String,
    success: bool,
}

async fn cni(command: &str, container: &str, socket: &Path, cni_version: &str) -> Run {
    let conf = serde_json::json!({
        "cniVersion": cni_version,
        "name": "cilium",
        "type": "cilium-cni",
        "socket-path": socket,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
    })
    .to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let stdin_path = dir.path().join("conf.json");
    std::fs::write(&stdin_path, conf).expect("write conf");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cilium-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{container}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")
        .stdin(std::fs::File::open(&stdin_path).expect("open conf"))
        .output()
        .await
        .expect("run cilium-cni");
    Run {
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        success: output.status.success(),
    }
}

#[actix_rt::test]
async fn add_check_del_through_the_agent() {
    let agent = TestAgent::start().await;
    let add = cni("ADD", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(add.success, "ADD failed: {}", add.stdout);
    let result: serde_json::Value = serde_json::from_str(&add.stdout).expect("result JSON");
    assert_eq!(result["cniVersion"], "1.0.0");
    let address = result["ips"][0]["address"].as_str().expect("address");
    assert!(
        address.starts_with("10.200.0.") && address.ends_with("/32"),
        "{address}"
    );
    assert_eq!(result["ips"][0]["gateway"], "10.200.0.1");
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(result["interfaces"][0]["name"], "eth0");

    let endpoints: Vec<api::Endpoint> = agent.client.get("/endpoint").await.expect("list");
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep.status.state, "ready");
    assert_eq!(ep.status.external_identifiers.container_id, "c0ffee");
    assert_eq!(ep.status.external_identifiers.k8s_namespace, "shop");
    let labels = &ep.status.identity.labels;
    for label in [
        "k8s:app=web",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.policy.cluster=test",
    ] {
        assert!(
            labels.iter().any(|l| l == label),
            "{label} missing: {labels:?}"
        );
    }
    let by_container: api::Endpoint = agent
        .client
        .get("/endpoint/container-id:c0ffee")
        .await
        .expect("get by container");
    assert_eq!(by_container.id, ep.id);
    assert_eq!(agent.fake.entries(MapName::Lxc).len(), 1);

    let second = cni("ADD", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(!second.success, "a second ADD of one container must fail");
    let err: serde_json::Value = serde_json::from_str(&second.stdout).expect("error JSON");
    assert_eq!(err["code"], 100);

    let check = cni("CHECK", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(check.success, "CHECK failed: {}", check.stdout);

    let del = cni("DEL", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(del.success, "DEL failed: {}", del.stdout);
    assert!(agent.fake.entries(MapName::Lxc).is_empty());
    let endpoints: Vec<api::Endpoint> = agent.client.get("/endpoint").await.expect("list");
    assert!(endpoints.is_empty());
    let ipam = agent
        .client
        .healthz()
        .await
        .expect("healthz")
        .ipam
        .expect("ipam");
    assert_eq!(ipam.allocated, 0, "the address went back");

    let again = cni("DEL", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(again.success, "DEL is idempotent: {}", again.stdout);
    let check = cni("CHECK", "c0ffee", &agent.socket, "1.0.0").await;
    assert!(!check.success);
    agent.stop().await;
}

#[actix_rt::test]
async fn old_cni_versions_get_old_results() {
    let agent = TestAgent::start().await;
    let add = cni("ADD", "feed", &agent.socket, "0.3.1").await;
    assert!(add.success, "ADD failed: {}", add.stdout);
    let result: serde_json::Value = serde_json::from_str(&add.stdout).expect("result JSON");
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4");
    let del = cni("DEL", "feed", &agent.socket, "0.3.1").await;
    assert!(del.success, "DEL failed: {}", del.stdout);
    agent.stop().await;
}
