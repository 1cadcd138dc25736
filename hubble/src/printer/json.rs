//! Protojson rendering of the Hubble API types, shaped exactly as upstream's `hubble observe -o
//! json` / `-o jsonpb` prints them.
//!
//! Upstream marshals every message with protojson and `UseProtoNames: true`: keys are the proto
//! field names (`node_name`, `IP`, `Type`, `is_reply`), enums are their value names, 64-bit
//! integers are strings, timestamps are RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits,
//! wrapper types are bare values, and fields holding their default value are left out (a
//! present message field is kept even when empty). Keys come out in `.proto` declaration order,
//! as protojson emits them, which is why this module builds its own ordered [`Json`] tree instead
//! of a `serde_json::Value` (whose map sorts keys unless the crate-wide `preserve_order` feature
//! is on). The conversion is written by hand because prost's generated types carry no serde
//! derive, and a derive could not express these rules anyway.
//!
//! `google.protobuf.Any` (`Flow.extensions`) is not rendered: protojson needs the embedded
//! message's descriptor to print it, and nothing in this project fills that field.

use prost_types::Timestamp;
use proto::flow::{
    AuthType, CiliumEventType, DebugCapturePoint, DropReason, Endpoint, Ethernet, FileInfo, Flow,
    FlowType, Ip, IpVersion, L7FlowType, Layer4, Layer7, LostEvent, LostEventSource,
    NetworkInterface, Policy, Service, SocketTranslationPoint, TcpFlags, TraceContext,
    TraceObservationPoint, TraceReason, TrafficDirection, Verdict, Workload, layer4, layer7,
};
use proto::observer::{GetFlowsResponse, Node, ServerStatusResponse, get_flows_response};
use proto::relay::{NodeState, NodeStatusEvent};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::PrinterError;
use super::time::format_rfc3339;

