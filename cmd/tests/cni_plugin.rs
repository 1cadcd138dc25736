//! The built `cilium-cni` binary, called as a container runtime calls it.

use std::io::Write;
use std::process::{Command, Stdio};

struct Run {
    stdout: String,
    success: bool,
}

fn cni(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cilium-cni"));
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn cilium-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    Run {
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        success: output.status.success(),
    }
}

fn error_of(run: &Run) -> serde_json::Value {
    assert!(!run.success, "expected a failure, got {}", run.stdout);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("error JSON");
    for field in ["cniVersion", "code", "msg", "details"] {
        assert!(value.get(field).is_some(), "{field} missing in {value}");
    }
    value
}

fn conf(socket: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "socket-path": socket,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
    })
    .to_string()
}

#[test]
fn version_lists_supported_versions() {
    let run = cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(run.success);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(value["cniVersion"], "1.0.0");
    let versions: Vec<&str> = value["supportedVersions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
}

#[test]
fn malformed_stdin_is_code_4() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let value = error_of(&cni(&env, "{not json"));
    assert_eq!(value["code"], 4);
    let value = error_of(&cni(
        &env,
        r#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#,
    ));
    assert_eq!(value["code"], 4);
    let value = error_of(&cni(
        &env,
        r#"{"cniVersion":"2.0.0","name":"x","type":"cilium-cni"}"#,
    ));
    assert_eq!(value["code"], 1);
}

#[test]
fn missing_netns_is_code_7() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("none.sock");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let value = error_of(&cni(&env, &conf(&socket.display().to_string())));
    assert_eq!(value["code"], 7);
    assert!(
        value["msg"].as_str().expect("msg").contains("CNI_NETNS"),
        "{value}"
    );
}

#[test]
fn unknown_command_is_an_error() {
    let value = error_of(&cni(&[("CNI_COMMAND", "FROB")], &conf("/nonexistent.sock")));
    assert_eq!(value["code"], 7);
    assert!(
        value["msg"].as_str().expect("msg").contains("FROB"),
        "{value}"
    );
    let value = error_of(&cni(&[], &conf("/nonexistent.sock")));
    assert_eq!(value["code"], 7, "no CNI_COMMAND at all");
}

#[test]
fn unreachable_agent_is_try_again_later() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cilium.sock");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"),
    ];
    let value = error_of(&cni(&env, &conf(&socket.display().to_string())));
    assert_eq!(value["code"], 11);
    assert!(
        value["msg"]
            .as_str()
            .expect("msg")
            .contains("is cilium-agent running"),
        "{value}"
    );
    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let value = error_of(&cni(&del, &conf(&socket.display().to_string())));
    assert_eq!(value["code"], 11);
}
