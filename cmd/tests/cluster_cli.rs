//! `cilium` (the cluster CLI) against a private etcd: policy and service apply/list/delete
//! round trips, the keys read back in the agents' layout, and invalid input refused with a
//! non-zero exit and nothing written.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use actors::clusterstate::decode_policy;
use kvstore::Backend;
use kvstore::keys::{ClusterService, StoreValue};
use kvstore::testing::etcd::EtcdServer;
use model::policy::PolicyKind;

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-client
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
        protocol: TCP
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: deny-world
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities:
    - world
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
spec:
  podSelector: {}
  policyTypes:
  - Ingress
"#;

/// The second document has a port out of range.
const INVALID: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fine
spec:
  endpointSelector: {}
  egress:
  - toEntities:
    - world
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: broken
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - port: "70000"
"#;

struct Cli<'a> {
    etcd_config: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let opt = format!("etcd.config={}", self.etcd_config.display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cilium"))
            .args(["--kvstore-opt", &opt])
            .args(args)
            .env_remove("CILIUM_KVSTORE_OPT")
            .env_remove("CILIUM_CLUSTER_NAME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "cilium {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn write_etcd_config(dir: &Path, server: &EtcdServer) -> std::path::PathBuf {
    let path = dir.join("etcd.yaml");
    std::fs::write(&path, format!("endpoints:\n- {}\n", server.endpoint())).unwrap();
    path
}

async fn keys(backend: &dyn Backend, prefix: &str) -> Vec<String> {
    backend
        .list_prefix(prefix)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_apply_list_and_delete_in_the_agents_layout() {
    let server = EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_etcd_config(dir.path(), &server);
    let cli = Cli {
        etcd_config: &config,
    };
    let backend = server.client().await;
    let policy_file = dir.path().join("policies.yaml");
    std::fs::write(&policy_file, POLICIES).unwrap();

    let out = cli.ok(
        &["policy", "apply", "-f", policy_file.to_str().unwrap()],
        None,
    );
    assert!(
        out.contains("CiliumNetworkPolicy shop/allow-client created"),
        "{out}"
    );
    assert_eq!(
        keys(&backend, "cilium/config/policies/v1/").await,
        [
            "cilium/config/policies/v1/_clusterwide/deny-world",
            "cilium/config/policies/v1/default/default-deny",
            "cilium/config/policies/v1/shop/allow-client",
        ]
    );
    // Each value is one document the agents' watcher accepts.
    for (key, kind) in [
        (
            "cilium/config/policies/v1/_clusterwide/deny-world",
            PolicyKind::CiliumClusterwideNetworkPolicy,
        ),
        (
            "cilium/config/policies/v1/default/default-deny",
            PolicyKind::NetworkPolicy,
        ),
        (
            "cilium/config/policies/v1/shop/allow-client",
            PolicyKind::CiliumNetworkPolicy,
        ),
    ] {
        let kv = backend.get(key).await.unwrap().unwrap();
        let document = decode_policy(key, &kv.value).unwrap();
        assert_eq!(document.kind(), kind);
        let json: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(json["kind"], kind.as_str());
    }

    // Applying again changes nothing; from stdin as JSON output.
    let before = backend
        .get("cilium/config/policies/v1/shop/allow-client")
        .await
        .unwrap()
        .unwrap();
    let out = cli.ok(
        &["-o", "json", "policy", "apply", "-f", "-"],
        Some(POLICIES),
    );
    let applied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(applied.as_array().unwrap().len(), 3);
    assert!(
        applied
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["result"] == "unchanged"),
        "{out}"
    );
    let after = backend
        .get("cilium/config/policies/v1/shop/allow-client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.mod_revision, before.mod_revision);

    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["policy", "list", "-o", "json"], None)).unwrap();
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("CiliumClusterwideNetworkPolicy", "deny-world"),
            ("NetworkPolicy", "default-deny"),
            ("CiliumNetworkPolicy", "allow-client"),
        ]
    );
    let table = cli.ok(&["policy", "list"], None);
    assert!(
        table.contains("allow-client") && table.contains("<clusterwide>"),
        "{table}"
    );

    // Delete by name (namespaced, cluster-wide), a missing one fails, then --all.
    cli.ok(&["policy", "delete", "allow-client", "-n", "shop"], None);
    cli.ok(&["policy", "delete", "deny-world", "--clusterwide"], None);
    let missing = cli.run(&["policy", "delete", "allow-client", "-n", "shop"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    assert_eq!(
        keys(&backend, "cilium/config/policies/v1/").await,
        ["cilium/config/policies/v1/default/default-deny"]
    );
    cli.ok(&["policy", "delete", "--all"], None);
    assert!(
        keys(&backend, "cilium/config/policies/v1/")
            .await
            .is_empty()
    );

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_document_fails_the_apply_and_writes_nothing() {
    let server = EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_etcd_config(dir.path(), &server);
    let cli = Cli {
        etcd_config: &config,
    };
    let backend = server.client().await;

    let out = cli.run(&["policy", "apply", "-f", "-"], Some(INVALID));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(
        stderr.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(keys(&backend, "cilium/").await.is_empty());

    // Valid but unsupported (L7 rules) is refused the same way, naming the policy.
    let l7 = INVALID.replace(
        "\"70000\"",
        "\"80\"\n        protocol: TCP\n      rules:\n        http:\n        - method: GET",
    );
    let out = cli.run(&["policy", "apply", "-f", "-"], Some(&l7));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken") && stderr.contains("not supported"),
        "{stderr}"
    );
    assert!(keys(&backend, "cilium/").await.is_empty());

    // An unreachable kvstore is an error that says what to check.
    let nowhere = dir.path().join("nowhere.yaml");
    std::fs::write(&nowhere, "endpoints:\n- http://127.0.0.1:1\n").unwrap();
    let out = Cli {
        etcd_config: &nowhere,
    }
    .run(&["policy", "list"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--kvstore-opt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn services_apply_list_and_delete_as_cluster_services() {
    let server = EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_etcd_config(dir.path(), &server);
    let cli = Cli {
        etcd_config: &config,
    };
    let backend = server.client().await;

    cli.ok(
        &[
            "--cluster-name",
            "c1",
            "service",
            "apply",
            "--name",
            "web",
            "--frontend",
            "10.96.0.10:80",
            "--backends",
            "10.0.1.5:8080,10.0.2.5:8080",
        ],
        None,
    );
    let key = "cilium/state/services/v1/c1/default/web";
    let kv = backend.get(key).await.unwrap().unwrap();
    let service = ClusterService::decode(&kv.value).unwrap();
    assert_eq!(service.key_name(), "c1/default/web");
    let (frontends, ignored) = actors::clusterstate::frontends_of(&service);
    assert!(ignored.is_empty());
    let backends: Vec<String> = frontends
        .values()
        .flatten()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(backends, ["10.0.1.5:8080", "10.0.2.5:8080"]);

    assert!(!service.include_external && !service.shared);

    // A global service: shared by default, with its affinity in the (ext) label.
    cli.ok(
        &[
            "--cluster-name",
            "c1",
            "service",
            "apply",
            "--name",
            "echo",
            "--frontend",
            "10.96.0.11:80",
            "--backends",
            "10.0.1.6:8080",
            "--global",
            "--affinity",
            "local",
            "--cluster-id",
            "7",
        ],
        None,
    );
    let kv = backend
        .get("cilium/state/services/v1/c1/default/echo")
        .await
        .unwrap()
        .unwrap();
    let global = ClusterService::decode(&kv.value).unwrap();
    assert!(global.include_external && global.shared);
    assert_eq!(
        global.cluster_id, 7,
        "other clusters check the record's cluster id"
    );
    assert_eq!(
        global
            .labels
            .get(actors::clusterstate::AFFINITY_LABEL)
            .map(String::as_str),
        Some("local")
    );
    let out = cli.run(
        &[
            "--cluster-name",
            "c1",
            "service",
            "apply",
            "--name",
            "x",
            "--frontend",
            "10.96.0.12:80",
            "--affinity",
            "local",
        ],
        None,
    );
    assert!(!out.status.success(), "--affinity needs --global");
    cli.ok(&["--cluster-name", "c1", "service", "delete", "echo"], None);

    // From a file: the cluster is filled in; a record of another cluster is refused.
    let file = r#"
namespace: shop
name: dns
frontends:
  10.96.0.53:
    dns: {Protocol: UDP, Port: 53}
backends:
  10.0.1.9:
    dns: {Protocol: UDP, Port: 5353}
"#;
    cli.ok(
        &["--cluster-name", "c1", "service", "apply", "-f", "-"],
        Some(file),
    );
    let other = format!("cluster: c2\n{file}");
    let out = cli.run(
        &["--cluster-name", "c1", "service", "apply", "-f", "-"],
        Some(&other),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-name c2"));
    // Something agents would ignore (an SCTP frontend) is refused.
    let sctp = file.replace("Protocol: UDP, Port: 53", "Protocol: SCTP, Port: 53");
    let out = cli.run(
        &["--cluster-name", "c1", "service", "apply", "-f", "-"],
        Some(&sctp),
    );
    assert!(!out.status.success());

    let listed: serde_json::Value = serde_json::from_str(&cli.ok(
        &["--cluster-name", "c1", "service", "list", "-o", "json"],
        None,
    ))
    .unwrap();
    let keys_listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys_listed,
        [
            "cilium/state/services/v1/c1/default/web",
            "cilium/state/services/v1/c1/shop/dns"
        ]
    );
    let table = cli.ok(&["--cluster-name", "c1", "service", "list"], None);
    assert!(table.contains("10.96.0.53:53/UDP"), "{table}");

    cli.ok(
        &[
            "--cluster-name",
            "c1",
            "service",
            "delete",
            "dns",
            "-n",
            "shop",
        ],
        None,
    );
    assert_eq!(keys(&backend, "cilium/state/services/v1/").await, [key]);
    // Another cluster's name finds nothing.
    let out = cli.run(&["--cluster-name", "c2", "service", "delete", "web"], None);
    assert!(!out.status.success());

    server.stop().await.unwrap();
}