/// A JSON value whose objects keep their insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    /// Compact JSON text, as Go's `json.Encoder` writes it (without the trailing newline).
    pub fn to_compact_string(&self) -> String {
        // Serializing this tree cannot fail: every key is a string and every number is finite.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Two-space indented JSON text, as Go's `json.MarshalIndent(v, "", "  ")` writes it.
    pub fn to_pretty_string(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// Builds one protojson object, leaving out default values as protojson does.
#[derive(Debug, Default)]
struct Obj(Vec<(&'static str, Json)>);

impl Obj {
    fn string(&mut self, key: &'static str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.0.push((key, Json::String(value.to_owned())));
        }
        self
    }

    fn strings(&mut self, key: &'static str, values: &[String]) -> &mut Self {
        if !values.is_empty() {
            let items = values.iter().map(|v| Json::String(v.clone())).collect();
            self.0.push((key, Json::Array(items)));
        }
        self
    }

    fn u32(&mut self, key: &'static str, value: u32) -> &mut Self {
        if value != 0 {
            self.0.push((key, Json::Number(value.into())));
        }
        self
    }

    fn i32(&mut self, key: &'static str, value: i32) -> &mut Self {
        if value != 0 {
            self.0.push((key, Json::Number(value.into())));
        }
        self
    }

    /// 64-bit integers are JSON strings in protojson (JavaScript numbers lose precision).
    fn u64(&mut self, key: &'static str, value: u64) -> &mut Self {
        if value != 0 {
            self.0.push((key, Json::String(value.to_string())));
        }
        self
    }

    fn f64(&mut self, key: &'static str, value: f64) -> &mut Self {
        if value != 0.0 {
            self.0.push((key, double(value)));
        }
        self
    }

    fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        if value {
            self.0.push((key, Json::Bool(true)));
        }
        self
    }

    /// An enum field: its value name, or the bare number for values this build does not know
    /// (protojson does the same).
    fn enumeration(
        &mut self,
        key: &'static str,
        value: i32,
        name: Option<&'static str>,
    ) -> &mut Self {
        if value != 0 {
            let json = match name {
                Some(name) => Json::String(name.to_owned()),
                None => Json::Number(value.into()),
            };
            self.0.push((key, json));
        }
        self
    }

    /// A message (or wrapper) field: present means printed, even when empty.
    fn field(&mut self, key: &'static str, value: Option<Json>) -> &mut Self {
        if let Some(value) = value {
            self.0.push((key, value));
        }
        self
    }

    fn list(&mut self, key: &'static str, values: Vec<Json>) -> &mut Self {
        if !values.is_empty() {
            self.0.push((key, Json::Array(values)));
        }
        self
    }

    fn timestamp(
        &mut self,
        key: &'static str,
        ts: Option<&Timestamp>,
    ) -> Result<&mut Self, PrinterError> {
        if let Some(ts) = ts {
            let text = format_rfc3339(ts).ok_or(PrinterError::InvalidTimestamp {
                seconds: ts.seconds,
                nanos: ts.nanos,
            })?;
            self.0.push((key, Json::String(text)));
        }
        Ok(self)
    }

    fn build(&mut self) -> Json {
        Json::Object(std::mem::take(&mut self.0))
    }
}

/// protojson prints doubles in their shortest form (`3`, not `3.0`) and non-finite values as
/// the strings `NaN`, `Infinity`, `-Infinity`.
fn double(value: f64) -> Json {
    if value.is_nan() {
        return Json::String("NaN".into());
    }
    if value.is_infinite() {
        let text = if value > 0.0 { "Infinity" } else { "-Infinity" };
        return Json::String(text.into());
    }
    // Integral values below 2^53 are exact as i64, so the cast loses nothing.
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        return Json::Number((value as i64).into());
    }
    serde_json::Number::from_f64(value).map_or(Json::String(value.to_string()), Json::Number)
}

fn enum_name<E>(value: i32, name: fn(&E) -> &'static str) -> Option<&'static str>
where
    E: TryFrom<i32>,
{
    E::try_from(value).ok().map(|e| name(&e))
}

/// A `GetFlowsResponse` as upstream's `-o jsonpb` (and, by default, `-o json`) prints it.
pub fn get_flows_response(res: &GetFlowsResponse) -> Result<Json, PrinterError> {
    let mut obj = Obj::default();
    match &res.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => {
            obj.field("flow", Some(flow(f)?));
        }
        Some(get_flows_response::ResponseTypes::NodeStatus(s)) => {
            obj.field("node_status", Some(node_status_event(s)));
        }
        Some(get_flows_response::ResponseTypes::LostEvents(l)) => {
            obj.field("lost_events", Some(lost_event(l)));
        }
        None => {}
    }
    obj.string("node_name", &res.node_name);
    obj.timestamp("time", res.time.as_ref())?;
    Ok(obj.build())
}

/// A `flow.Flow`.
pub fn flow(f: &Flow) -> Result<Json, PrinterError> {
    let mut obj = Obj::default();
    obj.timestamp("time", f.time.as_ref())?;
    obj.string("uuid", &f.uuid)
        .enumeration(
            "verdict",
            f.verdict,
            enum_name(f.verdict, Verdict::as_str_name),
        )
        .u32("drop_reason", f.drop_reason)
        .enumeration(
            "auth_type",
            f.auth_type,
            enum_name(f.auth_type, AuthType::as_str_name),
        )
        .field("ethernet", f.ethernet.as_ref().map(ethernet))
        .field("IP", f.ip.as_ref().map(ip))
        .field("l4", f.l4.as_ref().map(layer4))
        .field("source", f.source.as_ref().map(endpoint))
        .field("destination", f.destination.as_ref().map(endpoint))
        .enumeration("Type", f.r#type, enum_name(f.r#type, FlowType::as_str_name))
        .string("node_name", &f.node_name)
        .strings("node_labels", &f.node_labels)
        .strings("source_names", &f.source_names)
        .strings("destination_names", &f.destination_names)
        .field("l7", f.l7.as_ref().map(layer7))
        .bool("reply", f.reply)
        .field("event_type", f.event_type.as_ref().map(cilium_event_type))
        .field("source_service", f.source_service.as_ref().map(service))
        .field(
            "destination_service",
            f.destination_service.as_ref().map(service),
        )
        .enumeration(
            "traffic_direction",
            f.traffic_direction,
            enum_name(f.traffic_direction, TrafficDirection::as_str_name),
        )
        .u32("policy_match_type", f.policy_match_type)
        .enumeration(
            "trace_observation_point",
            f.trace_observation_point,
            enum_name(
                f.trace_observation_point,
                TraceObservationPoint::as_str_name,
            ),
        )
        .enumeration(
            "trace_reason",
            f.trace_reason,
            enum_name(f.trace_reason, TraceReason::as_str_name),
        )
        .field("file", f.file.as_ref().map(file_info))
        .enumeration(
            "drop_reason_desc",
            f.drop_reason_desc,
            enum_name(f.drop_reason_desc, DropReason::as_str_name),
        )
        .field("is_reply", f.is_reply.map(Json::Bool))
        .enumeration(
            "debug_capture_point",
            f.debug_capture_point,
            enum_name(f.debug_capture_point, DebugCapturePoint::as_str_name),
        )
        .field("interface", f.interface.as_ref().map(network_interface))
        .u32("proxy_port", f.proxy_port)
        .field("trace_context", f.trace_context.as_ref().map(trace_context))
        .enumeration(
            "sock_xlate_point",
            f.sock_xlate_point,
            enum_name(f.sock_xlate_point, SocketTranslationPoint::as_str_name),
        )
        .u64("socket_cookie", f.socket_cookie)
        .u64("cgroup_id", f.cgroup_id)
        .string("Summary", &f.summary)
        .list(
            "egress_allowed_by",
            f.egress_allowed_by.iter().map(policy).collect(),
        )
        .list(
            "ingress_allowed_by",
            f.ingress_allowed_by.iter().map(policy).collect(),
        )
        .list(
            "egress_denied_by",
            f.egress_denied_by.iter().map(policy).collect(),
        )
        .list(
            "ingress_denied_by",
            f.ingress_denied_by.iter().map(policy).collect(),
        );
    Ok(obj.build())
}

fn ethernet(e: &Ethernet) -> Json {
    Obj::default()
        .string("source", &e.source)
        .string("destination", &e.destination)
        .build()
}

fn ip(i: &Ip) -> Json {
    Obj::default()
        .string("source", &i.source)
        .string("source_xlated", &i.source_xlated)
        .string("destination", &i.destination)
        .enumeration(
            "ipVersion",
            i.ip_version,
            enum_name(i.ip_version, IpVersion::as_str_name),
        )
        .bool("encrypted", i.encrypted)
        .build()
}

fn ports(source_port: u32, destination_port: u32) -> Obj {
    let mut obj = Obj::default();
    obj.u32("source_port", source_port)
        .u32("destination_port", destination_port);
    obj
}

fn tcp_flags(f: &TcpFlags) -> Json {
    Obj::default()
        .bool("FIN", f.fin)
        .bool("SYN", f.syn)
        .bool("RST", f.rst)
        .bool("PSH", f.psh)
        .bool("ACK", f.ack)
        .bool("URG", f.urg)
        .bool("ECE", f.ece)
        .bool("CWR", f.cwr)
        .bool("NS", f.ns)
        .build()
}

fn layer4(l4: &Layer4) -> Json {
    let mut obj = Obj::default();
    match &l4.protocol {
        Some(layer4::Protocol::Tcp(t)) => {
            let tcp = ports(t.source_port, t.destination_port)
                .field("flags", t.flags.as_ref().map(tcp_flags))
                .build();
            obj.field("TCP", Some(tcp));
        }
        Some(layer4::Protocol::Udp(u)) => {
            obj.field(
                "UDP",
                Some(ports(u.source_port, u.destination_port).build()),
            );
        }
        Some(layer4::Protocol::Sctp(s)) => {
            obj.field(
                "SCTP",
                Some(ports(s.source_port, s.destination_port).build()),
            );
        }
        Some(layer4::Protocol::IcmPv4(i)) => {
            let icmp = Obj::default()
                .u32("type", i.r#type)
                .u32("code", i.code)
                .build();
            obj.field("ICMPv4", Some(icmp));
        }
        Some(layer4::Protocol::IcmPv6(i)) => {
            let icmp = Obj::default()
                .u32("type", i.r#type)
                .u32("code", i.code)
                .build();
            obj.field("ICMPv6", Some(icmp));
        }
        None => {}
    }
    obj.build()
}

fn workload(w: &Workload) -> Json {
    Obj::default()
        .string("name", &w.name)
        .string("kind", &w.kind)
        .build()
}

fn endpoint(e: &Endpoint) -> Json {
    Obj::default()
        .u32("ID", e.id)
        .u32("identity", e.identity)
        .string("cluster_name", &e.cluster_name)
        .string("namespace", &e.namespace)
        .strings("labels", &e.labels)
        .string("pod_name", &e.pod_name)
        .list("workloads", e.workloads.iter().map(workload).collect())
        .build()
}

fn layer7(l7: &Layer7) -> Json {
    let mut obj = Obj::default();
    obj.enumeration(
        "type",
        l7.r#type,
        enum_name(l7.r#type, L7FlowType::as_str_name),
    )
    .u64("latency_ns", l7.latency_ns);
    match &l7.record {
        Some(layer7::Record::Dns(d)) => {
            let dns = Obj::default()
                .string("query", &d.query)
                .strings("ips", &d.ips)
                .u32("ttl", d.ttl)
                .strings("cnames", &d.cnames)
                .string("observation_source", &d.observation_source)
                .u32("rcode", d.rcode)
                .strings("qtypes", &d.qtypes)
                .strings("rrtypes", &d.rrtypes)
                .build();
            obj.field("dns", Some(dns));
        }
        Some(layer7::Record::Http(h)) => {
            let headers = h
                .headers
                .iter()
                .map(|hd| {
                    Obj::default()
                        .string("key", &hd.key)
                        .string("value", &hd.value)
                        .build()
                })
                .collect();
            let http = Obj::default()
                .u32("code", h.code)
                .string("method", &h.method)
                .string("url", &h.url)
                .string("protocol", &h.protocol)
                .list("headers", headers)
                .build();
            obj.field("http", Some(http));
        }
        Some(layer7::Record::Kafka(k)) => {
            let kafka = Obj::default()
                .i32("error_code", k.error_code)
                .i32("api_version", k.api_version)
                .string("api_key", &k.api_key)
                .i32("correlation_id", k.correlation_id)
                .string("topic", &k.topic)
                .build();
            obj.field("kafka", Some(kafka));
        }
        None => {}
    }
    obj.build()
}

fn cilium_event_type(e: &CiliumEventType) -> Json {
    Obj::default()
        .i32("type", e.r#type)
        .i32("sub_type", e.sub_type)
        .build()
}

fn service(s: &Service) -> Json {
    Obj::default()
        .string("name", &s.name)
        .string("namespace", &s.namespace)
        .build()
}

fn file_info(f: &FileInfo) -> Json {
    Obj::default()
        .string("name", &f.name)
        .u32("line", f.line)
        .build()
}

fn network_interface(i: &NetworkInterface) -> Json {
    Obj::default()
        .u32("index", i.index)
        .string("name", &i.name)
        .build()
}

fn trace_context(t: &TraceContext) -> Json {
    let parent = t
        .parent
        .as_ref()
        .map(|p| Obj::default().string("trace_id", &p.trace_id).build());
    Obj::default().field("parent", parent).build()
}

fn policy(p: &Policy) -> Json {
    Obj::default()
        .string("name", &p.name)
        .string("namespace", &p.namespace)
        .strings("labels", &p.labels)
        .u64("revision", p.revision)
        .string("kind", &p.kind)
        .string("log", &p.log)
        .build()
}

/// A `flow.LostEvent`.
pub fn lost_event(l: &LostEvent) -> Json {
    Obj::default()
        .enumeration(
            "source",
            l.source,
            enum_name(l.source, LostEventSource::as_str_name),
        )
        .u64("num_events_lost", l.num_events_lost)
        .field("cpu", l.cpu.map(|c| Json::Number(c.into())))
        .build()
}

/// A `relay.NodeStatusEvent`.
pub fn node_status_event(s: &NodeStatusEvent) -> Json {
    Obj::default()
        .enumeration(
            "state_change",
            s.state_change,
            enum_name(s.state_change, NodeState::as_str_name),
        )
        .strings("node_names", &s.node_names)
        .string("message", &s.message)
        .build()
}

/// An `observer.ServerStatusResponse`, as `hubble status -o json` prints it.
pub fn server_status(s: &ServerStatusResponse) -> Json {
    Obj::default()
        .u64("num_flows", s.num_flows)
        .u64("max_flows", s.max_flows)
        .u64("seen_flows", s.seen_flows)
        .u64("uptime_ns", s.uptime_ns)
        .field(
            "num_connected_nodes",
            s.num_connected_nodes.map(|n| Json::Number(n.into())),
        )
        .field(
            "num_unavailable_nodes",
            s.num_unavailable_nodes.map(|n| Json::Number(n.into())),
        )
        .strings("unavailable_nodes", &s.unavailable_nodes)
        .string("version", &s.version)
        .f64("flows_rate", s.flows_rate)
        .build()
}

/// An `observer.Node`, as `hubble list nodes -o json` prints each element.
pub fn node(n: &Node) -> Json {
    let tls = n.tls.as_ref().map(|t| {
        Obj::default()
            .bool("enabled", t.enabled)
            .string("server_name", &t.server_name)
            .build()
    });
    Obj::default()
        .string("name", &n.name)
        .string("version", &n.version)
        .string("address", &n.address)
        .enumeration("state", n.state, enum_name(n.state, NodeState::as_str_name))
        .field("tls", tls)
        .u64("uptime_ns", n.uptime_ns)
        .u64("num_flows", n.num_flows)
        .u64("max_flows", n.max_flows)
        .u64("seen_flows", n.seen_flows)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_in_shortest_form() {
        assert_eq!(double(3.0).to_compact_string(), "3");
        assert_eq!(double(12.5).to_compact_string(), "12.5");
        assert_eq!(double(f64::NAN).to_compact_string(), "\"NaN\"");
        assert_eq!(
            double(f64::NEG_INFINITY).to_compact_string(),
            "\"-Infinity\""
        );
    }

    #[test]
    fn unknown_enum_values_print_as_numbers() {
        let f = Flow {
            verdict: 99,
            ..Flow::default()
        };
        let json = flow(&f).map(|j| j.to_compact_string());
        assert_eq!(json.ok().as_deref(), Some(r#"{"verdict":99}"#));
    }

    #[test]
    fn present_empty_messages_are_kept() {
        let f = Flow {
            source: Some(Endpoint::default()),
            is_reply: Some(false),
            ..Flow::default()
        };
        let json = flow(&f).map(|j| j.to_compact_string());
        assert_eq!(
            json.ok().as_deref(),
            Some(r#"{"source":{},"is_reply":false}"#)
        );
    }
}
