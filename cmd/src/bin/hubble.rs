//! `hubble`: the Hubble CLI (DESIGN 4.9). Talks gRPC to an agent's Hubble server (`:4244`) or to
//! hubble-relay (`:4245`, the default) and prints what it answers with `hubble::printer`.
//!
//! - `hubble observe`: flows, with upstream's filter flags. Flags are read in command-line order
//!   because upstream's meaning depends on it: `--not` negates only the filter right after it
//!   (into the blacklist); flags of one direction are AND-ed in a single `FlowFilter`; the
//!   either-side flags (`--pod`, `--ip`, `--label`, `--namespace`, `--port`, `--identity`) split
//!   the request into two filters, source side OR destination side. Without `--since`,
//!   `--until`, `--first` or `--follow`, the last 20 flows are asked for, as upstream does.
//! - `hubble status`: `ServerStatus` with a health line (upstream asks the gRPC health service
//!   first; our servers have none, so a successful `ServerStatus` is the health check).
//! - `hubble list nodes`: `GetNodes`.
//!
//! `--server` takes `host:port`, `http://host:port` or `unix:///path` (env `HUBBLE_SERVER`).

use std::future::Future;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hubble::printer::time::parse_time;
use hubble::printer::{
    NodeListFormat, OutputFormat, Printer, PrinterOptions, TRACE_OBSERVATION_POINTS, format_nodes,
    format_server_status,
};
use hyper_util::rt::TokioIo;
use model::identity::{NumericIdentity, ReservedIdentity};
use proto::flow::{DropReason, EventTypeFilter, FlowFilter, TcpFlags, TrafficDirection, Verdict};
use proto::observer::observer_client::ObserverClient;
use proto::observer::{GetFlowsRequest, GetNodesRequest, ServerStatusRequest};
use tokio::net::UnixStream;
use tonic::Code;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Upstream's `defaults.FlowPrintCount`.
const DEFAULT_FLOW_COUNT: u64 = 20;

#[derive(Debug, Parser)]
#[command(
    name = "hubble",
    version,
    about = "CLI for Hubble: observe the network flows of a Cilium cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Observe flows of a Hubble server.
    #[command(after_help = OBSERVE_AFTER_HELP)]
    Observe(Box<ObserveArgs>),
    /// Display the status of the Hubble server.
    Status(StatusArgs),
    /// List Hubble objects.
    List {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    /// List Hubble nodes.
    #[command(alias = "node")]
    Nodes(ListNodesArgs),
}

#[derive(Debug, Clone, Args)]
struct ServerArgs {
    /// Address of the Hubble server or relay: host:port, http://host:port or unix:///path.
    #[arg(long, env = "HUBBLE_SERVER", default_value = "localhost:4245")]
    server: String,
    /// How long to wait for the connection (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Output format: compact, json or table.
    #[arg(short = 'o', long, default_value = "compact")]
    output: String,
}

#[derive(Debug, Args)]
struct ListNodesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Output format: json, table or wide.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
}

const OBSERVE_AFTER_HELP: &str = "\
Filters: values of one flag are OR-ed, different flags are AND-ed. Flags naming no direction
(--pod, --ip, --label, --namespace, --port, --identity) match either side of a flow.
'--not' negates the filter flag right after it: hubble observe --not --verdict FORWARDED";

