//! The CNI plugin's logic (spec 1.0.0), apart from process IO so it can be tested: the
//! environment and stdin go in, the text for stdout and the exit status come out.
//!
//! The plugin runs in the node's namespace, called by the container runtime. ADD asks the
//! agent to create the endpoint (the agent makes the veth pair, the address and the routes)
//! and prints the result; DEL deletes it by container id and succeeds when it is already gone
//! (runtimes retry DEL); CHECK asks whether the endpoint exists; VERSION needs no agent.
//! Failures are CNI error objects with the spec's codes, so the runtime can tell a bad call
//! from "try again later".

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::api::{self, CONTAINER_ID_PREFIX, EndpointChangeRequest, LabelPair};
use crate::client::{AgentClient, ClientError, DEFAULT_SOCKET};

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version of errors and results when the caller's is unknown.
pub const CURRENT_VERSION: &str = "1.0.0";
/// The plugin's `type` in the network configuration.
pub const PLUGIN_TYPE: &str = "cilium-cni";

/// CNI error codes (spec "Error" section); 100 and up are this plugin's.
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_NETWORK_CONFIG: u32 = 4;
    pub const INVALID_ENV: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The agent refused the request.
    pub const AGENT_REFUSED: u32 = 100;
    /// The endpoint does not exist (CHECK).
    pub const ENDPOINT_NOT_FOUND: u32 = 101;
    /// The agent's answer could not be used.
    pub const BAD_AGENT_ANSWER: u32 = 102;
}

/// A CNI error object, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (code {code})")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            cni_version: CURRENT_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.cni_version);
        self
    }
}

/// `args.cni` of the network configuration (the conventional pod labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniArgs {
    #[serde(default)]
    pub labels: Vec<LabelPair>,
}

/// `args` of the network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NetConfArgs {
    #[serde(default)]
    pub cni: CniArgs,
}

/// The network configuration on stdin. Other fields (IPAM, DNS, prevResult, ...) are allowed
/// and ignored, as runtimes pass through what the config file holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default, rename = "socket-path")]
    pub socket_path: Option<PathBuf>,
    #[serde(default)]
    pub args: NetConfArgs,
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        CniEnv {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }
}

/// Parses `CNI_ARGS` (`K=V;K=V`).
pub fn parse_cni_args(args: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                codes::INVALID_ENV,
                "invalid CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            ));
        };
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            success: true,
        }
    }

    fn error(err: &CniError) -> Self {
        Outcome {
            stdout: serde_json::to_string(err).unwrap_or_else(|_| err.msg.clone()),
            success: false,
        }
    }
}

/// The VERSION answer.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn require(value: &Option<String>, name: &str) -> Result<String, CniError> {
    value.clone().ok_or_else(|| {
        CniError::new(
            codes::INVALID_ENV,
            format!("{name} is not set"),
            format!("the container runtime must set {name} for this command"),
        )
    })
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|err| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "invalid network configuration on stdin",
            err.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!("unsupported CNI version {:?}", conf.cni_version),
            format!("supported versions: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if conf.plugin_type != PLUGIN_TYPE {
        return Err(CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            format!("network configuration type is {:?}", conf.plugin_type),
            format!("this plugin is {PLUGIN_TYPE:?}"),
        )
        .with_version(&conf.cni_version));
    }
    Ok(conf)
}

fn agent_error(err: ClientError, version: &str) -> CniError {
    let code = match &err {
        ClientError::Connect { .. } => codes::TRY_AGAIN_LATER,
        ClientError::Api { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE => {
            codes::TRY_AGAIN_LATER
        }
        ClientError::Api { .. } => codes::AGENT_REFUSED,
        _ => codes::BAD_AGENT_ANSWER,
    };
    let details = match &err {
        ClientError::Connect { .. } => {
            "start cilium-agent or set socket-path in the network configuration".to_owned()
        }
        other => datapath::api::error_chain(other),
    };
    CniError::new(code, err.to_string(), details).with_version(version)
}

/// Runs one plugin invocation.
pub async fn run(env: &CniEnv, stdin: &[u8]) -> Outcome {
    match dispatch(env, stdin).await {
        Ok(stdout) => Outcome::ok(stdout),
        Err(err) => Outcome::error(&err),
    }
}

async fn dispatch(env: &CniEnv, stdin: &[u8]) -> Result<String, CniError> {
    let command = require(&env.command, "CNI_COMMAND")?;
    if command == "VERSION" {
        // The caller's version decides the answer's format, but VERSION must work even when
        // stdin holds nothing useful.
        let version = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| CURRENT_VERSION.to_owned());
        return Ok(version_json(&version));
    }
    if !matches!(command.as_str(), "ADD" | "DEL" | "CHECK") {
        return Err(CniError::new(
            codes::INVALID_ENV,
            format!("unknown CNI_COMMAND {command:?}"),
            "expected ADD, DEL, CHECK or VERSION",
        ));
    }
    let conf = parse_conf(stdin)?;
    let version = conf.cni_version.clone();
    let with_version = |e: CniError| e.with_version(&version);
    let container_id = require(&env.container_id, "CNI_CONTAINERID").map_err(with_version)?;
    let ifname = require(&env.ifname, "CNI_IFNAME").map_err(with_version)?;
    let args = parse_cni_args(env.args.as_deref().unwrap_or("")).map_err(with_version)?;
    let socket = conf
        .socket_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let client = AgentClient::new(socket);
    let endpoint_path = format!("/endpoint/{CONTAINER_ID_PREFIX}{container_id}");
    match command.as_str() {
        "ADD" => {
            let netns = require(&env.netns, "CNI_NETNS").map_err(with_version)?;
            let request = EndpointChangeRequest {
                container_id,
                interface_name: ifname.clone(),
                netns_path: netns.clone(),
                k8s_pod_name: args.get("K8S_POD_NAME").cloned().unwrap_or_default(),
                k8s_namespace: args.get("K8S_POD_NAMESPACE").cloned().unwrap_or_default(),
                labels: conf.args.cni.labels.clone(),
            };
            let endpoint: api::Endpoint = client
                .send_json(Method::PUT, "/endpoint/0", &request)
                .await
                .map_err(|err| agent_error(err, &version))?;
            add_result(&version, &ifname, &netns, &endpoint)
        }
        "DEL" => match client
            .request_raw(Method::DELETE, &endpoint_path, None)
            .await
        {
            Ok(_) => Ok(String::new()),
            // Runtimes call DEL again after a partial failure: gone is success.
            Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => Ok(String::new()),
            Err(err) => Err(agent_error(err, &version)),
        },
        _ => {
            require(&env.netns, "CNI_NETNS").map_err(with_version)?;
            match client.get::<api::Endpoint>(&endpoint_path).await {
                Ok(_) => Ok(String::new()),
                Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => Err(CniError::new(
                    codes::ENDPOINT_NOT_FOUND,
                    format!("no endpoint for container {:?}", env.container_id),
                    "the endpoint was deleted or never created",
                )
                .with_version(&version)),
                Err(err) => Err(agent_error(err, &version)),
            }
        }
    }
}

