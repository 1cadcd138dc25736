//! The built `cilium-dbg` binary against an in-process agent over the fake datapath. The
//! binary runs through tokio's process API so the agent keeps serving while it waits.

mod common;

use std::path::Path;

use common::{BAD_POLICY, GOOD_POLICY, TestAgent};

struct Run {
    stdout: String,
    stderr: String,
    success: bool,
}

async fn dbg(socket: &Path, args: &[&str]) -> Run {
    let host = format!("unix://{}", socket.display());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
        .env_remove("CILIUM_SOCK")
        .arg("-H")
        .arg(&host)
        .args(args)
        .output()
        .await
        .expect("run cilium-dbg");
    Run {
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
        success: output.status.success(),
    }
}

fn json(run: &Run) -> serde_json::Value {
    assert!(run.success, "cilium-dbg failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[actix_rt::test]
async fn status_and_identities() {
    let agent = TestAgent::start().await;
    let status = json(&dbg(&agent.socket, &["status", "-o", "json"]).await);
    assert_eq!(status["node-name"], "node-a");
    assert_eq!(status["kvstore"]["state"], "Disabled");

    let human = dbg(&agent.socket, &["status", "--verbose"]).await;
    assert!(human.success, "{}", human.stderr);
    assert!(human.stdout.contains("KVStore:"), "{}", human.stdout);
    assert!(human.stdout.contains("10.200.0.0/24"), "{}", human.stdout);

    let identities = json(&dbg(&agent.socket, &["identity", "list", "-o", "json"]).await);
    let list = identities.as_array().expect("array");
    assert!(
        list.iter()
            .any(|i| i["id"] == 1 && i["labels"][0] == "reserved:host")
    );
    let human = dbg(&agent.socket, &["identity", "get", "2"]).await;
    assert!(human.stdout.contains("reserved:world"), "{}", human.stdout);
    agent.stop().await;
}

#[actix_rt::test]
async fn policy_import_get_delete() {
    let agent = TestAgent::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&good, GOOD_POLICY).expect("write");
    std::fs::write(&bad, BAD_POLICY).expect("write");

    let imported = dbg(
        &agent.socket,
        &["policy", "import", &good.display().to_string()],
    )
    .await;
    assert!(imported.success, "{}", imported.stderr);
    assert!(
        imported.stdout.starts_with("Revision: "),
        "{}",
        imported.stdout
    );

    let refused = dbg(
        &agent.socket,
        &["policy", "import", &bad.display().to_string()],
    )
    .await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("fromEndpointz"),
        "{}",
        refused.stderr
    );

    let policy = json(&dbg(&agent.socket, &["policy", "get", "-o", "json"]).await);
    let rules: serde_json::Value =
        serde_json::from_str(policy["policy"].as_str().expect("text")).expect("rules json");
    assert_eq!(rules.as_array().map(Vec::len), Some(1));

    let selectors = json(&dbg(&agent.socket, &["policy", "selectors", "-o", "json"]).await);
    assert!(!selectors.as_array().expect("array").is_empty());

    let deleted = json(
        &dbg(
            &agent.socket,
            &["policy", "delete", "backend", "-o", "json"],
        )
        .await,
    );
    assert_eq!(deleted["deleted"], 1);
    let none = dbg(&agent.socket, &["policy", "delete"]).await;
    assert!(!none.success);
    assert!(none.stderr.contains("NAME or --all"), "{}", none.stderr);
    agent.stop().await;
}

#[actix_rt::test]
async fn services_and_bpf_maps() {
    let agent = TestAgent::start().await;
    let update = dbg(
        &agent.socket,
        &[
            "service",
            "update",
            "--id",
            "3",
            "--frontend",
            "10.96.0.1:80",
            "--backends",
            "10.200.0.5:8080,10.200.0.6:8080",
        ],
    )
    .await;
    assert!(update.success, "{}", update.stderr);
    assert!(
        update.stdout.contains("Added service with 2 backends"),
        "{}",
        update.stdout
    );

    let list = json(&dbg(&agent.socket, &["service", "list", "-o", "json"]).await);
    assert_eq!(list[0]["spec"]["id"], 3);
    assert_eq!(
        list[0]["spec"]["backend-addresses"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let human = dbg(&agent.socket, &["service", "list"]).await;
    assert!(
        human.stdout.contains("10.96.0.1:80/TCP"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("2 => 10.200.0.6:8080/TCP (active)"),
        "{}",
        human.stdout
    );

    let lb = json(&dbg(&agent.socket, &["bpf", "lb", "list", "-o", "json"]).await);
    let maps = lb.as_array().expect("three maps");
    assert_eq!(maps.len(), 3);
    assert_eq!(maps[0]["cache"].as_array().map(Vec::len), Some(3));

    let ct = json(
        &dbg(
            &agent.socket,
            &["bpf", "ct", "list", "global", "-o", "json"],
        )
        .await,
    );
    assert_eq!(ct.as_array().map(Vec::len), Some(2));
    let metrics = dbg(&agent.socket, &["bpf", "metrics", "list"]).await;
    assert!(metrics.success, "{}", metrics.stderr);
    assert_eq!(metrics.stdout.trim(), "No entries found.");

    let deleted = dbg(&agent.socket, &["service", "delete", "3"]).await;
    assert!(deleted.success, "{}", deleted.stderr);
    let again = dbg(&agent.socket, &["service", "delete", "3"]).await;
    assert!(!again.success);
    assert!(again.stderr.contains("404"), "{}", again.stderr);

    let nodes = json(&dbg(&agent.socket, &["node", "list", "-o", "json"]).await);
    assert_eq!(nodes["self"], "test/node-a");
    agent.stop().await;
}

#[tokio::test]
async fn unreachable_agent_says_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cilium.sock");
    let run = dbg(&socket, &["status"]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains(&format!(
            "cannot connect to the agent at unix://{}: is cilium-agent running?",
            socket.display()
        )),
        "{}",
        run.stderr
    );
}