#[derive(Debug, Args)]
struct ObserveArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Get the last N flows (default 20 unless --follow, --first, --since or --until is given).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    last: u64,
    /// Get the first N flows stored.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    first: u64,
    /// Get all flows stored.
    #[arg(long)]
    all: bool,
    /// Follow the flow stream (print new flows as they arrive).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Flows since this time: a duration ago (5m, 1h30m) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Flows until this time: a duration ago (5m, 1h30m) or an RFC 3339 time.
    #[arg(long)]
    until: Option<String>,

    /// Output format: compact, json, jsonpb or table.
    #[arg(short = 'o', long, default_value = "compact")]
    output: String,
    /// Print the name of the node that observed each flow.
    #[arg(long)]
    print_node_name: bool,
    /// Print addresses instead of pod and service names.
    #[arg(long)]
    numeric: bool,
    /// Also print informational relay events (nodes connecting).
    #[arg(short = 'D', long)]
    debug: bool,

    /// Negate the next filter flag (put it in the blacklist), e.g. --not --from-ip 2.2.2.2.
    // Append (not Count) so that clap records the position of every occurrence.
    #[arg(
        long,
        num_args = 0,
        default_missing_value = "true",
        action = ArgAction::Append,
        help_heading = "Filters"
    )]
    not: Vec<bool>,
    /// Flows from the pod name prefix [namespace/]POD-NAME.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    from_pod: Vec<String>,
    /// Flows to the pod name prefix [namespace/]POD-NAME.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    to_pod: Vec<String>,
    /// Flows from or to the pod name prefix [namespace/]POD-NAME.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pod: Vec<String>,
    /// Flows from endpoints in the namespace.
    #[arg(long, value_name = "NS", help_heading = "Filters")]
    from_namespace: Vec<String>,
    /// Flows to endpoints in the namespace.
    #[arg(long, value_name = "NS", help_heading = "Filters")]
    to_namespace: Vec<String>,
    /// Flows from or to endpoints in the namespace.
    #[arg(short = 'n', long, value_name = "NS", help_heading = "Filters")]
    namespace: Vec<String>,
    /// Flows from endpoints with the label selector (e.g. app=client, reserved:world).
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    from_label: Vec<String>,
    /// Flows to endpoints with the label selector.
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    to_label: Vec<String>,
    /// Flows from or to endpoints with the label selector.
    #[arg(short = 'l', long, value_name = "SELECTOR", help_heading = "Filters")]
    label: Vec<String>,
    /// Flows from the address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    from_ip: Vec<String>,
    /// Flows to the address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    to_ip: Vec<String>,
    /// Flows from or to the address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    ip: Vec<String>,
    /// Flows from the port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    from_port: Vec<String>,
    /// Flows to the port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    to_port: Vec<String>,
    /// Flows with the port on either side.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    port: Vec<String>,
    /// Flows from the security identity (number or reserved name such as world).
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    from_identity: Vec<String>,
    /// Flows to the security identity.
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    to_identity: Vec<String>,
    /// Flows from or to the security identity.
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    identity: Vec<String>,
    /// Flows with the verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED).
    #[arg(long, value_name = "VERDICT", help_heading = "Filters")]
    verdict: Vec<String>,
    /// Flows dropped for the reason (e.g. POLICY_DENIED).
    #[arg(long, value_name = "REASON", help_heading = "Filters")]
    drop_reason_desc: Vec<String>,
    /// Flows of the L4/L7 protocol (tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns, kafka).
    #[arg(long, value_name = "PROTOCOL", help_heading = "Filters")]
    protocol: Vec<String>,
    /// Flows with at least these TCP flags (e.g. syn, syn,ack).
    #[arg(long, value_name = "FLAGS", help_heading = "Filters")]
    tcp_flags: Vec<String>,
    /// Event type TYPE or TYPE:SUBTYPE: trace, drop, policy-verdict, capture, l7, trace-sock
    /// (trace sub types: to-endpoint, from-endpoint, to-stack, ...).
    #[arg(
        short = 't',
        long = "type",
        value_name = "TYPE",
        help_heading = "Filters"
    )]
    event_type: Vec<String>,
    /// Flows in the traffic direction (ingress or egress).
    #[arg(long, value_name = "DIRECTION", help_heading = "Filters")]
    traffic_direction: Vec<String>,
    /// Flows observed on nodes matching the name pattern (e.g. k8s*, cluster/*).
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    node_name: Vec<String>,
}

