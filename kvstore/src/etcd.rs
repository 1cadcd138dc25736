//! The etcd backend: [`Backend`] on top of an etcd v3 cluster through `etcd-client`.
//!
//! It owns the translation between the crate's types and etcd's protobuf API, and everything
//! that makes a long-lived client survive a flaky etcd:
//! - every unary request runs under the configured request timeout, so a dead or partitioned
//!   etcd turns into [`Error::Unavailable`] instead of a hang;
//! - watches (submodule `watch`) reconnect with capped backoff and resume exactly after the last
//!   delivered revision, re-listing when etcd compacted the history they still needed;
//! - locks (submodule `session`) run etcd's mutex algorithm on the client with one lock-session
//!   lease per client, the way upstream Cilium's `LockPath` does, plus a local per-name mutex
//!   because two acquisitions with the same lease would share one key.
//!
//! Connecting does not contact etcd: the client starts even when etcd is not up yet, and each
//! operation reports [`Error::Unavailable`] until it is. Dropping the last clone stops the
//! lock-session keep-alive without revoking the lease, so locks still held are released when it
//! expires (25 s), as for a crashed agent.

mod session;
mod watch;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompareOp, ConnectOptions, DeleteOptions, Identity, KvClient, LeaseClient,
    MaintenanceClient, PutOptions, TlsOptions, WatchClient,
};

use crate::backend::{
    Backend, BackendStatus, CmpOp, Compare, CompareTarget, KeyValue, LeaseId, ListResult, LockKey,
    Revision, Txn, TxnOp, TxnResponse, WatchFrom, WatchStream,
};
use crate::config::{EtcdConfig, read_pem};
use crate::error::Error;

use self::session::LockSessions;

/// Largest response the client accepts: a listing of a big prefix (ipcache, identities) easily
/// exceeds gRPC's 4 MiB default.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// An etcd client. Cloning is cheap and clones share the connection and the lock session.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

struct Inner {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    maintenance: MaintenanceClient,
    endpoints: Vec<String>,
    request_timeout: Duration,
    locks: Arc<LockSessions>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Builds a client for `config`. TLS is used when the configuration names TLS files. Fails
    /// only on configuration problems (unreadable certificates, malformed endpoints); whether
    /// etcd answers shows on the first operation.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdBackend, Error> {
        // EtcdConfig does not remember its file; errors name the cluster instead.
        let origin = PathBuf::from(format!("for {}", config.endpoints.join(",")));
        let origin = origin.as_path();
        config.validate(origin)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(config.keepalive_heartbeat, config.keepalive_timeout)
            // A member cut off from the leader must not serve stale watches.
            .with_require_leader(true);
        if let Some(ca) = &config.trusted_ca_file {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
                origin,
                "trusted-ca-file",
                ca,
            )?));
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_pem(origin, "cert-file", cert)?,
                    read_pem(origin, "key-file", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| Error::Config {
                path: origin.to_path_buf(),
                message: format!("cannot set up the etcd client: {e}"),
            })?;
        let lease = client.lease_client();
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                maintenance: client.maintenance_client(),
                endpoints: config.endpoints.clone(),
                request_timeout: config.request_timeout,
                locks: Arc::new(LockSessions::new(lease.clone(), config.request_timeout)),
                lease,
            }),
        })
    }

    /// Runs one request under the request timeout, mapping etcd-client errors.
    async fn request<T, F>(&self, op: &'static str, fut: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        with_timeout(op, self.inner.request_timeout, fut).await
    }

    fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }
}

/// Runs `fut` for at most `timeout`; a timeout is [`Error::Unavailable`].
pub(crate) async fn with_timeout<T, F>(
    op: &'static str,
    timeout: Duration,
    fut: F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(|e| map_error(op, e)),
        Err(_) => Err(Error::Unavailable {
            op,
            message: format!("no answer from etcd within {timeout:?}"),
        }),
    }
}

/// gRPC status codes (fixed by the gRPC specification); `etcd-client` exposes statuses but not
/// tonic's `Code` type, and this crate does not depend on tonic directly.
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

