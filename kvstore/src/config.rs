//! The etcd client configuration: the YAML file that `--kvstore-opt etcd.config=FILE` names, and
//! the `--kvstore-opt` map itself.
//!
//! The file has the shape upstream Cilium (through etcd's `clientv3/yaml` package) reads:
//!
//! ```yaml
//! endpoints:
//! - https://etcd.example:2379
//! trusted-ca-file: /var/lib/etcd-secrets/etcd-client-ca.crt
//! cert-file: /var/lib/etcd-secrets/etcd-client.crt
//! key-file: /var/lib/etcd-secrets/etcd-client.key
//! ```
//!
//! `ca-file` is accepted as the deprecated spelling of `trusted-ca-file`. Keys this client has no
//! use for (`dial-timeout`, `auto-sync-interval`, ...) are ignored as upstream's non-strict decoder
//! ignores them; settings that would silently weaken or break the connection if ignored
//! (`username`/`password`, `insecure-skip-tls-verify: true`) are rejected with an error instead.
//!
//! Everything is validated here, once, so that a bad file fails at startup with a message that
//! names the file and the problem rather than as a TLS handshake error on every request later.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// `--kvstore-opt` key naming the YAML configuration file.
pub const OPT_CONFIG: &str = "etcd.config";
/// `--kvstore-opt` key giving an endpoint directly (comma-separated for several).
pub const OPT_ADDRESS: &str = "etcd.address";
/// `--kvstore-opt` key: interval of the gRPC (HTTP/2) keep-alive pings.
pub const OPT_KEEPALIVE_HEARTBEAT: &str = "etcd.keepaliveHeartbeat";
/// `--kvstore-opt` key: how long an unanswered keep-alive ping may stay unanswered before the
/// connection is considered dead.
pub const OPT_KEEPALIVE_TIMEOUT: &str = "etcd.keepaliveTimeout";

/// Upstream's default keep-alive heartbeat.
pub const DEFAULT_KEEPALIVE_HEARTBEAT: Duration = Duration::from_secs(15);
/// Upstream's default keep-alive timeout.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(25);
/// How long one request (get, put, txn, lease call, ...) may take before it fails with
/// [`Error::Unavailable`]; a dead etcd never hangs a caller longer than this.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pseudo path used in [`Error::Config`] for problems in the `--kvstore-opt` map itself.
const OPTS_ORIGIN: &str = "--kvstore-opt";

/// How to reach an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// CA bundle that signs the server certificates (PEM). Required for `https://` endpoints.
    pub trusted_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; always paired with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Interval of HTTP/2 keep-alive pings, which detect a silently dead connection.
    pub keepalive_heartbeat: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Upper bound for one request (see [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
}

/// The file as written; validated into an [`EtcdConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    endpoints: Endpoints,
    trusted_ca_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

/// `endpoints` is a list upstream; a single string is accepted too, as hand-written files
/// often have it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Endpoints {
    One(String),
    Many(Vec<String>),
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints::Many(Vec::new())
    }
}

impl Endpoints {
    fn into_vec(self) -> Vec<String> {
        match self {
            Endpoints::One(one) => vec![one],
            Endpoints::Many(many) => many,
        }
    }
}