/// The ADD result in the caller's version: 1.0.0 (and 0.4.0, 0.3.x, which add `version` to
/// each IP).
fn add_result(
    version: &str,
    ifname: &str,
    netns: &str,
    endpoint: &api::Endpoint,
) -> Result<String, CniError> {
    let networking = &endpoint.status.networking;
    let Some(addressing) = networking.addressing.first() else {
        return Err(CniError::new(
            codes::BAD_AGENT_ANSWER,
            format!(
                "the agent created endpoint {} without an address",
                endpoint.id
            ),
            "",
        )
        .with_version(version));
    };
    let mut ip = serde_json::json!({
        "address": format!("{}/32", addressing.ipv4),
        "gateway": addressing.ipv4_gateway.to_string(),
        "interface": 0,
    });
    if version != "1.0.0" {
        ip["version"] = serde_json::json!("4");
    }
    let mut interface = serde_json::json!({"name": ifname, "sandbox": netns});
    if !networking.mac.is_empty() {
        interface["mac"] = serde_json::json!(networking.mac);
    }
    let default_route = Ipv4Addr::UNSPECIFIED;
    let result = serde_json::json!({
        "cniVersion": version,
        "interfaces": [interface],
        "ips": [ip],
        "routes": [{"dst": format!("{default_route}/0"), "gw": addressing.ipv4_gateway.to_string()}],
    });
    Ok(result.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_parse() {
        let args =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p").expect("valid");
        assert_eq!(
            args.get("K8S_POD_NAMESPACE").map(String::as_str),
            Some("ns")
        );
        assert_eq!(args.get("K8S_POD_NAME").map(String::as_str), Some("p"));
        let err = parse_cni_args("novalue").expect_err("invalid");
        assert_eq!(err.code, codes::INVALID_ENV);
    }

    #[test]
    fn config_checks_version_and_type() {
        let err = parse_conf(br#"{"cniVersion":"9.9.9","type":"cilium-cni"}"#).expect_err("v");
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
        let err = parse_conf(br#"{"cniVersion":"1.0.0","type":"bridge"}"#).expect_err("type");
        assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG);
        let conf = parse_conf(
            br#"{"cniVersion":"0.4.0","name":"n","type":"cilium-cni","ipam":{},
                "args":{"cni":{"labels":[{"key":"app","value":"web"}]}}}"#,
        )
        .expect("valid");
        assert_eq!(conf.args.cni.labels.len(), 1);
    }

    #[test]
    fn add_result_has_the_address_gateway_and_route() {
        let endpoint = api::Endpoint {
            id: 12,
            status: api::EndpointStatus {
                state: "ready".to_owned(),
                identity: api::Identity {
                    id: 1234,
                    labels: vec![],
                },
                networking: api::EndpointNetworking {
                    addressing: vec![api::EndpointAddressing {
                        ipv4: "10.1.0.7".parse().expect("ip"),
                        ipv4_gateway: "10.1.0.1".parse().expect("ip"),
                    }],
                    interface_name: "lxc12".to_owned(),
                    mac: "02:00:00:00:00:01".to_owned(),
                    host_mac: String::new(),
                },
                external_identifiers: api::EndpointIdentifiers::default(),
                policy_revision: 1,
            },
        };
        let text = add_result("1.0.0", "eth0", "/var/run/netns/p", &endpoint).expect("result");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["ips"][0]["address"], "10.1.0.7/32");
        assert_eq!(v["ips"][0]["gateway"], "10.1.0.1");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["interfaces"][0]["sandbox"], "/var/run/netns/p");
        let old = add_result("0.3.1", "eth0", "/p", &endpoint).expect("result");
        assert!(old.contains(r#""version":"4""#), "{old}");
    }
}