/// Filter flags, by clap id and the name upstream uses for them.
const FILTER_FLAGS: &[(&str, &str)] = &[
    ("not", "not"),
    ("from_pod", "from-pod"),
    ("to_pod", "to-pod"),
    ("pod", "pod"),
    ("from_namespace", "from-namespace"),
    ("to_namespace", "to-namespace"),
    ("namespace", "namespace"),
    ("from_label", "from-label"),
    ("to_label", "to-label"),
    ("label", "label"),
    ("from_ip", "from-ip"),
    ("to_ip", "to-ip"),
    ("ip", "ip"),
    ("from_port", "from-port"),
    ("to_port", "to-port"),
    ("port", "port"),
    ("from_identity", "from-identity"),
    ("to_identity", "to-identity"),
    ("identity", "identity"),
    ("verdict", "verdict"),
    ("drop_reason_desc", "drop-reason-desc"),
    ("protocol", "protocol"),
    ("tcp_flags", "tcp-flags"),
    ("event_type", "type"),
    ("traffic_direction", "traffic-direction"),
    ("node_name", "node-name"),
];

/// Flags that cannot be used together in one of the lists (upstream's conflict groups, for
/// the flags this CLI has).
const CONFLICTS: &[&[&str]] = &[
    &["from-ip", "ip", "from-namespace", "namespace"],
    &["from-ip", "ip", "from-pod", "pod"],
    &["to-ip", "ip", "to-namespace", "namespace"],
    &["to-ip", "ip", "to-pod", "pod"],
    &["to-pod", "namespace"],
    &["from-pod", "namespace"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
];

/// Every filter flag occurrence, in command-line order.
fn filter_occurrences(matches: &ArgMatches) -> Vec<(usize, &'static str, String)> {
    let mut occurrences = Vec::new();
    for (id, name) in FILTER_FLAGS {
        let Some(indices) = matches.indices_of(id) else {
            continue;
        };
        if *id == "not" {
            occurrences.extend(indices.map(|i| (i, *name, String::new())));
            continue;
        }
        let values = matches
            .get_many::<String>(id)
            .into_iter()
            .flatten()
            .cloned();
        occurrences.extend(indices.zip(values).map(|(i, v)| (i, *name, v)));
    }
    occurrences.sort_by_key(|(index, _, _)| *index);
    occurrences
}

/// One side of the request (whitelist or blacklist): the filter for the source side (`left`)
/// and for the destination side (`right`) of the either-side flags; flags with a direction go
/// into both, so when no either-side flag is used the two are equal and one filter is sent.
#[derive(Debug, Default)]
struct FilterTracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    namespaces: Vec<String>,
    source_namespaces: Vec<String>,
    destination_namespaces: Vec<String>,
    changed: Vec<&'static str>,
}

