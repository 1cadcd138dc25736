//! A private etcd server per test.
//!
//! Each [`EtcdServer`] runs its own `etcd` process on free loopback ports with a data directory in
//! a fresh temporary directory, so tests run in parallel without sharing state. The process is
//! stopped by its PID (never by name) and killed when the server is dropped; the data directory
//! goes with it. Tests that need etcd fail, rather than skip, when the binary is missing.
//!
//! Beyond start/stop/restart, a server can run over TLS with client certificates
//! ([`EtcdServer::start_tls`]) and can be changed while its clients are cut off
//! ([`EtcdServer::while_unreachable`]), which makes "what happened while the watch was
//! disconnected" deterministic to test.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::backend::Backend;
use crate::config::EtcdConfig;
use crate::error::Error;
use crate::etcd::EtcdBackend;

/// How long a starting etcd may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to find a pair of free ports that etcd can actually bind.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the etcd log quoted in errors.
const LOG_TAIL_LINES: usize = 60;

/// Why a private etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    #[error(
        "{binary} not found (looked at ${env}, /usr/bin/{binary} and PATH): install Debian's etcd-server package (`apt-get install etcd-server`, which provides etcd and etcdctl) or set {env}"
    )]
    BinaryMissing {
        binary: &'static str,
        env: &'static str,
    },

    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    #[error("etcd exited while starting ({status}); log {log_path}:\n{log}")]
    Exited {
        status: ExitStatus,
        log_path: PathBuf,
        log: String,
    },

    #[error(
        "etcd did not answer on {endpoint} within {timeout:?} (last error: {last_error}); log {log_path}:\n{log}"
    )]
    NotReady {
        endpoint: String,
        timeout: Duration,
        last_error: String,
        log_path: PathBuf,
        log: String,
    },

    #[error("etcdctl {args:?} failed ({status}): {stderr}")]
    Etcdctl {
        args: Vec<String>,
        status: ExitStatus,
        stderr: String,
    },

    #[error("openssl {args:?} failed ({status}): {stderr}")]
    Openssl {
        args: Vec<String>,
        status: ExitStatus,
        stderr: String,
    },

    #[error("etcdctl {args:?} printed output that is not UTF-8")]
    EtcdctlOutput { args: Vec<String> },
}

fn io_error(op: impl Into<String>) -> impl FnOnce(io::Error) -> EtcdServerError {
    let op = op.into();
    move |source| EtcdServerError::Io { op, source }
}

/// A running private etcd (see the module docs).
#[derive(Debug)]
pub struct EtcdServer {
    etcd: PathBuf,
    etcdctl: PathBuf,
    dir: TempDir,
    /// Changes only while [`EtcdServer::while_unreachable`] runs.
    client_port: AtomicU16,
    peer_port: u16,
    /// Set for a server started with [`EtcdServer::start_tls`].
    tls: Option<TlsFiles>,
    child: Mutex<Option<Child>>,
}