impl EtcdConfig {
    /// A plaintext configuration for the given endpoints, with default timeouts.
    pub fn from_endpoints(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            trusted_ca_file: None,
            cert_file: None,
            key_file: None,
            keepalive_heartbeat: DEFAULT_KEEPALIVE_HEARTBEAT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Reads and validates the YAML configuration file at `path`.
    pub fn from_file(path: &Path) -> Result<EtcdConfig, Error> {
        let text = fs::read_to_string(path)
            .map_err(|e| config_error(path, format!("cannot read file: {e}")))?;
        let config = EtcdConfig::from_yaml(path, &text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Builds the configuration from `--kvstore-opt` flag values as every binary takes them
    /// (`etcd.config=FILE`, repeatable); a value that is not `KEY=VALUE` is an error naming it.
    pub fn from_kvstore_opt_flags(opts: &[String]) -> Result<EtcdConfig, Error> {
        let pairs = opts
            .iter()
            .map(|opt| {
                opt.split_once('=').ok_or_else(|| {
                    config_error(
                        Path::new(OPTS_ORIGIN),
                        format!("{opt:?} is not KEY=VALUE (etcd.config=FILE)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        EtcdConfig::from_kvstore_opts(pairs)
    }

    /// Builds the configuration from upstream's `--kvstore-opt` map: `etcd.config` (a file, see
    /// [`EtcdConfig::from_file`]) and/or `etcd.address` (used when the file names no endpoints),
    /// plus `etcd.keepaliveHeartbeat` and `etcd.keepaliveTimeout` as Go durations (`15s`, `1m`).
    /// Unknown `etcd.*` options are rejected so that a typo does not go unnoticed.
    pub fn from_kvstore_opts<I, K, V>(opts: I) -> Result<EtcdConfig, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let origin = Path::new(OPTS_ORIGIN);
        let mut file = None;
        let mut address = None;
        let mut heartbeat = None;
        let mut timeout = None;
        for (key, value) in opts {
            let (key, value) = (key.as_ref(), value.as_ref().trim());
            match key {
                OPT_CONFIG => {
                    file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                OPT_ADDRESS => address = Some(value.to_owned()).filter(|a| !a.is_empty()),
                OPT_KEEPALIVE_HEARTBEAT => heartbeat = Some(parse_option_duration(key, value)?),
                OPT_KEEPALIVE_TIMEOUT => timeout = Some(parse_option_duration(key, value)?),
                other => {
                    return Err(config_error(
                        origin,
                        format!(
                            "unknown option {other:?} (known: {OPT_CONFIG}, {OPT_ADDRESS}, {OPT_KEEPALIVE_HEARTBEAT}, {OPT_KEEPALIVE_TIMEOUT})"
                        ),
                    ));
                }
            }
        }
        let address_endpoints = || -> Vec<String> {
            address
                .as_deref()
                .map(|a| {
                    a.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (mut config, path) = match &file {
            Some(path) => {
                let text = fs::read_to_string(path)
                    .map_err(|e| config_error(path, format!("cannot read file: {e}")))?;
                let mut config = EtcdConfig::from_yaml(path, &text)?;
                if config.endpoints.is_empty() {
                    config.endpoints = address_endpoints();
                }
                (config, path.as_path())
            }
            None if address.is_some() => (EtcdConfig::from_endpoints(address_endpoints()), origin),
            None => {
                return Err(config_error(
                    origin,
                    format!("{OPT_CONFIG} or {OPT_ADDRESS} must be given"),
                ));
            }
        };
        if let Some(heartbeat) = heartbeat {
            config.keepalive_heartbeat = heartbeat;
        }
        if let Some(timeout) = timeout {
            config.keepalive_timeout = timeout;
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Whether the client talks TLS (any `https://` endpoint or any TLS file).
    pub fn uses_tls(&self) -> bool {
        self.trusted_ca_file.is_some()
            || self.cert_file.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Decodes the YAML text of `path` without touching the files it names.
    fn from_yaml(path: &Path, text: &str) -> Result<EtcdConfig, Error> {
        // An empty file decodes as YAML null; report it as "no endpoints" rather than a type error.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| config_error(path, format!("invalid YAML: {e}")))?
        };
        if raw.username.is_some() || raw.password.is_some() {
            return Err(config_error(
                path,
                "username/password authentication is not supported; use client certificates (cert-file, key-file)",
            ));
        }
        if raw.insecure_skip_tls_verify {
            return Err(config_error(
                path,
                "insecure-skip-tls-verify is not supported; set trusted-ca-file to the CA that signs the etcd server certificate",
            ));
        }
        // Helm templates render absent files as empty strings.
        let non_empty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let mut config = EtcdConfig::from_endpoints(
            raw.endpoints
                .into_vec()
                .into_iter()
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        );
        config.trusted_ca_file = non_empty(raw.trusted_ca_file).or(non_empty(raw.ca_file));
        config.cert_file = non_empty(raw.cert_file);
        config.key_file = non_empty(raw.key_file);
        Ok(config)
    }

    /// Checks what can be checked before connecting; `origin` names the file in errors.
    pub fn validate(&self, origin: &Path) -> Result<(), Error> {
        if self.endpoints.is_empty() {
            return Err(config_error(
                origin,
                "no endpoints configured (`endpoints: [https://host:2379]`)",
            ));
        }
        let tls_files = self.trusted_ca_file.is_some() || self.cert_file.is_some();
        for endpoint in &self.endpoints {
            let rest = if let Some(rest) = endpoint.strip_prefix("https://") {
                if self.trusted_ca_file.is_none() {
                    return Err(config_error(
                        origin,
                        format!(
                            "endpoint {endpoint} uses TLS but no trusted-ca-file is configured"
                        ),
                    ));
                }
                rest
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                if tls_files {
                    return Err(config_error(
                        origin,
                        format!(
                            "endpoint {endpoint} is plaintext but TLS files are configured; use https://"
                        ),
                    ));
                }
                rest
            } else {
                return Err(config_error(
                    origin,
                    format!("endpoint {endpoint:?} must start with http:// or https://"),
                ));
            };
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(config_error(
                    origin,
                    format!("endpoint {endpoint:?} must be scheme://host:port"),
                ));
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(config_error(
                    origin,
                    "cert-file is set but key-file is missing",
                ));
            }
            (None, Some(_)) => {
                return Err(config_error(
                    origin,
                    "key-file is set but cert-file is missing",
                ));
            }
            _ => {}
        }
        for (what, file) in [
            ("trusted-ca-file", &self.trusted_ca_file),
            ("cert-file", &self.cert_file),
            ("key-file", &self.key_file),
        ] {
            if let Some(file) = file {
                read_pem(origin, what, file)?;
            }
        }
        if self.keepalive_heartbeat.is_zero()
            || self.keepalive_timeout.is_zero()
            || self.request_timeout.is_zero()
        {
            return Err(config_error(
                origin,
                "keep-alive and request timeouts must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Reads a PEM file named by the configuration at `origin`, checking that it holds a PEM block.
pub(crate) fn read_pem(origin: &Path, what: &str, file: &Path) -> Result<Vec<u8>, Error> {
    let bytes = fs::read(file).map_err(|e| {
        config_error(
            origin,
            format!("cannot read {what} {}: {e}", file.display()),
        )
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(config_error(
            origin,
            format!("{what} {} does not contain a PEM block", file.display()),
        ));
    }
    Ok(bytes)
}

fn config_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn parse_option_duration(key: &str, value: &str) -> Result<Duration, Error> {
    parse_go_duration(value).ok_or_else(|| {
        config_error(
            Path::new(OPTS_ORIGIN),
            format!("{key}={value:?} is not a duration (examples: 15s, 1m30s, 500ms)"),
        )
    })
}

/// Parses a Go `time.ParseDuration` string (`1h2m3.5s`, `250ms`, `0`), the format upstream's
/// duration options use. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = after;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn message(err: Error) -> String {
        match err {
            Error::Config { message, .. } => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn plaintext_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "etcd.yaml",
            "endpoints:\n- http://127.0.0.1:2379\n- http://10.0.0.2:2379\n",
        );
        let config = EtcdConfig::from_file(&path).unwrap();
        assert_eq!(
            config.endpoints,
            vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(config.trusted_ca_file, None);
        assert!(!config.uses_tls());
        assert_eq!(config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn tls_file_with_upstream_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.crt", PEM);
        let cert = write(dir.path(), "client.crt", PEM);
        let key = write(
            dir.path(),
            "client.key",
            "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n",
        );
        let yaml = format!(
            "endpoints:\n- https://etcd.example:2379\ntrusted-ca-file: {}\ncert-file: {}\nkey-file: {}\ndial-timeout: 5000000000\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let path = write(dir.path(), "etcd.yaml", &yaml);
        let config = EtcdConfig::from_file(&path).unwrap();
        assert_eq!(config.trusted_ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(config.cert_file.as_deref(), Some(cert.as_path()));
        assert_eq!(config.key_file.as_deref(), Some(key.as_path()));
        assert!(config.uses_tls());
    }

    #[test]
    fn deprecated_ca_file_and_single_endpoint_string() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.crt", PEM);
        let yaml = format!(
            "endpoints: https://etcd:2379\nca-file: {}\ncert-file: ''\nkey-file: ''\n",
            ca.display()
        );
        let path = write(dir.path(), "etcd.yaml", &yaml);
        let config = EtcdConfig::from_file(&path).unwrap();
        assert_eq!(config.endpoints, vec!["https://etcd:2379"]);
        assert_eq!(config.trusted_ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(config.cert_file, None);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.crt", PEM);
        let not_pem = write(dir.path(), "garbage.crt", "hello");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no endpoints"),
            ("endpoints: []\n".into(), "no endpoints"),
            (
                "endpoints: [127.0.0.1:2379]\n".into(),
                "must start with http:// or https://",
            ),
            (
                "endpoints: [unix:///run/etcd.sock]\n".into(),
                "must start with http:// or https://",
            ),
            (
                "endpoints: [https://etcd:2379]\n".into(),
                "no trusted-ca-file",
            ),
            (
                format!(
                    "endpoints: [http://etcd:2379]\ntrusted-ca-file: {}\n",
                    ca.display()
                ),
                "plaintext but TLS files",
            ),
            (
                format!(
                    "endpoints: [https://etcd:2379]\ntrusted-ca-file: {}\ncert-file: {}\n",
                    ca.display(),
                    ca.display()
                ),
                "key-file is missing",
            ),
            (
                format!(
                    "endpoints: [https://etcd:2379]\ntrusted-ca-file: {}\nkey-file: {}\n",
                    ca.display(),
                    ca.display()
                ),
                "cert-file is missing",
            ),
            (
                "endpoints: [https://etcd:2379]\ntrusted-ca-file: /nonexistent/ca.crt\n".into(),
                "cannot read trusted-ca-file /nonexistent/ca.crt",
            ),
            (
                format!(
                    "endpoints: [https://etcd:2379]\ntrusted-ca-file: {}\n",
                    not_pem.display()
                ),
                "does not contain a PEM block",
            ),
            (
                "endpoints: [http://etcd:2379]\nusername: root\npassword: x\n".into(),
                "username/password",
            ),
            (
                "endpoints: [http://etcd:2379]\ninsecure-skip-tls-verify: true\n".into(),
                "insecure-skip-tls-verify",
            ),
            ("endpoints: {a: 1}\n".into(), "invalid YAML"),
            (
                "endpoints: [http://etcd:2379/some/path]\n".into(),
                "scheme://host:port",
            ),
        ];
        for (i, (yaml, expected)) in cases.into_iter().enumerate() {
            let path = write(dir.path(), &format!("case{i}.yaml"), &yaml);
            let err = EtcdConfig::from_file(&path).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&path.display().to_string()),
                "case {i}: {text}"
            );
            let msg = message(err);
            assert!(
                msg.contains(expected),
                "case {i}: {msg:?} does not mention {expected:?}"
            );
        }
    }

    #[test]
    fn missing_file() {
        let err = EtcdConfig::from_file(Path::new("/nonexistent/etcd.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/etcd.yaml"), "{err}");
        assert!(message(err).contains("cannot read file"));
    }

    #[test]
    fn kvstore_opts_address_and_keepalive() {
        let config = EtcdConfig::from_kvstore_opts([
            (
                "etcd.address",
                "http://127.0.0.1:4001, http://127.0.0.1:4002",
            ),
            ("etcd.keepaliveHeartbeat", "5s"),
            ("etcd.keepaliveTimeout", "1m30s"),
        ])
        .unwrap();
        assert_eq!(
            config.endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:4002"]
        );
        assert_eq!(config.keepalive_heartbeat, Duration::from_secs(5));
        assert_eq!(config.keepalive_timeout, Duration::from_secs(90));
    }

    #[test]
    fn kvstore_opt_flags_are_key_value_pairs() {
        let config = EtcdConfig::from_kvstore_opt_flags(&[
            "etcd.address=http://127.0.0.1:4001".to_owned(),
            "etcd.keepaliveHeartbeat=5s".to_owned(),
        ])
        .unwrap();
        assert_eq!(config.endpoints, vec!["http://127.0.0.1:4001"]);
        assert_eq!(config.keepalive_heartbeat, Duration::from_secs(5));
        let err = EtcdConfig::from_kvstore_opt_flags(&["etcd.config".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("not KEY=VALUE"), "{err}");
    }

    #[test]
    fn kvstore_opts_file_wins_over_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "etcd.yaml",
            "endpoints: [http://10.1.1.1:2379]\n",
        );
        let file = path.display().to_string();
        let config = EtcdConfig::from_kvstore_opts([
            ("etcd.config", file.as_str()),
            ("etcd.address", "http://127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(config.endpoints, vec!["http://10.1.1.1:2379"]);

        let empty = write(dir.path(), "empty.yaml", "trusted-ca-file: ''\n");
        let file = empty.display().to_string();
        let config = EtcdConfig::from_kvstore_opts([
            ("etcd.config", file.as_str()),
            ("etcd.address", "http://127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(config.endpoints, vec!["http://127.0.0.1:1"]);
    }

    #[test]
    fn kvstore_opts_errors() {
        let none: [(&str, &str); 0] = [];
        assert!(
            message(EtcdConfig::from_kvstore_opts(none).unwrap_err())
                .contains("etcd.config or etcd.address")
        );
        assert!(
            message(EtcdConfig::from_kvstore_opts([("etcd.adress", "x")]).unwrap_err())
                .contains("unknown option")
        );
        let err = EtcdConfig::from_kvstore_opts([
            ("etcd.address", "http://a:1"),
            ("etcd.keepaliveTimeout", "soon"),
        ])
        .unwrap_err();
        assert!(message(err).contains("etcd.keepaliveTimeout"));
        let err = EtcdConfig::from_kvstore_opts([
            ("etcd.address", "http://a:1"),
            ("etcd.keepaliveTimeout", "0"),
        ])
        .unwrap_err();
        assert!(message(err).contains("greater than zero"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "15", "s", "-1s", "1x", "1s2", "..s", "1.2.3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn go_duration_parser_never_panics(text in "\\PC{0,16}") {
            let _ = parse_go_duration(&text);
        }

        #[test]
        fn go_duration_components_add_up(h in 0u64..100, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let expected = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            let parsed = parse_go_duration(&text).unwrap();
            let diff = parsed.abs_diff(expected);
            proptest::prop_assert!(diff < Duration::from_micros(1), "{text}: {parsed:?}");
        }

        #[test]
        fn yaml_decoder_never_panics(text in "[a-z:\\[\\]{}\\- \n'\"/.0-9]{0,80}") {
            let _ = EtcdConfig::from_yaml(Path::new("fuzz.yaml"), &text);
        }
    }
}