impl FilterTracker {
    fn apply(&mut self, update: impl Fn(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn apply_left(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
    }

    fn apply_right(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn check_conflicts(&self) -> anyhow::Result<()> {
        for group in CONFLICTS {
            for flag in group.iter().filter(|f| self.changed.contains(f)) {
                if let Some(other) = group
                    .iter()
                    .find(|o| *o != flag && self.changed.contains(o))
                {
                    bail!("filters --{flag} and --{other} cannot be combined");
                }
            }
        }
        Ok(())
    }

    fn check_namespace_conflicts(&self) -> anyhow::Result<()> {
        for filter in [&self.left, &self.right].into_iter().flatten() {
            for (namespaces, pods) in [
                (&self.namespaces, &filter.source_pod),
                (&self.namespaces, &filter.destination_pod),
                (&self.source_namespaces, &filter.source_pod),
                (&self.destination_namespaces, &filter.destination_pod),
            ] {
                for ns in namespaces {
                    for pod in pods {
                        if let Some((pod_ns, _)) = pod.split_once('/')
                            && pod_ns != ns
                        {
                            bail!("namespace conflict: {ns:?} does not contain {pod:?}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, name: &'static str, value: String) -> anyhow::Result<()> {
        if !self.changed.contains(&name) {
            self.changed.push(name);
        }
        self.check_conflicts()?;
        match name {
            "pod" => {
                let v = value.clone();
                self.apply_left(|f| f.source_pod.push(v));
                self.apply_right(|f| f.destination_pod.push(value));
            }
            "from-pod" => self.apply(|f| f.source_pod.push(value.clone())),
            "to-pod" => self.apply(|f| f.destination_pod.push(value.clone())),
            "ip" => {
                let v = value.clone();
                self.apply_left(|f| f.source_ip.push(v));
                self.apply_right(|f| f.destination_ip.push(value));
            }
            "from-ip" => self.apply(|f| f.source_ip.push(value.clone())),
            "to-ip" => self.apply(|f| f.destination_ip.push(value.clone())),
            "label" => {
                let v = value.clone();
                self.apply_left(|f| f.source_label.push(v));
                self.apply_right(|f| f.destination_label.push(value));
            }
            "from-label" => self.apply(|f| f.source_label.push(value.clone())),
            "to-label" => self.apply(|f| f.destination_label.push(value.clone())),
            "namespace" => self.namespaces.push(value),
            "from-namespace" => self.source_namespaces.push(value),
            "to-namespace" => self.destination_namespaces.push(value),
            "port" => {
                let v = value.clone();
                self.apply_left(|f| f.source_port.push(v));
                self.apply_right(|f| f.destination_port.push(value));
            }
            "from-port" => self.apply(|f| f.source_port.push(value.clone())),
            "to-port" => self.apply(|f| f.destination_port.push(value.clone())),
            "identity" => {
                let id = parse_identity(&value)?;
                self.apply_left(|f| f.source_identity.push(id));
                self.apply_right(|f| f.destination_identity.push(id));
            }
            "from-identity" => {
                let id = parse_identity(&value)?;
                self.apply(|f| f.source_identity.push(id));
            }
            "to-identity" => {
                let id = parse_identity(&value)?;
                self.apply(|f| f.destination_identity.push(id));
            }
            "verdict" => {
                let verdict = Verdict::from_str_name(&value)
                    .filter(|v| *v != Verdict::Unknown)
                    .ok_or_else(|| anyhow!("invalid --verdict value: {value}"))?;
                self.apply(|f| f.verdict.push(verdict as i32));
            }
            "drop-reason-desc" => {
                if value.is_empty() {
                    bail!("empty --drop-reason-desc value");
                }
                let reason = DropReason::from_str_name(&value)
                    .ok_or_else(|| anyhow!("invalid --drop-reason-desc value: {value}"))?;
                self.apply(|f| f.drop_reason_desc.push(reason as i32));
            }
            "protocol" => self.apply(|f| f.protocol.push(value.clone())),
            "tcp-flags" => {
                let flags = parse_tcp_flags(&value)?;
                self.apply(|f| f.tcp_flags.push(flags));
            }
            "type" => {
                let filter = parse_event_type(&value)?;
                self.apply(|f| f.event_type.push(filter));
            }
            "traffic-direction" => {
                let direction = match value.to_lowercase().as_str() {
                    "ingress" => TrafficDirection::Ingress,
                    "egress" => TrafficDirection::Egress,
                    other => {
                        bail!("{other}: invalid traffic direction, expected ingress or egress")
                    }
                };
                self.apply(|f| f.traffic_direction.push(direction as i32));
            }
            "node-name" => self.apply(|f| f.node_name.push(value.clone())),
            other => bail!("unknown filter flag --{other}"),
        }
        self.check_namespace_conflicts()
    }

    /// The filters to send: none, one, or two (source side OR destination side).
    fn into_filters(self) -> Vec<FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.namespaces.is_empty()
            && self.source_namespaces.is_empty()
            && self.destination_namespaces.is_empty()
        {
            return Vec::new();
        }
        let mut left = self.left.unwrap_or_default();
        let mut right = self.right.unwrap_or_default();
        if !self.destination_namespaces.is_empty() {
            namespaces_on_destination(&mut left, &self.destination_namespaces);
            namespaces_on_destination(&mut right, &self.destination_namespaces);
        }
        if !self.source_namespaces.is_empty() {
            namespaces_on_source(&mut left, &self.source_namespaces);
            namespaces_on_source(&mut right, &self.source_namespaces);
        }
        if !self.namespaces.is_empty() {
            namespaces_on_source(&mut left, &self.namespaces);
            namespaces_on_destination(&mut right, &self.namespaces);
        }
        if left == right {
            vec![left]
        } else {
            vec![left, right]
        }
    }
}

/// A namespace flag narrows the pod filter of its side: pods without a namespace get it, and
/// with no pod filter the whole namespace (`ns/`) is selected.
fn namespaced(pods: &mut Vec<String>, namespaces: &[String]) {
    if pods.is_empty() {
        pods.push(String::new());
    }
    let mut out = Vec::new();
    for pod in pods.iter() {
        if pod.contains('/') {
            out.push(pod.clone());
        } else {
            out.extend(namespaces.iter().map(|ns| format!("{ns}/{pod}")));
        }
    }
    *pods = out;
}

fn namespaces_on_source(filter: &mut FlowFilter, namespaces: &[String]) {
    namespaced(&mut filter.source_pod, namespaces);
}

fn namespaces_on_destination(filter: &mut FlowFilter, namespaces: &[String]) {
    namespaced(&mut filter.destination_pod, namespaces);
}

fn parse_identity(value: &str) -> anyhow::Result<u32> {
    if let Some(reserved) = ReservedIdentity::from_name(value) {
        return Ok(reserved.id().get());
    }
    value
        .parse::<NumericIdentity>()
        .map(u32::from)
        .map_err(|_| {
            let names: Vec<&str> = ReservedIdentity::ALL.iter().map(|r| r.name()).collect();
            anyhow!(
                "invalid security identity {value:?}, expected one of [{}] or a numeric value",
                names.join(" ")
            )
        })
}

fn parse_tcp_flags(value: &str) -> anyhow::Result<TcpFlags> {
    let mut flags = TcpFlags::default();
    for flag in value.split(',') {
        match flag.to_uppercase().as_str() {
            "SYN" => flags.syn = true,
            "FIN" => flags.fin = true,
            "RST" => flags.rst = true,
            "PSH" => flags.psh = true,
            "ACK" => flags.ack = true,
            "URG" => flags.urg = true,
            "ECE" => flags.ece = true,
            "CWR" => flags.cwr = true,
            "NS" => flags.ns = true,
            _ => bail!("unknown tcp flag: {flag}"),
        }
    }
    Ok(flags)
}

/// Upstream's monitor message type names.
fn message_type(name: &str) -> Option<i32> {
    Some(match name {
        "drop" => 1,
        "debug" => 2,
        "capture" => 3,
        "trace" => 4,
        "policy-verdict" => 5,
        "recorder" => 6,
        "trace-sock" => 7,
        "l7" => 129,
        "agent" => 130,
        _ => return None,
    })
}

/// The trace sub type of an observation point name (`to-endpoint` is 0).
fn trace_sub_type(name: &str) -> Option<i32> {
    TRACE_OBSERVATION_POINTS
        .iter()
        .position(|point| *point == name)
        .and_then(|code| i32::try_from(code).ok())
}

fn parse_event_type(value: &str) -> anyhow::Result<EventTypeFilter> {
    let (type_text, sub_text) = match value.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (value, None),
    };
    let r#type = match message_type(type_text) {
        Some(t) => t,
        None => type_text
            .parse::<u32>()
            .ok()
            .and_then(|t| i32::try_from(t).ok())
            .ok_or_else(|| {
                anyhow!(
                    "unable to parse type '{type_text}', not a known type name and unable to parse as numeric value"
                )
            })?,
    };
    let mut filter = EventTypeFilter {
        r#type,
        ..EventTypeFilter::default()
    };
    if let Some(sub_text) = sub_text {
        let named = if r#type == 4 {
            trace_sub_type(sub_text)
        } else {
            None
        };
        let sub_type = match named {
            Some(s) => s,
            None => sub_text
                .parse::<u32>()
                .ok()
                .and_then(|s| i32::try_from(s).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "unable to parse event sub-type '{sub_text}', not a known sub-type name and unable to parse as numeric value"
                    )
                })?,
        };
        filter.match_sub_type = true;
        filter.sub_type = sub_type;
    }
    Ok(filter)
}

/// Builds the whitelist and blacklist from the filter flags in command-line order.
fn build_filters(matches: &ArgMatches) -> anyhow::Result<(Vec<FlowFilter>, Vec<FlowFilter>)> {
    let mut whitelist = FilterTracker::default();
    let mut blacklist = FilterTracker::default();
    let mut negate_next = false;
    for (_, name, value) in filter_occurrences(matches) {
        if name == "not" {
            if negate_next {
                bail!("consecutive --not statements");
            }
            negate_next = true;
            continue;
        }
        if std::mem::take(&mut negate_next) {
            blacklist.set(name, value)?;
        } else {
            whitelist.set(name, value)?;
        }
    }
    if negate_next {
        bail!("trailing --not found in the arguments");
    }
    Ok((whitelist.into_filters(), blacklist.into_filters()))
}

/// The `GetFlowsRequest` for `hubble observe` (upstream's `getFlowsRequest`).
fn flows_request(
    args: &ObserveArgs,
    matches: &ArgMatches,
    now: SystemTime,
) -> anyhow::Result<GetFlowsRequest> {
    let first = args.first > 0;
    let last = args.last > 0;
    if first && last {
        bail!("cannot set both --first and --last");
    }
    if first && args.all {
        bail!("cannot set both --first and --all");
    }
    if first && args.follow {
        bail!("cannot set both --first and --follow");
    }
    if last && args.all {
        bail!("cannot set both --last and --all");
    }
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now).context("failed to parse the since time"))
        .transpose()?;
    // As upstream: --until is ignored while following (the stream has no end).
    let until = match (&args.until, args.follow) {
        (Some(u), false) => Some(parse_time(u, now).context("failed to parse the until time")?),
        _ => None,
    };
    let mut number = if first { args.first } else { args.last };
    if since.is_none() && until.is_none() && !first {
        if args.all {
            number = u64::MAX;
        } else if number == 0 && !args.follow {
            number = DEFAULT_FLOW_COUNT;
        }
    }
    let (whitelist, blacklist) = build_filters(matches)?;
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist,
        blacklist,
        since,
        until,
        ..GetFlowsRequest::default()
    })
}