/// Certificates of a TLS server: one CA signs the server and the client certificate.
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> Result<EtcdServer, EtcdServerError> {
        EtcdServer::start_with(false).await
    }

    /// Starts etcd serving clients over TLS with client-certificate authentication only, with a
    /// throw-away CA made by the `openssl` command; [`EtcdServer::config`] then carries the CA
    /// and a client certificate.
    pub async fn start_tls() -> Result<EtcdServer, EtcdServerError> {
        EtcdServer::start_with(true).await
    }

    async fn start_with(tls: bool) -> Result<EtcdServer, EtcdServerError> {
        let etcd = find_binary("etcd", "ETCD_BIN")?;
        let etcdctl = find_binary("etcdctl", "ETCDCTL_BIN")?;
        let dir = tempfile::Builder::new()
            .prefix("kvstore-etcd-")
            .tempdir()
            .map_err(io_error("create etcd temp dir"))?;
        let tls = if tls {
            Some(make_certificates(dir.path()).await?)
        } else {
            None
        };
        let mut server = EtcdServer {
            etcd,
            etcdctl,
            dir,
            client_port: AtomicU16::new(0),
            peer_port: 0,
            tls,
            child: Mutex::new(None),
        };
        let mut attempt = 1;
        loop {
            let (client_port, peer_port) = free_port_pair()?;
            server.client_port.store(client_port, Ordering::Relaxed);
            server.peer_port = peer_port;
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Another process took a port between our probe and etcd's bind: new ports.
                Err(EtcdServerError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("address already in use") =>
                {
                    attempt += 1;
                    let data = server.data_dir();
                    if data.exists() {
                        fs::remove_dir_all(&data)
                            .map_err(io_error(format!("remove {}", data.display())))?;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` for a TLS server).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://127.0.0.1:{}",
            self.client_port.load(Ordering::Relaxed)
        )
    }

    /// A configuration pointing at this server (with CA and client certificate for TLS).
    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::from_endpoints(vec![self.endpoint()]);
        if let Some(tls) = &self.tls {
            config.trusted_ca_file = Some(tls.ca.clone());
            config.cert_file = Some(tls.client_cert.clone());
            config.key_file = Some(tls.client_key.clone());
        }
        config
    }

    /// A new client (its own connection and lock session) for this server.
    pub async fn client(&self) -> EtcdBackend {
        // connect() fails only on configuration errors; this configuration is a loopback URL
        // and, for TLS, certificate files this server generated and still owns.
        EtcdBackend::connect(&self.config())
            .await
            .expect("the configuration of a running test etcd is valid")
    }

    /// Stops etcd: SIGTERM to its PID, then SIGKILL if it has not exited after 10 s. Stopping
    /// a stopped server does nothing.
    pub async fn stop(&self) -> Result<(), EtcdServerError> {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut child) = child else {
            return Ok(());
        };
        if child.try_wait().map_err(io_error("poll etcd"))?.is_some() {
            return Ok(());
        }
        let pid = child.id().to_string();
        // A failed SIGTERM (the process exited just now) is covered by the kill below.
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait().map_err(io_error("poll etcd"))?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(pid, "etcd ignored SIGTERM; killing it");
                child.kill().map_err(io_error("kill etcd"))?;
                child.wait().map_err(io_error("wait for etcd"))?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops etcd and starts it again on the same ports with the same data.
    pub async fn restart(&self) -> Result<(), EtcdServerError> {
        self.stop().await?;
        self.launch().await
    }

    /// Runs `f` with a client of this etcd while every other client is cut off from it: etcd is
    /// restarted on a different client port for the duration, then restarted on its own port.
    /// Tests use it to change (and compact) the store deterministically while watches are
    /// disconnected.
    pub async fn while_unreachable<F, Fut, T>(&self, f: F) -> Result<T, EtcdServerError>
    where
        F: FnOnce(EtcdBackend) -> Fut,
        Fut: Future<Output = T>,
    {
        self.stop().await?;
        let own_port = self.client_port.load(Ordering::Relaxed);
        let side_port = {
            let listener =
                TcpListener::bind("127.0.0.1:0").map_err(io_error("bind a free loopback port"))?;
            listener
                .local_addr()
                .map_err(io_error("read the port of a loopback listener"))?
                .port()
        };
        self.client_port.store(side_port, Ordering::Relaxed);
        let launched = self.launch().await;
        let result = match launched {
            Ok(()) => Ok(f(self.client().await).await),
            Err(error) => Err(error),
        };
        let stopped = self.stop().await;
        self.client_port.store(own_port, Ordering::Relaxed);
        let result = result?;
        stopped?;
        self.launch().await?;
        Ok(result)
    }

    /// Runs `etcdctl` (API v3) against this server and returns its standard output.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String, EtcdServerError> {
        let output = tokio::process::Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(self.tls.iter().flat_map(|tls| {
                [
                    format!("--cacert={}", tls.ca.display()),
                    format!("--cert={}", tls.client_cert.display()),
                    format!("--key={}", tls.client_key.display()),
                ]
            }))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_error(format!("run {}", self.etcdctl.display())))?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if !output.status.success() {
            return Err(EtcdServerError::Etcdctl {
                args,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| EtcdServerError::EtcdctlOutput { args })
    }

    /// Compacts the store's history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdServerError> {
        self.etcdctl(&["compact", &revision.to_string()])
            .await
            .map(drop)
    }

    /// The etcd log file (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Spawns etcd on the chosen ports and waits until it answers.
    async fn launch(&self) -> Result<(), EtcdServerError> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(format!("open {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_error("duplicate log file handle"))?;
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let data_dir = self.data_dir();
        let mut command = Command::new(&self.etcd);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=default")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_error(format!("start {}", self.etcd.display())))?;
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), EtcdServerError> {
        let mut config = self.config();
        config.request_timeout = Duration::from_secs(1);
        let probe = EtcdBackend::connect(&config)
            .await
            .map_err(|e| EtcdServerError::NotReady {
                endpoint: self.endpoint(),
                timeout: READY_TIMEOUT,
                last_error: e.to_string(),
                log_path: self.log_path(),
                log: self.log_tail(),
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status()? {
                return Err(EtcdServerError::Exited {
                    status,
                    log_path: self.log_path(),
                    log: self.log_tail(),
                });
            }
            let last_error: Error = match probe.status().await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                // Do not leave a half-started etcd behind.
                self.stop().await?;
                return Err(EtcdServerError::NotReady {
                    endpoint: self.endpoint(),
                    timeout: READY_TIMEOUT,
                    last_error: last_error.to_string(),
                    log_path: self.log_path(),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status if etcd has exited (the child is then forgotten).
    fn exit_status(&self) -> Result<Option<ExitStatus>, EtcdServerError> {
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(child) = guard.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(io_error("poll etcd"))?;
        if status.is_some() {
            *guard = None;
        }
        Ok(status)
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(self.log_path()) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(error) => format!("(cannot read log: {error})"),
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            // SIGKILL by PID: the data dir is deleted right after, nothing to flush.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a CA and, signed by it, a server certificate for 127.0.0.1 and a client certificate
/// (P-256 keys, valid for a day) in `dir`.
async fn make_certificates(dir: &Path) -> Result<TlsFiles, EtcdServerError> {
    let path = |name: &str| dir.join(name).display().to_string();
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    let key_options = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=kvstore test CA"];
    ca.extend(key_options);
    let (ca_key, ca_crt) = (path("ca.key"), path("ca.crt"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca).await?;
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, crt, ext) = (
            path(&format!("{name}.key")),
            path(&format!("{name}.csr")),
            path(&format!("{name}.crt")),
            path(&format!("{name}.ext")),
        );
        fs::write(
            &ext,
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .map_err(io_error(format!("write {ext}")))?;
        let subject = format!("/CN=kvstore test {name}");
        let mut request = vec![
            "req",
            "-subj",
            subject.as_str(),
            "-keyout",
            &key,
            "-out",
            &csr,
        ];
        request.extend(key_options);
        openssl(&request).await?;
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])
        .await?;
    }
    Ok(files)
}

async fn openssl(args: &[&str]) -> Result<(), EtcdServerError> {
    let output = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error("run openssl (install Debian's openssl package)"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(EtcdServerError::Openssl {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Picks two distinct free loopback ports (both listeners are held while the second is picked).
fn free_port_pair() -> Result<(u16, u16), EtcdServerError> {
    let first = TcpListener::bind("127.0.0.1:0").map_err(io_error("bind a free loopback port"))?;
    let second = TcpListener::bind("127.0.0.1:0").map_err(io_error("bind a free loopback port"))?;
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .map_err(io_error("read the port of a loopback listener"))
    };
    Ok((port(&first)?, port(&second)?))
}

/// `$env`, else `/usr/bin/<binary>`, else the first `<binary>` on PATH.
fn find_binary(binary: &'static str, env: &'static str) -> Result<PathBuf, EtcdServerError> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable_file(&path) {
            Ok(path)
        } else {
            Err(EtcdServerError::BinaryMissing { binary, env })
        };
    }
    let system = Path::new("/usr/bin").join(binary);
    if is_executable_file(&system) {
        return Ok(system);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable_file(candidate))
        .ok_or(EtcdServerError::BinaryMissing { binary, env })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