/// Classifies an etcd-client error: connection-level trouble is [`Error::Unavailable`] (retry
/// later), everything else is [`Error::Backend`].
pub(crate) fn map_error(op: &'static str, error: etcd_client::Error) -> Error {
    let message = error.to_string();
    let unavailable = match &error {
        etcd_client::Error::GRpcStatus(status) => {
            let code = i32::from(status.code());
            matches!(
                code,
                grpc_code::UNAVAILABLE
                    | grpc_code::DEADLINE_EXCEEDED
                    | grpc_code::CANCELLED
                    | grpc_code::ABORTED
            ) || (code == grpc_code::UNKNOWN && is_retryable_message(status.message()))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    };
    if unavailable {
        Error::Unavailable { op, message }
    } else {
        Error::Backend { op, message }
    }
}

/// Transient failures that reach us as `UNKNOWN` statuses: connection trouble (h2 resets, broken
/// pipes) and etcd's own retryable errors as the lock service forwards them.
fn is_retryable_message(message: &str) -> bool {
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol error",
        "reset",
        "etcdserver: request timed out",
        "etcdserver: no leader",
        "etcdserver: leader changed",
        "etcdserver: too many requests",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Whether etcd answered that the lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        // The KV and lease services answer NOT_FOUND; other paths may pass the same error on
        // as UNKNOWN, so the message decides.
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                i32::from(status.code()),
                grpc_code::NOT_FOUND | grpc_code::UNKNOWN
            ) && status.message().contains("requested lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// Like [`with_timeout`], but reports a missing lease as [`Error::LeaseNotFound`].
async fn with_lease<T, F>(
    op: &'static str,
    timeout: Duration,
    lease: Option<LeaseId>,
    fut: F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => match lease {
            Some(lease) if is_lease_not_found(&e) => Err(Error::LeaseNotFound(lease)),
            _ => Err(map_error(op, e)),
        },
        Err(_) => Err(Error::Unavailable {
            op,
            message: format!("no answer from etcd within {timeout:?}"),
        }),
    }
}

/// Converts an etcd key-value; `None` (with a warning) for keys that are not UTF-8, which this
/// API cannot address and Cilium never writes.
pub(crate) fn convert_kv(kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    let Ok(key) = std::str::from_utf8(kv.key()) else {
        tracing::warn!(key = ?String::from_utf8_lossy(kv.key()), "skipping etcd key that is not UTF-8");
        return None;
    };
    Some(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

fn compare_op(op: CmpOp) -> CompareOp {
    match op {
        CmpOp::Equal => CompareOp::Equal,
        CmpOp::NotEqual => CompareOp::NotEqual,
        CmpOp::Greater => CompareOp::Greater,
        CmpOp::Less => CompareOp::Less,
    }
}

fn convert_compare(compare: Compare) -> etcd_client::Compare {
    let converted = match compare.target {
        CompareTarget::CreateRevision(op, rev) => {
            etcd_client::Compare::create_revision(compare.key, compare_op(op), rev)
        }
        CompareTarget::ModRevision(op, rev) => {
            etcd_client::Compare::mod_revision(compare.key, compare_op(op), rev)
        }
        CompareTarget::Value(op, value) => {
            etcd_client::Compare::value(compare.key, compare_op(op), value)
        }
    };
    if compare.prefix {
        converted.with_prefix()
    } else {
        converted
    }
}

fn convert_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = lease.map(|l| PutOptions::new().with_lease(l.0));
            etcd_client::TxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
    }
}

/// The first lease a transaction attaches keys to, to name it if etcd reports it missing.
fn txn_lease(txn: &Txn) -> Option<LeaseId> {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            TxnOp::Delete { .. } => None,
        })
}