/// Connects to a unix socket for tonic (which only dials TCP by itself).
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { UnixStream::connect(path).await.map(TokioIo::new) })
    }
}

/// A connected client, or an error that says where we tried and what to check.
async fn connect(server: &ServerArgs) -> anyhow::Result<ObserverClient<Channel>> {
    let address = server.server.trim();
    let unreachable = |err: &dyn std::error::Error| {
        // hyper's errors repeat their cause in their own text; keep each message once.
        let mut parts = vec![err.to_string()];
        let mut source = err.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            match parts.last_mut() {
                Some(last) if text.starts_with(last.as_str()) => *last = text,
                Some(last) if last.contains(&text) => {}
                _ => parts.push(text),
            }
            source = cause.source();
        }
        let detail = parts.join(": ");
        anyhow!(
            "failed to connect to '{address}': {detail}; check that the Hubble server \
             (the agent's :4244 or hubble-relay's :4245) is running there, or pass the right \
             address with --server or HUBBLE_SERVER"
        )
    };
    let channel = if let Some(path) = address.strip_prefix("unix://") {
        // Any authority will do: the connector ignores the URI.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(server.timeout);
        endpoint
            .connect_with_connector(UnixConnector(PathBuf::from(path)))
            .await
            .map_err(|e| unreachable(&e))?
    } else {
        if address.starts_with("tls://") || address.starts_with("https://") {
            bail!("TLS is not supported by this hubble CLI: use host:port or unix:///path");
        }
        let host_port = address.strip_prefix("http://").unwrap_or(address);
        let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
            .map_err(|e| anyhow!("invalid --server address '{address}': {e}"))?
            .connect_timeout(server.timeout);
        endpoint.connect().await.map_err(|e| unreachable(&e))?
    };
    Ok(ObserverClient::new(channel))
}

