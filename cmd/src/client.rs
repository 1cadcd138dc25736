//! The agent API client used by cilium-dbg and cilium-cni: HTTP/1.1 over the agent's unix
//! socket.
//!
//! Errors separate "the agent is not there" ([`ClientError::Connect`], which the CNI plugin
//! reports as "try again later") from answers the agent gave ([`ClientError::Api`], with the
//! agent's status and message).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{self, ApiErrorBody};

/// The agent's default API socket.
pub const DEFAULT_SOCKET: &str = "/var/run/cilium/cilium.sock";

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the agent at unix://{}: is cilium-agent running?",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the agent's answer to {method} {path} failed")]
    Read {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent answered {method} {path} with {status}: {message}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("the agent's answer to {method} {path} is not the expected JSON")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the request body")]
    Encode(#[source] serde_json::Error),
    #[error("cannot build the request for {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
}

impl ClientError {
    /// The HTTP status the agent answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Parses `-H`/`CILIUM_SOCK` values: `unix:///path` or a plain path.
pub fn socket_from_host(host: &str) -> PathBuf {
    PathBuf::from(host.strip_prefix("unix://").unwrap_or(host))
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
    http: Client<UnixConnector, Full<Bytes>>,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AgentClient {
            socket: socket.into(),
            http: Client::unix(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request and returns the answer's body; a non-2xx answer is an error carrying
    /// the agent's message.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Bytes, ClientError> {
        let full_path = format!("{}{path}", api::API_BASE);
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, &full_path).into();
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        let body = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|source| ClientError::Request {
                path: full_path.clone(),
                source,
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Read {
                method: method.clone(),
                path: full_path.clone(),
                source,
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = match serde_json::from_slice::<ApiErrorBody>(&bytes) {
            Ok(body) => body.message,
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        Err(ClientError::Api {
            method,
            path: full_path,
            status,
            message,
        })
    }

    /// Sends a request and decodes the JSON answer.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<T, ClientError> {
        let bytes = self.request_raw(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            method,
            path: format!("{}{path}", api::API_BASE),
            source,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// Sends `value` as JSON.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        value: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(value).map_err(ClientError::Encode)?;
        self.request(method, path, Some((Bytes::from(body), "application/json")))
            .await
    }

    pub async fn healthz(&self) -> Result<api::StatusResponse, ClientError> {
        self.get("/healthz").await
    }

    /// `PUT /policy` with policy document text (YAML or JSON).
    pub async fn policy_import(&self, text: String) -> Result<api::Policy, ClientError> {
        self.request(
            Method::PUT,
            "/policy",
            Some((Bytes::from(text), "application/yaml")),
        )
        .await
    }

    pub async fn policy_delete(
        &self,
        request: &api::PolicyDeleteRequest,
    ) -> Result<api::PolicyDeleteResponse, ClientError> {
        self.send_json(Method::DELETE, "/policy", request).await
    }

    pub async fn service_update(
        &self,
        spec: &api::ServiceSpec,
    ) -> Result<api::ServiceUpdated, ClientError> {
        self.send_json(Method::PUT, &format!("/service/{}", spec.id), spec)
            .await
    }

    pub async fn service_delete(&self, id: u16) -> Result<(), ClientError> {
        self.request_raw(Method::DELETE, &format!("/service/{id}"), None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_accept_unix_urls_and_paths() {
        assert_eq!(
            socket_from_host("unix:///var/run/cilium/cilium.sock"),
            PathBuf::from("/var/run/cilium/cilium.sock")
        );
        assert_eq!(
            socket_from_host("/tmp/a.sock"),
            PathBuf::from("/tmp/a.sock")
        );
    }
}
