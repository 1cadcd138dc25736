//! Rendering of Hubble API responses the way upstream's `hubble` CLI prints them.
//!
//! This module owns every text shape a user of `hubble observe`, `hubble status` and
//! `hubble list nodes` sees: the one-line `compact` flow format
//! (`Nov 27 12:00:01.123: default/client:41234 (ID:1234) -> default/echo:8080 (ID:5678)
//! to-endpoint FORWARDED (TCP Flags: SYN)`), the `table` format, and protojson for `json` /
//! `jsonpb` ([`json`]). Scripts and people parse these, so they follow upstream's
//! `hubble/pkg/printer` field for field: timestamps in `time.StampMilli` (UTC), pod names instead
//! of addresses when known, reserved identities by name, the flow type from the monitor event
//! type (`to-endpoint`, `Policy denied`, `policy-verdict:L3-L4 INGRESS`), `ALLOWED`/`DENIED` for
//! policy verdicts, the arrow flipped for replies and `<>` when the direction is unknown.
//!
//! As upstream, `-o json` is the same as `-o jsonpb` (one `GetFlowsResponse` per line; the
//! legacy flow-only JSON is behind an upstream compatibility switch we do not carry), relay
//! node-status events go to the error stream and only unavailable/error states are shown unless
//! debugging, and `table` output is aligned once all rows are known (Go's `tabwriter` with
//! padding 3). Colors are not implemented: output is the `--color never` form. Control characters
//! in names from the network are escaped so a crafted pod name cannot drive the terminal.

pub mod json;
pub mod time;

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use model::identity::NumericIdentity;
use proto::flow::{Flow, LostEvent, LostEventSource, TrafficDirection, Verdict, layer4, layer7};
use proto::observer::{GetFlowsResponse, Node, ServerStatusResponse, get_flows_response};
use proto::relay::{NodeState, NodeStatusEvent};

use self::time::{format_go_duration, format_stamp_milli};

/// Monitor message types (upstream `pkg/monitor/api` `MessageType*`), as carried in
/// `Flow.event_type.type`.
mod message_type {
    pub const DROP: i32 = 1;
    pub const CAPTURE: i32 = 3;
    pub const TRACE: i32 = 4;
    pub const POLICY_VERDICT: i32 = 5;
    pub const TRACE_SOCK: i32 = 7;
}

/// Relay node names beyond this many characters are summarized as "(and N more)".
const NODE_NAMES_CUT_OFF: usize = 50;

/// Errors while rendering.
#[derive(Debug, thiserror::Error)]
pub enum PrinterError {
    #[error("invalid output format {format:?}: expected one of {expected}")]
    UnknownFormat {
        format: String,
        expected: &'static str,
    },
    #[error("timestamp {seconds}s {nanos}ns is outside the range protobuf allows")]
    InvalidTimestamp { seconds: i64, nanos: i32 },
    #[error("failed to write output")]
    Io(#[from] io::Error),
}

/// `hubble observe -o ...` / `hubble status -o ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per flow.
    Compact,
    /// Upstream's default `json`: identical to `jsonpb`.
    Json,
    /// One protojson `GetFlowsResponse` per line.
    JsonPb,
    /// Aligned columns `TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY`.
    Table,
}

impl OutputFormat {
    fn is_json(self) -> bool {
        matches!(self, OutputFormat::Json | OutputFormat::JsonPb)
    }
}

impl FromStr for OutputFormat {
    type Err = PrinterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compact" => Ok(OutputFormat::Compact),
            "json" | "JSON" => Ok(OutputFormat::Json),
            "jsonpb" => Ok(OutputFormat::JsonPb),
            "table" | "tab" => Ok(OutputFormat::Table),
            other => Err(PrinterError::UnknownFormat {
                format: other.to_owned(),
                expected: "compact, json, jsonpb, table",
            }),
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Compact => "compact",
            OutputFormat::Json => "json",
            OutputFormat::JsonPb => "jsonpb",
            OutputFormat::Table => "table",
        })
    }
}

/// How flows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrinterOptions {
    pub format: OutputFormat,
    /// Show the node that observed each flow (`--print-node-name`).
    pub node_name: bool,
    /// Show pod/service names instead of addresses when known (upstream's `--ip-translation`,
    /// on by default).
    pub ip_translation: bool,
    /// Also show informational relay node-status events.
    pub debug: bool,
}

impl Default for PrinterOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Compact,
            node_name: false,
            ip_translation: true,
            debug: false,
        }
    }
}