/// Turns a gRPC error into a message naming the server and, for bad requests, what was wrong.
fn rpc_error(status: tonic::Status, server: &str) -> anyhow::Error {
    match status.code() {
        Code::InvalidArgument => anyhow!("invalid argument: {}", status.message()),
        Code::Unavailable => anyhow!(
            "server '{server}' is unavailable: {}; check --server / HUBBLE_SERVER and that \
             hubble-relay or the agent's Hubble server is running",
            status.message()
        ),
        // Upstream prints the bare message for errors the server did not classify.
        Code::Unknown => anyhow!("{}", status.message()),
        code => anyhow!("{code:?}: {}", status.message()),
    }
}

async fn observe(args: &ObserveArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let format: OutputFormat = args.output.parse()?;
    if format == OutputFormat::Table && args.follow {
        bail!("table output format is not compatible with follow mode");
    }
    let request = flows_request(args, matches, SystemTime::now())?;
    let mut client = connect(&args.server).await?;
    let mut stream = client
        .get_flows(request)
        .await
        .map_err(|s| rpc_error(s, &args.server.server))?
        .into_inner();
    let options = PrinterOptions {
        format,
        node_name: args.print_node_name,
        ip_translation: !args.numeric,
        debug: args.debug,
    };
    let mut printer = Printer::new(options, io::stdout(), io::stderr());
    let result = loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        match next {
            Ok(Some(response)) => {
                if let Err(err) = printer.write_response(&response) {
                    // A closed pipe (`hubble observe | head`) ends the command quietly.
                    if let hubble::printer::PrinterError::Io(io_err) = &err
                        && io_err.kind() == io::ErrorKind::BrokenPipe
                    {
                        return Ok(());
                    }
                    break Err(anyhow::Error::from(err));
                }
            }
            Ok(None) => break Ok(()),
            Err(status) if status.code() == Code::Cancelled => break Ok(()),
            Err(status) => break Err(rpc_error(status, &args.server.server)),
        }
    };
    printer.finish()?;
    result
}

