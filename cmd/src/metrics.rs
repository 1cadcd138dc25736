//! The agent's Prometheus metrics (DESIGN 4.10), in upstream's names where the data exists:
//! `cilium_identity{type}`, `cilium_endpoint`, `cilium_policy`, `cilium_policy_max_revision`,
//! `cilium_services`, `cilium_drop_count_total{reason,direction}`,
//! `cilium_drop_bytes_total`, `cilium_forward_count_total{direction}` and
//! `cilium_forward_bytes_total`.
//!
//! Every scrape asks the actors and the datapath's counters for their state and renders a
//! fresh registry: the numbers are the actors' own, so there is no second copy to keep in
//! step, and scrapes are rare enough that the asks cost nothing.

use std::net::SocketAddr;

use actors::service::ListServices;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datapath::api::{MetricDirection, error_chain};
use datapath::monitor::drop_reason_name;
use datapath::reconciler::ReadMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::AgentHandles;

/// Identities below this are reserved (upstream's `MinimalAllocationIdentity` is 256).
const FIRST_CLUSTER_IDENTITY: u32 = 256;
/// Local-scope (CIDR) identities have this bit set.
const LOCAL_IDENTITY_FLAG: u32 = 1 << 24;

/// Errors gathering metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("the {actor} is not running")]
    ActorGone { actor: &'static str },
    #[error("reading the datapath counters failed: {message}")]
    Datapath { message: String },
    #[error("encoding the metrics failed")]
    Encode(#[from] std::fmt::Error),
}

type Labels = Vec<(String, String)>;

fn direction_label(direction: MetricDirection) -> &'static str {
    match direction {
        MetricDirection::Ingress => "INGRESS",
        MetricDirection::Egress => "EGRESS",
        MetricDirection::Service => "SERVICE",
        MetricDirection::Unknown => "UNKNOWN",
    }
}

/// Renders the OpenMetrics text of the agent's current state.
pub async fn render(handles: &AgentHandles) -> Result<String, MetricsError> {
    let identities = handles
        .identity
        .send(actors::identity::ListIdentities)
        .await
        .map_err(|_| MetricsError::ActorGone {
            actor: "identity allocator",
        })?;
    let policy = handles
        .policy
        .send(actors::policy::Dump)
        .await
        .map_err(|_| MetricsError::ActorGone {
            actor: "policy repository",
        })?;
    let services =
        handles
            .services
            .send(ListServices)
            .await
            .map_err(|_| MetricsError::ActorGone {
                actor: "service manager",
            })?;
    // Endpoints come from the endpoint manager; without IPAM there is none and no endpoint.
    let endpoints = match &handles.endpoints {
        Some(manager) => manager
            .send(actors::endpoint::ListEndpoints)
            .await
            .map_err(|_| MetricsError::ActorGone {
                actor: "endpoint manager",
            })?
            .len(),
        None => 0,
    };
    let counters = handles
        .datapath
        .send(ReadMetrics)
        .await
        .map_err(|_| MetricsError::ActorGone { actor: "datapath" })?
        .map_err(|err| MetricsError::Datapath {
            message: error_chain(&err),
        })?;

    let mut registry = Registry::default();

    let identity = Family::<Labels, Gauge>::default();
    for info in &identities {
        let id = info.id.get();
        let kind = if id < FIRST_CLUSTER_IDENTITY {
            "reserved"
        } else if id & LOCAL_IDENTITY_FLAG != 0 {
            "node_local"
        } else {
            "cluster_local"
        };
        identity
            .get_or_create(&vec![("type".to_owned(), kind.to_owned())])
            .inc();
    }
    registry.register("cilium_identity", "Number of identities", identity);

    let gauge = |value: usize| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        g
    };
    registry.register(
        "cilium_endpoint",
        "Number of endpoints managed by this agent",
        gauge(endpoints),
    );
    registry.register(
        "cilium_policy",
        "Number of policies currently loaded",
        gauge(policy.rules.len()),
    );
    let revision = Gauge::<i64>::default();
    revision.set(i64::try_from(policy.revision.get()).unwrap_or(i64::MAX));
    registry.register(
        "cilium_policy_max_revision",
        "Highest policy revision number in the agent",
        revision,
    );
    registry.register(
        "cilium_services",
        "Number of load-balanced services",
        gauge(services.len()),
    );

    let drop_count = Family::<Labels, Counter>::default();
    let drop_bytes = Family::<Labels, Counter>::default();
    let forward_count = Family::<Labels, Counter>::default();
    let forward_bytes = Family::<Labels, Counter>::default();
    for entry in counters {
        let direction = (
            "direction".to_owned(),
            direction_label(entry.direction).to_owned(),
        );
        if entry.reason == 0 {
            let labels = vec![direction];
            forward_count.get_or_create(&labels).inc_by(entry.packets);
            forward_bytes.get_or_create(&labels).inc_by(entry.bytes);
        } else {
            let reason = drop_reason_name(entry.reason)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("unknown ({})", entry.reason));
            let labels = vec![("reason".to_owned(), reason), direction];
            drop_count.get_or_create(&labels).inc_by(entry.packets);
            drop_bytes.get_or_create(&labels).inc_by(entry.bytes);
        }
    }
    registry.register(
        "cilium_drop_count",
        "Total dropped packets, tagged by drop reason and direction",
        drop_count,
    );
    registry.register(
        "cilium_drop_bytes",
        "Total dropped bytes, tagged by drop reason and direction",
        drop_bytes,
    );
    registry.register(
        "cilium_forward_count",
        "Total forwarded packets, tagged by direction",
        forward_count,
    );
    registry.register(
        "cilium_forward_bytes",
        "Total forwarded bytes, tagged by direction",
        forward_bytes,
    );

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

async fn scrape(State(handles): State<AgentHandles>) -> Response {
    match render(&handles).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, error_chain(&err)).into_response(),
    }
}

/// The metrics router: `GET /metrics`.
pub fn router(handles: AgentHandles) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(handles)
}

/// Parses `--prometheus-serve-addr` (`:9962` listens on every address, as upstream).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}").parse(),
        None => text.parse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_upstream() {
        assert_eq!(
            parse_listen_addr(":9962").map(|a| a.to_string()),
            Ok("0.0.0.0:9962".to_owned())
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:9000").map(|a| a.to_string()),
            Ok("127.0.0.1:9000".to_owned())
        );
        assert!(parse_listen_addr("nope").is_err());
        assert!(parse_listen_addr(":99999").is_err());
    }
}