/// Rounds a TTL up to whole seconds (etcd's unit), at least one.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// One keep-alive round trip. etcd answers a TTL of 0 for a lease it does not know.
pub(crate) async fn keep_alive_once(
    mut lease_client: LeaseClient,
    timeout: Duration,
    lease: LeaseId,
) -> Result<Duration, Error> {
    let fut = async move {
        // etcd-client's keep_alive() sends the first request and checks its answer itself
        // (failing with "lease not found" for TTL 0) but does not return the TTL; a second
        // request on the same stream yields it.
        let (mut keeper, mut stream) = lease_client.keep_alive(lease.0).await?;
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(response) => Ok(response.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "keep-alive stream closed by etcd".to_owned(),
            )),
        }
    };
    let ttl = with_lease("keep_alive", timeout, Some(lease), fut).await?;
    if ttl <= 0 {
        return Err(Error::LeaseNotFound(lease));
    }
    Ok(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)))
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let mut kv = self.kv();
        let response = self.request("get", kv.get(key, None)).await?;
        Ok(response.kvs().first().and_then(convert_kv))
    }

    async fn list_prefix(&self, prefix: &str) -> Result<ListResult, Error> {
        watch::list(self.kv(), self.inner.request_timeout, prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, Error> {
        let mut kv = self.kv();
        let options = lease.map(|l| PutOptions::new().with_lease(l.0));
        let response = with_lease(
            "put",
            self.inner.request_timeout,
            lease,
            kv.put(key, value, options),
        )
        .await?;
        Ok(header_revision(response.header()))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let mut kv = self.kv();
        let response = self.request("delete", kv.delete(key, None)).await?;
        Ok(response.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let mut kv = self.kv();
        let options = DeleteOptions::new().with_prefix();
        let response = self
            .request("delete_prefix", kv.delete(prefix, Some(options)))
            .await?;
        Ok(u64::try_from(response.deleted()).unwrap_or(0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let lease = txn_lease(&txn);
        let request = etcd_client::Txn::new()
            .when(
                txn.compares
                    .into_iter()
                    .map(convert_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(txn.success.into_iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(convert_op).collect::<Vec<_>>());
        let mut kv = self.kv();
        let response =
            with_lease("txn", self.inner.request_timeout, lease, kv.txn(request)).await?;
        Ok(TxnResponse {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
        })
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, Error> {
        watch::start(
            self.kv(),
            self.inner.watch.clone(),
            self.inner.request_timeout,
            prefix,
            from,
        )
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, Error> {
        let mut lease = self.inner.lease.clone();
        let response = self
            .request("grant_lease", lease.grant(ttl_seconds(ttl), None))
            .await?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, Error> {
        keep_alive_once(self.inner.lease.clone(), self.inner.request_timeout, lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), Error> {
        let mut client = self.inner.lease.clone();
        with_lease(
            "revoke_lease",
            self.inner.request_timeout,
            Some(lease),
            client.revoke(lease.0),
        )
        .await?;
        Ok(())
    }

    async fn lock(&self, name: &str) -> Result<LockKey, Error> {
        self.inner.locks.lock(self, name).await
    }

    async fn unlock(&self, lock: LockKey) -> Result<(), Error> {
        self.inner.locks.unlock(self, lock).await
    }

    async fn status(&self) -> Result<BackendStatus, Error> {
        let mut maintenance = self.inner.maintenance.clone();
        let response = self.request("status", maintenance.status()).await?;
        Ok(BackendStatus {
            kind: "etcd",
            endpoints: self.inner.endpoints.clone(),
            version: response.version().to_owned(),
            revision: header_revision(response.header()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(15)), 15);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::MAX), i64::MAX);
    }

    #[test]
    fn txn_names_its_lease() {
        let txn = Txn {
            compares: vec![Compare::missing("a")],
            success: vec![
                TxnOp::Delete { key: "b".into() },
                TxnOp::Put {
                    key: "a".into(),
                    value: vec![],
                    lease: Some(LeaseId(7)),
                },
            ],
            failure: vec![],
        };
        assert_eq!(txn_lease(&txn), Some(LeaseId(7)));
        assert_eq!(txn_lease(&Txn::default()), None);
    }
}