/// Writes `GetFlowsResponse`s to an output stream (flows, lost events) and an error stream
/// (relay node-status events), as upstream's printer does.
#[derive(Debug)]
pub struct Printer<W: Write, E: Write> {
    opts: PrinterOptions,
    out: W,
    err: E,
    /// Rows written so far (the table header goes before the first one).
    lines: u64,
    /// Table rows wait here until [`Printer::finish`] knows every column's width.
    table: Vec<Vec<String>>,
}

impl<W: Write, E: Write> Printer<W, E> {
    pub fn new(opts: PrinterOptions, out: W, err: E) -> Self {
        Self {
            opts,
            out,
            err,
            lines: 0,
            table: Vec::new(),
        }
    }

    /// Prints one response according to its kind; responses without a payload are skipped.
    pub fn write_response(&mut self, res: &GetFlowsResponse) -> Result<(), PrinterError> {
        match &res.response_types {
            Some(get_flows_response::ResponseTypes::Flow(flow)) => self.write_flow(res, flow),
            Some(get_flows_response::ResponseTypes::NodeStatus(status)) => {
                self.write_node_status(res, status)
            }
            Some(get_flows_response::ResponseTypes::LostEvents(lost)) => {
                self.write_lost_events(res, lost)
            }
            None => Ok(()),
        }
    }

    fn write_flow(&mut self, res: &GetFlowsResponse, flow: &Flow) -> Result<(), PrinterError> {
        match self.opts.format {
            OutputFormat::Compact => {
                let line = compact_flow(flow, &self.opts);
                writeln!(self.out, "{line}")?;
                self.out.flush()?;
            }
            OutputFormat::Table => {
                self.table_header();
                let (src, dst) = host_names(flow, self.opts.ip_translation);
                let mut row = vec![format_stamp_milli(flow.time.as_ref())];
                if self.opts.node_name {
                    row.push(flow.node_name.clone());
                }
                row.extend([
                    src,
                    dst,
                    flow_type(flow),
                    verdict(flow),
                    flow.summary.clone(),
                ]);
                self.table
                    .push(row.iter().map(|c| escape_controls(c)).collect());
            }
            OutputFormat::Json | OutputFormat::JsonPb => {
                let text = json::get_flows_response(res)?.to_compact_string();
                writeln!(self.out, "{text}")?;
                self.out.flush()?;
            }
        }
        self.lines += 1;
        Ok(())
    }

    fn table_header(&mut self) {
        if self.lines == 0 {
            let mut header = vec!["TIMESTAMP".to_owned()];
            if self.opts.node_name {
                header.push("NODE".to_owned());
            }
            header
                .extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(str::to_owned));
            self.table.push(header);
        }
    }

    fn write_lost_events(
        &mut self,
        res: &GetFlowsResponse,
        lost: &LostEvent,
    ) -> Result<(), PrinterError> {
        let source = enum_text(lost.source, LostEventSource::as_str_name);
        let cpu = lost.cpu.unwrap_or(0);
        match self.opts.format {
            OutputFormat::Compact => {
                writeln!(
                    self.out,
                    "EVENTS LOST: {source} CPU({cpu}) {}",
                    lost.num_events_lost
                )?;
                self.out.flush()?;
            }
            OutputFormat::Table => {
                self.table_header();
                let mut row = vec![String::new()];
                if self.opts.node_name {
                    row.push(String::new());
                }
                row.extend([
                    source,
                    String::new(),
                    "EVENTS LOST".to_owned(),
                    String::new(),
                    format!("CPU({cpu}) - {}", lost.num_events_lost),
                ]);
                self.table.push(row);
            }
            OutputFormat::Json | OutputFormat::JsonPb => {
                let text = json::get_flows_response(res)?.to_compact_string();
                writeln!(self.out, "{text}")?;
                self.out.flush()?;
            }
        }
        self.lines += 1;
        Ok(())
    }

    fn write_node_status(
        &mut self,
        res: &GetFlowsResponse,
        status: &NodeStatusEvent,
    ) -> Result<(), PrinterError> {
        let state = NodeState::try_from(status.state_change).ok();
        let noteworthy = matches!(
            state,
            Some(NodeState::NodeError | NodeState::NodeUnavailable)
        );
        if !noteworthy && !self.opts.debug {
            return Ok(());
        }
        if self.opts.format.is_json() {
            let text = json::get_flows_response(res)?.to_compact_string();
            writeln!(self.err, "{text}")?;
        } else {
            let line = node_status_line(res, status);
            writeln!(self.err, "{}", escape_controls(&line))?;
        }
        self.err.flush()?;
        Ok(())
    }

    /// Writes what is still buffered (the aligned table) and hands the streams back.
    pub fn finish(mut self) -> Result<(W, E), PrinterError> {
        if !self.table.is_empty() {
            let text = tabulate(&self.table);
            self.out.write_all(text.as_bytes())?;
            self.table.clear();
        }
        self.out.flush()?;
        self.err.flush()?;
        Ok((self.out, self.err))
    }
}

