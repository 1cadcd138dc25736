//! Hubble's Prometheus metrics (DESIGN 4.10), served apart from the agent's on `:9965`
//! (`--hubble-metrics-server`), in upstream's names and labels:
//! - `hubble_flows_processed_total{protocol,type,subtype,verdict}`: every flow the observer
//!   stored (upstream's `flow` metric);
//! - `hubble_drop_total{reason,protocol}`: dropped flows by drop reason (upstream's `drop`);
//! - `hubble_lost_events_total{source}`: events lost on the way, by where
//!   (`perf_event_ring_buffer`: the datapath's ring buffer was full; `hubble_ring_buffer`: a
//!   `GetFlows` follower fell behind the flow ring).
//!
//! Unlike the agent's metrics, which ask the actors on every scrape, these count events as they
//! pass: there is no state to ask afterwards. Counting is a hash lookup and an atomic add per
//! flow, cheap next to parsing it.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proto::flow::{Flow, LostEventSource, layer4};

/// Upstream monitor message types (`pkg/monitor/api`) as they appear in `Flow.event_type.type`.
const MESSAGE_TYPE_DROP: i32 = 1;
const MESSAGE_TYPE_CAPTURE: i32 = 3;
const MESSAGE_TYPE_TRACE: i32 = 4;
const MESSAGE_TYPE_POLICY_VERDICT: i32 = 5;
const MESSAGE_TYPE_ACCESS_LOG: i32 = 129;

/// Upstream's `TraceObservationPoints`: the sub type names of trace events.
const TRACE_OBSERVATION_POINTS: [&str; 14] = [
    "to-endpoint",
    "to-proxy",
    "to-host",
    "to-stack",
    "to-overlay",
    "from-endpoint",
    "from-proxy",
    "from-host",
    "from-stack",
    "from-overlay",
    "from-network",
    "to-network",
    "from-crypto",
    "to-crypto",
];

type Labels = Vec<(&'static str, String)>;

/// The counters, shared by the observer (which counts) and the metrics server (which renders).
#[derive(Debug)]
pub struct HubbleMetrics {
    registry: Registry,
    flows: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    lost: Family<Labels, Counter>,
}

impl Default for HubbleMetrics {
    fn default() -> Self {
        HubbleMetrics::new()
    }
}

impl HubbleMetrics {
    pub fn new() -> HubbleMetrics {
        let mut registry = Registry::default();
        let flows = Family::<Labels, Counter>::default();
        let drops = Family::<Labels, Counter>::default();
        let lost = Family::<Labels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "hubble_flows_processed",
            "Total number of flows processed",
            flows.clone(),
        );
        registry.register("hubble_drop", "Number of drops", drops.clone());
        registry.register("hubble_lost_events", "Number of lost events", lost.clone());
        HubbleMetrics {
            registry,
            flows,
            drops,
            lost,
        }
    }

    /// Counts one stored flow.
    pub fn process_flow(&self, flow: &Flow) {
        let protocol = flow_protocol(flow);
        let (kind, subtype) = type_and_subtype(flow);
        self.flows
            .get_or_create(&vec![
                ("protocol", protocol.to_owned()),
                ("type", kind.to_owned()),
                ("subtype", subtype),
                ("verdict", flow.verdict().as_str_name().to_owned()),
            ])
            .inc();
        if flow.event_type.as_ref().map(|t| t.r#type) == Some(MESSAGE_TYPE_DROP) {
            self.drops
                .get_or_create(&vec![
                    ("reason", flow.drop_reason_desc().as_str_name().to_owned()),
                    ("protocol", protocol.to_owned()),
                ])
                .inc();
        }
    }

    /// Counts `count` events lost at `source`.
    pub fn lost_events(&self, source: LostEventSource, count: u64) {
        self.lost
            .get_or_create(&vec![("source", source.as_str_name().to_ascii_lowercase())])
            .inc_by(count);
    }

    /// The OpenMetrics text of every counter.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Upstream's `FlowProtocol`: the L7 protocol if there is one, else the L4 one.
fn flow_protocol(flow: &Flow) -> &'static str {
    if let Some(l7) = &flow.l7
        && let Some(record) = &l7.record
    {
        use proto::flow::layer7::Record;
        return match record {
            Record::Dns(_) => "DNS",
            Record::Http(_) => "HTTP",
            Record::Kafka(_) => "Kafka",
        };
    }
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => "TCP",
        Some(layer4::Protocol::Udp(_)) => "UDP",
        Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        Some(layer4::Protocol::Sctp(_)) => "SCTP",
        None => "Unknown flow",
    }
}