async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let format: OutputFormat = args.output.parse()?;
    let mut client = connect(&args.server).await?;
    let response = client
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|s| rpc_error(s, &args.server.server))
        .context("failed to get hubble server status")?
        .into_inner();
    let mut out = io::stdout().lock();
    if format == OutputFormat::Compact {
        writeln!(out, "Healthcheck (via {}): Ok", args.server.server)?;
    }
    out.write_all(format_server_status(&response, format)?.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn list_nodes(args: &ListNodesArgs) -> anyhow::Result<()> {
    let format: NodeListFormat = args.output.parse()?;
    let mut client = connect(&args.server).await?;
    let response = client
        .get_nodes(GetNodesRequest {})
        .await
        .map_err(|s| rpc_error(s, &args.server.server))?
        .into_inner();
    let mut out = io::stdout().lock();
    out.write_all(format_nodes(&response.nodes, format).as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    match &cli.command {
        Command::Observe(args) => {
            let observe_matches = matches
                .subcommand_matches("observe")
                .ok_or_else(|| anyhow!("observe arguments are missing"))?;
            observe(args, observe_matches).await
        }
        Command::Status(args) => status(args).await,
        Command::List {
            command: ListCommand::Nodes(args),
        } => list_nodes(args).await,
    }
}

fn main() -> ExitCode {
    // Parsed through ArgMatches (not `Cli::parse`) because `observe` needs the flags' positions.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str]) -> anyhow::Result<GetFlowsRequest> {
        let argv = std::iter::once("hubble")
            .chain(std::iter::once("observe"))
            .chain(args.iter().copied());
        let matches = Cli::command().try_get_matches_from(argv)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let Command::Observe(observe) = cli.command else {
            bail!("not observe");
        };
        let sub = matches
            .subcommand_matches("observe")
            .ok_or_else(|| anyhow!("no observe matches"))?;
        flows_request(
            &observe,
            sub,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn not_negates_only_the_next_flag() -> anyhow::Result<()> {
        let req = request(&[
            "--not",
            "--verdict",
            "FORWARDED",
            "--from-pod",
            "default/client",
        ])?;
        assert_eq!(
            req.blacklist,
            vec![FlowFilter {
                verdict: vec![Verdict::Forwarded as i32],
                ..FlowFilter::default()
            }]
        );
        assert_eq!(
            req.whitelist,
            vec![FlowFilter {
                source_pod: vec!["default/client".into()],
                ..FlowFilter::default()
            }]
        );
        Ok(())
    }

    #[test]
    fn misplaced_not_is_rejected() {
        let trailing = request(&["--from-pod", "a", "--not"]).map(|_| ());
        assert!(trailing.is_err_and(|e| e.to_string().contains("trailing --not")));
        let twice = request(&["--not", "--not", "--from-pod", "a"]).map(|_| ());
        assert!(twice.is_err_and(|e| e.to_string().contains("consecutive --not")));
    }

    #[test]
    fn namespace_selects_either_side() -> anyhow::Result<()> {
        let req = request(&["--namespace", "ns", "--protocol", "tcp"])?;
        assert_eq!(
            req.whitelist,
            vec![
                FlowFilter {
                    source_pod: vec!["ns/".into()],
                    protocol: vec!["tcp".into()],
                    ..FlowFilter::default()
                },
                FlowFilter {
                    destination_pod: vec!["ns/".into()],
                    protocol: vec!["tcp".into()],
                    ..FlowFilter::default()
                },
            ]
        );
        let req = request(&["--from-namespace", "a", "--from-pod", "client"])?;
        assert_eq!(req.whitelist.len(), 1);
        assert_eq!(req.whitelist[0].source_pod, vec!["a/client".to_owned()]);
        Ok(())
    }

    #[test]
    fn conflicting_filters_are_rejected() {
        for args in [
            &["--pod", "a", "--from-ip", "1.1.1.1"][..],
            &["--label", "app=x", "--from-label", "app=y"],
            &["--port", "80", "--to-port", "8080"],
            &["--namespace", "a", "--to-pod", "b"],
            &["--from-namespace", "a", "--from-pod", "b/c"],
        ] {
            assert!(request(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn value_parsing() -> anyhow::Result<()> {
        let req = request(&[
            "--type",
            "trace:to-endpoint",
            "--type",
            "drop",
            "--identity",
            "world",
            "--tcp-flags",
            "syn,ack",
            "--traffic-direction",
            "Ingress",
            "--drop-reason-desc",
            "POLICY_DENIED",
        ])?;
        let left = &req.whitelist[0];
        assert_eq!(
            left.event_type,
            vec![
                EventTypeFilter {
                    r#type: 4,
                    match_sub_type: true,
                    sub_type: 0,
                },
                EventTypeFilter {
                    r#type: 1,
                    ..EventTypeFilter::default()
                },
            ]
        );
        assert_eq!(left.source_identity, vec![2]);
        assert_eq!(req.whitelist[1].destination_identity, vec![2]);
        assert_eq!(
            left.traffic_direction,
            vec![TrafficDirection::Ingress as i32]
        );
        assert_eq!(left.drop_reason_desc, vec![DropReason::PolicyDenied as i32]);
        assert!(
            left.tcp_flags
                .first()
                .is_some_and(|f| f.syn && f.ack && !f.fin)
        );
        for bad in [
            &["--verdict", "forwarded"][..],
            &["--identity", "nobody"],
            &["--tcp-flags", "syn,bogus"],
            &["--type", "nope"],
            &["--traffic-direction", "sideways"],
            &["--drop-reason-desc", "NOT_A_REASON"],
        ] {
            assert!(request(bad).is_err(), "{bad:?} accepted");
        }
        Ok(())
    }

    #[test]
    fn number_defaults_follow_upstream() -> anyhow::Result<()> {
        assert_eq!(request(&[])?.number, 20);
        assert_eq!(request(&["--follow"])?.number, 0);
        assert_eq!(request(&["--last", "5", "--follow"])?.number, 5);
        let first = request(&["--first", "3"])?;
        assert!(first.first);
        assert_eq!(first.number, 3);
        assert_eq!(request(&["--all"])?.number, u64::MAX);
        let since = request(&["--since", "5m"])?;
        assert_eq!(since.number, 0);
        assert_eq!(since.since.map(|t| t.seconds), Some(1_000_000 - 300));
        assert_eq!(request(&["--until", "1m", "--follow"])?.until, None);
        assert!(request(&["--first", "1", "--last", "1"]).is_err());
        assert!(request(&["--first", "1", "--follow"]).is_err());
        assert!(request(&["--since", "yesterday"]).is_err());
        Ok(())
    }
}