fn node_status_line(res: &GetFlowsResponse, status: &NodeStatusEvent) -> String {
    let prefix = format!(
        "{} [{}]",
        format_stamp_milli(res.time.as_ref()),
        res.node_name
    );
    let count = status.node_names.len();
    let names = join_with_cut_off(&status.node_names, ", ", NODE_NAMES_CUT_OFF);
    match NodeState::try_from(status.state_change) {
        Ok(NodeState::NodeConnected) => {
            format!("{prefix}: Receiving flows from {count} nodes: {names}")
        }
        Ok(NodeState::NodeUnavailable) => {
            format!("{prefix}: {count} nodes are unavailable: {names}")
        }
        Ok(NodeState::NodeGone) => format!("{prefix}: {count} nodes removed from cluster: {names}"),
        Ok(NodeState::NodeError) => {
            format!(
                "{prefix}: Error {:?} on {count} nodes: {names}",
                status.message
            )
        }
        Ok(NodeState::UnknownNodeState) | Err(_) => format!(
            "{prefix}: unknown node status event: state_change:{} node_names:[{}] message:{:?}",
            status.state_change,
            status.node_names.join(" "),
            status.message
        ),
    }
}

/// Upstream's `joinWithCutOff`: joins until the text passes `target_len` (always at least one
/// element) and says how many were left out.
fn join_with_cut_off(elems: &[String], sep: &str, target_len: usize) -> String {
    let mut len = 0;
    let mut end = elems.len();
    for (i, elem) in elems.iter().enumerate() {
        len += elem.len() + sep.len();
        if len > target_len && i > 0 {
            end = i;
            break;
        }
    }
    let joined = elems.get(..end).unwrap_or(elems).join(sep);
    match elems.len() - end {
        0 => joined,
        omitted => format!("{joined} (and {omitted} more)"),
    }
}

/// The compact one-line form of a flow (without the trailing newline).
pub fn compact_flow(flow: &Flow, opts: &PrinterOptions) -> String {
    let (mut src, mut dst) = host_names(flow, opts.ip_translation);
    let mut src_id = format_identity(flow.source.as_ref().map_or(0, |e| e.identity));
    let mut dst_id = format_identity(flow.destination.as_ref().map_or(0, |e| e.identity));
    let arrow = match flow.is_reply {
        None => "<>",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
        Some(false) => "->",
    };
    let node = if opts.node_name {
        format!(" [{}]", flow.node_name)
    } else {
        String::new()
    };
    let line = format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
        format_stamp_milli(flow.time.as_ref()),
        flow_type(flow),
        verdict(flow),
        flow.summary,
    );
    escape_controls(&line)
}

/// `(ID:1234)`, or the reserved identity's name: `(world)`, `(host)`, `(unknown)`.
pub fn format_identity(identity: u32) -> String {
    match NumericIdentity::new(identity).reserved_name() {
        Some(name) => format!("({name})"),
        None => format!("(ID:{identity})"),
    }
}

/// Source and destination as `namespace/pod:port` (or service, or DNS names, or the address),
/// as upstream's `GetHostNames`; Ethernet addresses for non-IP flows.
pub fn host_names(flow: &Flow, ip_translation: bool) -> (String, String) {
    let Some(ip) = &flow.ip else {
        return match &flow.ethernet {
            Some(eth) => (eth.source.clone(), eth.destination.clone()),
            None => (String::new(), String::new()),
        };
    };
    let (src_port, dst_port) = ports(flow);
    let mut src_ns = flow.source.as_ref().map_or("", |e| e.namespace.as_str());
    let src_pod = flow.source.as_ref().map_or("", |e| e.pod_name.as_str());
    let mut dst_ns = flow
        .destination
        .as_ref()
        .map_or("", |e| e.namespace.as_str());
    let dst_pod = flow
        .destination
        .as_ref()
        .map_or("", |e| e.pod_name.as_str());
    let mut src_svc = "";
    let mut dst_svc = "";
    if let Some(svc) = &flow.source_service {
        src_ns = &svc.namespace;
        src_svc = &svc.name;
    }
    if let Some(svc) = &flow.destination_service {
        dst_ns = &svc.namespace;
        dst_svc = &svc.name;
    }
    let src = hostname(
        &ip.source,
        src_port,
        HostNames {
            namespace: src_ns,
            pod: src_pod,
            service: src_svc,
            dns: &flow.source_names,
        },
        ip_translation,
    );
    let dst = hostname(
        &ip.destination,
        dst_port,
        HostNames {
            namespace: dst_ns,
            pod: dst_pod,
            service: dst_svc,
            dns: &flow.destination_names,
        },
        ip_translation,
    );
    (src, dst)
}