/// Upstream's flow metric `type` and `subtype` labels.
fn type_and_subtype(flow: &Flow) -> (&'static str, String) {
    let (kind, sub) = flow
        .event_type
        .as_ref()
        .map_or((0, 0), |t| (t.r#type, t.sub_type));
    match kind {
        MESSAGE_TYPE_ACCESS_LOG => ("L7", flow_protocol(flow).to_owned()),
        MESSAGE_TYPE_DROP => ("Drop", String::new()),
        MESSAGE_TYPE_CAPTURE => ("Capture", String::new()),
        MESSAGE_TYPE_TRACE => {
            let name = usize::try_from(sub)
                .ok()
                .and_then(|i| TRACE_OBSERVATION_POINTS.get(i))
                .map_or_else(|| sub.to_string(), |name| (*name).to_owned());
            ("Trace", name)
        }
        MESSAGE_TYPE_POLICY_VERDICT => ("PolicyVerdict", String::new()),
        other => ("Unknown", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::flow::{CiliumEventType, DropReason, Layer4, Tcp, Udp, Verdict};

    fn flow(kind: i32, sub_type: i32, verdict: Verdict, l4: layer4::Protocol) -> Flow {
        let mut flow = Flow {
            event_type: Some(CiliumEventType {
                r#type: kind,
                sub_type,
            }),
            l4: Some(Layer4 { protocol: Some(l4) }),
            ..Flow::default()
        };
        flow.set_verdict(verdict);
        flow
    }

    #[test]
    fn counts_flows_drops_and_lost_events_with_upstream_labels() {
        let metrics = HubbleMetrics::new();
        let trace = flow(
            MESSAGE_TYPE_TRACE,
            0,
            Verdict::Forwarded,
            layer4::Protocol::Tcp(Tcp::default()),
        );
        metrics.process_flow(&trace);
        metrics.process_flow(&trace);
        let mut drop = flow(
            MESSAGE_TYPE_DROP,
            133,
            Verdict::Dropped,
            layer4::Protocol::Udp(Udp::default()),
        );
        drop.set_drop_reason_desc(DropReason::PolicyDenied);
        metrics.process_flow(&drop);
        metrics.lost_events(LostEventSource::PerfEventRingBuffer, 7);
        metrics.lost_events(LostEventSource::HubbleRingBuffer, 2);

        let text = metrics.render().unwrap();
        assert!(
            text.contains(
                "hubble_flows_processed_total{protocol=\"TCP\",type=\"Trace\",\
                 subtype=\"to-endpoint\",verdict=\"FORWARDED\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hubble_flows_processed_total{protocol=\"UDP\",type=\"Drop\",subtype=\"\",\
                 verdict=\"DROPPED\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"UDP\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("hubble_lost_events_total{source=\"hubble_ring_buffer\"} 2"),
            "{text}"
        );
        // Forwarded flows are no drops.
        assert!(!text.contains("protocol=\"TCP\"} "), "{text}");
    }

    #[test]
    fn unknown_types_and_observation_points_keep_their_numbers() {
        let metrics = HubbleMetrics::new();
        metrics.process_flow(&flow(
            MESSAGE_TYPE_TRACE,
            99,
            Verdict::Forwarded,
            layer4::Protocol::Tcp(Tcp::default()),
        ));
        metrics.process_flow(&flow(
            42,
            0,
            Verdict::Forwarded,
            layer4::Protocol::Tcp(Tcp::default()),
        ));
        let text = metrics.render().unwrap();
        assert!(text.contains("type=\"Trace\",subtype=\"99\""), "{text}");
        assert!(text.contains("type=\"Unknown\",subtype=\"42\""), "{text}");
    }
}