struct HostNames<'a> {
    namespace: &'a str,
    pod: &'a str,
    service: &'a str,
    dns: &'a [String],
}

fn hostname(ip: &str, port: Option<u32>, names: HostNames<'_>, ip_translation: bool) -> String {
    let mut host = ip.to_owned();
    if ip_translation {
        if !names.pod.is_empty() {
            host = join_path(names.namespace, names.pod);
        } else if !names.service.is_empty() {
            host = join_path(names.namespace, names.service);
        } else if !names.dns.is_empty() {
            host = names.dns.join(",");
        }
    }
    match port {
        Some(port) if port != 0 => {
            // Go's net.JoinHostPort brackets hosts that contain a colon (IPv6).
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
        _ => host,
    }
}

/// Go's `path.Join(ns, name)` for the values that occur here: no slash when `ns` is empty.
fn join_path(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

fn ports(flow: &Flow) -> (Option<u32>, Option<u32>) {
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(layer4::Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(layer4::Protocol::Sctp(s)) => (Some(s.source_port), Some(s.destination_port)),
        _ => (None, None),
    }
}

/// Upstream's `GetFlowType`: the L7 protocol and type, the trace observation point, the drop
/// reason, or `policy-verdict:<match> <direction>`.
pub fn flow_type(flow: &Flow) -> String {
    if let Some(l7) = &flow.l7 {
        let mut l7_type = enum_text(l7.r#type, proto::flow::L7FlowType::as_str_name).to_lowercase();
        let protocol = match &l7.record {
            Some(layer7::Record::Http(_)) => "http",
            Some(layer7::Record::Dns(dns)) => {
                l7_type = format!("{l7_type} {}", dns.observation_source);
                "dns"
            }
            Some(layer7::Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        return format!("{protocol}-{l7_type}");
    }
    let Some(event) = &flow.event_type else {
        return "UNKNOWN".to_owned();
    };
    // Upstream narrows the sub type to a byte before naming it.
    let sub_type = event.sub_type as u8;
    match event.r#type {
        message_type::TRACE => trace_observation_point_name(sub_type),
        message_type::DROP => datapath::monitor::drop_reason_name(sub_type)
            .map_or_else(|| sub_type.to_string(), str::to_owned),
        message_type::POLICY_VERDICT => {
            let match_type = u8::try_from(flow.policy_match_type).map_or_else(
                |_| "unknown".to_owned(),
                |code| datapath::monitor::PolicyMatchType::from_code(code).name(),
            );
            format!(
                "policy-verdict:{match_type} {}",
                enum_text(flow.traffic_direction, TrafficDirection::as_str_name)
            )
        }
        message_type::CAPTURE => enum_text(
            flow.debug_capture_point,
            proto::flow::DebugCapturePoint::as_str_name,
        ),
        message_type::TRACE_SOCK => {
            use proto::flow::SocketTranslationPoint as P;
            match P::try_from(flow.sock_xlate_point) {
                Ok(P::SockXlatePointPostDirectionFwd) => "post-xlate-fwd".to_owned(),
                Ok(P::SockXlatePointPostDirectionRev) => "post-xlate-rev".to_owned(),
                Ok(P::SockXlatePointPreDirectionFwd) => "pre-xlate-fwd".to_owned(),
                Ok(P::SockXlatePointPreDirectionRev) => "pre-xlate-rev".to_owned(),
                _ => enum_text(flow.sock_xlate_point, P::as_str_name),
            }
        }
        _ => "UNKNOWN".to_owned(),
    }
}

/// Upstream's `TraceObservationPoints` names, indexed by the trace notification sub type;
/// `hubble observe --type trace:<name>` takes the same names.
pub const TRACE_OBSERVATION_POINTS: [&str; 14] = [
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

fn trace_observation_point_name(code: u8) -> String {
    TRACE_OBSERVATION_POINTS
        .get(usize::from(code))
        .map_or_else(|| code.to_string(), |name| (*name).to_owned())
}

/// The verdict word; policy-verdict events say `ALLOWED`, `DENIED` or `AUDITED` instead.
fn verdict(flow: &Flow) -> String {
    let policy_verdict = flow
        .event_type
        .as_ref()
        .is_some_and(|e| e.r#type == message_type::POLICY_VERDICT);
    let name = enum_text(flow.verdict, Verdict::as_str_name);
    if !policy_verdict {
        return name;
    }
    match Verdict::try_from(flow.verdict) {
        Ok(Verdict::Forwarded | Verdict::Redirected) => "ALLOWED".to_owned(),
        Ok(Verdict::Dropped | Verdict::Error) => "DENIED".to_owned(),
        Ok(Verdict::Audit) => "AUDITED".to_owned(),
        _ => name,
    }
}

/// An enum's value name as Go's `String()` prints it: the name, or the number when unknown.
fn enum_text<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str) -> String {
    E::try_from(value).map_or_else(|_| value.to_string(), |e| name(&e).to_owned())
}

/// Escapes control characters (ESC, CR, ...) so text from the network cannot drive the terminal.
fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Go's `tabwriter.NewWriter(w, 2, 0, 3, ' ', 0)`: every cell but the last of a row is padded
/// to its column's widest cell plus 3 spaces (at least 2 wide).
fn tabulate(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let column = (widths.get(i).copied().unwrap_or(0) + 3).max(2);
                let pad = column.saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// Upstream's `uint64Grouping`: digits grouped by three with commas (`1,000,000`).
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `hubble status` output for a `ServerStatusResponse`, after the health-check line.
pub fn format_server_status(
    res: &ServerStatusResponse,
    format: OutputFormat,
) -> Result<String, PrinterError> {
    let connected = res
        .num_connected_nodes
        .map_or_else(|| "N/A".to_owned(), |n| n.to_string());
    let unavailable = res
        .num_unavailable_nodes
        .map_or_else(|| "N/A".to_owned(), |n| n.to_string());
    let mut flows_per_sec = if res.flows_rate > 0.0 {
        format!("{:.2}", res.flows_rate)
    } else {
        "N/A".to_owned()
    };
    Ok(match format {
        OutputFormat::Json | OutputFormat::JsonPb => {
            format!("{}\n", json::server_status(res).to_compact_string())
        }
        OutputFormat::Table => tabulate(&[
            [
                "NUM FLOWS",
                "MAX FLOWS",
                "SEEN FLOWS",
                "FLOWS PER SECOND",
                "UPTIME",
                "NUM CONNECTED NODES",
                "NUM UNAVAILABLE NODES",
                "VERSION",
            ]
            .map(str::to_owned)
            .to_vec(),
            vec![
                group_digits(res.num_flows),
                group_digits(res.max_flows),
                group_digits(res.seen_flows),
                flows_per_sec,
                format_go_duration(res.uptime_ns),
                connected,
                unavailable,
                escape_controls(&res.version),
            ],
        ]),
        OutputFormat::Compact => {
            let mut out = String::new();
            let ratio = if res.max_flows > 0 {
                format!(
                    " ({:.2}%)",
                    res.num_flows as f64 / res.max_flows as f64 * 100.0
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "Current/Max Flows: {}/{}{ratio}\n",
                group_digits(res.num_flows),
                group_digits(res.max_flows)
            ));
            let uptime_secs = res.uptime_ns as f64 / 1e9;
            if flows_per_sec == "N/A" && uptime_secs > 0.0 {
                flows_per_sec = format!("{:.2}", res.seen_flows as f64 / uptime_secs);
            }
            out.push_str(&format!("Flows/s: {flows_per_sec}\n"));
            if let Some(connected) = res.num_connected_nodes {
                let total = res
                    .num_unavailable_nodes
                    .map_or_else(String::new, |u| format!("/{}", u + connected));
                out.push_str(&format!("Connected Nodes: {connected}{total}\n"));
            }
            if let Some(unavailable) = res.num_unavailable_nodes.filter(|n| *n > 0) {
                if res.unavailable_nodes.is_empty() {
                    out.push_str(&format!("Unavailable Nodes: {unavailable}\n"));
                } else {
                    let mut names: Vec<String> = res
                        .unavailable_nodes
                        .iter()
                        .map(|n| escape_controls(n))
                        .collect();
                    names.sort();
                    let listed = u32::try_from(names.len()).unwrap_or(u32::MAX);
                    if unavailable > listed {
                        names.push(format!("and {} more...", unavailable - listed));
                    }
                    out.push_str(&format!(
                        "Unavailable Nodes: {unavailable}\n  - {}\n",
                        names.join("\n  - ")
                    ));
                }
            }
            out
        }
    })
}

/// `hubble list nodes -o ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeListFormat {
    /// `NAME STATUS AGE FLOWS/S CURRENT/MAX-FLOWS`.
    Table,
    /// The table plus `VERSION ADDRESS TLS`.
    Wide,
    /// A two-space indented JSON array of protojson `Node`s.
    Json,
}

impl FromStr for NodeListFormat {
    type Err = PrinterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(NodeListFormat::Table),
            "wide" => Ok(NodeListFormat::Wide),
            "json" => Ok(NodeListFormat::Json),
            other => Err(PrinterError::UnknownFormat {
                format: other.to_owned(),
                expected: "json, table, wide",
            }),
        }
    }
}

/// `hubble list nodes` output, nodes sorted by name as upstream.
pub fn format_nodes(nodes: &[Node], format: NodeListFormat) -> String {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if format == NodeListFormat::Json {
        let array = json::Json::Array(nodes.iter().map(|n| json::node(n)).collect());
        return format!("{}\n", array.to_pretty_string());
    }
    let wide = format == NodeListFormat::Wide;
    let mut header: Vec<String> = ["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"]
        .map(str::to_owned)
        .to_vec();
    if wide {
        header.extend(["VERSION", "ADDRESS", "TLS"].map(str::to_owned));
    }
    let mut rows = vec![header];
    for node in nodes {
        // Upstream rounds the uptime to whole seconds before printing and dividing.
        let uptime_secs = (node.uptime_ns + 500_000_000) / 1_000_000_000;
        let (age, flows_per_sec) = if uptime_secs > 0 {
            (
                format_go_duration(uptime_secs * 1_000_000_000),
                format!("{:.2}", node.seen_flows as f64 / uptime_secs as f64),
            )
        } else {
            ("N/A".to_owned(), "N/A".to_owned())
        };
        let ratio = if node.max_flows > 0 {
            format!(
                "{}/{} ({:6.2}%)",
                node.num_flows,
                node.max_flows,
                node.num_flows as f64 / node.max_flows as f64 * 100.0
            )
        } else {
            "N/A".to_owned()
        };
        let mut row = vec![
            node.name.clone(),
            node_state_title(node.state).to_owned(),
            age,
            flows_per_sec,
            ratio,
        ];
        if wide {
            let version = if node.version.is_empty() {
                "N/A".to_owned()
            } else {
                node.version.clone()
            };
            let tls = match &node.tls {
                None => "N/A",
                Some(t) if t.enabled => "Enabled",
                Some(_) => "Disabled",
            };
            row.extend([version, node.address.clone(), tls.to_owned()]);
        }
        rows.push(row.iter().map(|c| escape_controls(c)).collect());
    }
    tabulate(&rows)
}

fn node_state_title(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::NodeConnected) => "Connected",
        Ok(NodeState::NodeUnavailable) => "Unavailable",
        Ok(NodeState::NodeGone) => "Gone",
        Ok(NodeState::NodeError) => "Error",
        Ok(NodeState::UnknownNodeState) | Err(_) => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits_like_upstream() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(4095), "4,095");
        assert_eq!(group_digits(1_000_000), "1,000,000");
    }

    #[test]
    fn cut_off_keeps_at_least_one_name() {
        let names: Vec<String> = (0..10)
            .map(|i| format!("node-with-a-long-name-{i}"))
            .collect();
        assert_eq!(
            join_with_cut_off(&names, ", ", 50),
            "node-with-a-long-name-0, node-with-a-long-name-1 (and 8 more)"
        );
        let one = vec!["x".repeat(80)];
        assert_eq!(join_with_cut_off(&one, ", ", 50), "x".repeat(80));
    }

    #[test]
    fn tabulate_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["long".to_owned(), String::new(), "x".to_owned()],
        ];
        assert_eq!(tabulate(&rows), "A      BB   C\nlong        x\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("pod\u{1b}[31m"), "pod\\u{1b}[31m");
        assert_eq!(escape_controls("plain"), "plain");
    }
}
