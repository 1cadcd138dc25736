//! The kernel side of the monitor: decoding `cilium_events` records into [`MonitorEvent`]s and
//! reading the ring buffer (synchronously, or awaited with tokio).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use aya::maps::{IterableMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::*;
use crate::api::{EndpointId, MacAddr, Protocol};
use crate::loader::BpfObjects;
use crate::maps::events::{
    EVENT_F_IPV6, EVENT_F_REPLY, EventDecodeError, EventRecord, EventsRateLimit, NOTIFY_DROP,
    NOTIFY_POLICY_VERDICT, NOTIFY_TRACE, POLICY_INGRESS,
};
use crate::maps::names;

/// Errors of opening the event maps or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("opening map {name} for the event reader failed")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("duplicating the fd of map {name} failed")]
    DupFd {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("registering the ring buffer with the tokio reactor failed")]
    Register {
        #[source]
        source: io::Error,
    },
    #[error("reading the events rate limiter failed")]
    Counters {
        #[source]
        source: MapError,
    },
    #[error("undecodable event record")]
    Record(#[from] EventDecodeError),
    #[error("event record of unknown type {kind}")]
    UnknownType { kind: u8 },
}

impl MonitorEvent {
    /// Decodes one ring-buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MonitorError> {
        Self::from_record(&EventRecord::from_bytes(bytes)?)
    }

    pub fn from_record(record: &EventRecord) -> Result<Self, MonitorError> {
        let kind = match record.r#type {
            NOTIFY_DROP => MonitorEventKind::Drop {
                reason: record.subtype,
                reason_name: drop_reason_name(record.subtype).map(str::to_owned),
                ext_error: record.ext_error,
                file: record.file,
                line: record.line,
            },
            NOTIFY_TRACE => MonitorEventKind::Trace {
                observation_point: ObservationPoint::from_code(record.obs_point),
                state: TraceState::from_code(record.reason),
            },
            NOTIFY_POLICY_VERDICT => MonitorEventKind::PolicyVerdict {
                verdict: record.verdict,
                direction: if record.direction == POLICY_INGRESS {
                    TrafficDirection::Ingress
                } else {
                    TrafficDirection::Egress
                },
                match_type: PolicyMatchType::from_code(record.match_type),
                cookie: record.cookie,
            },
            kind => return Err(MonitorError::UnknownType { kind }),
        };
        let ipv6 = record.flags & EVENT_F_IPV6 != 0;
        let (source_ip, destination_ip) = if ipv6 {
            (
                IpAddr::V6(Ipv6Addr::from(record.saddr)),
                IpAddr::V6(Ipv6Addr::from(record.daddr)),
            )
        } else {
            (
                IpAddr::V4(record.source_ipv4()),
                IpAddr::V4(record.destination_ipv4()),
            )
        };
        let protocol = Protocol::new(record.protocol);
        let l4 = captured_l4(record.captured(), ipv6, record.protocol);
        Ok(MonitorEvent {
            kind,
            source_endpoint: EndpointId::new(record.source),
            destination_endpoint: EndpointId::new(record.dst_id),
            source_identity: record.source_identity(),
            destination_identity: record.destination_identity(),
            source_ip,
            destination_ip,
            source_port: record.source_port(),
            destination_port: record.destination_port(),
            protocol,
            tcp_flags: match l4 {
                Some(CapturedL4::Tcp(flags)) => Some(flags),
                _ => None,
            },
            icmp: match l4 {
                Some(CapturedL4::Icmp(tc)) => Some(tc),
                _ => None,
            },
            is_reply: record.flags & EVENT_F_REPLY != 0,
            ethernet: captured_ethernet(record.captured()),
            packet_len: record.len_orig,
            captured_len: record.len_cap,
            ifindex: record.ifindex,
            hash: record.hash,
            cpu: None,
            timestamp_ns: record.ktime_ns,
        })
    }
}

enum CapturedL4 {
    Tcp(TcpFlags),
    Icmp(IcmpTypeCode),
}

/// TCP flags or ICMP type/code from a captured Ethernet frame; `None` when the capture stops
/// short of them (or the packet is a non-first fragment).
/// The source and destination MAC of a captured frame (its first 12 bytes are destination,
/// then source).
fn captured_ethernet(data: &[u8]) -> Option<(MacAddr, MacAddr)> {
    let destination: [u8; 6] = data.get(..6)?.try_into().ok()?;
    let source: [u8; 6] = data.get(6..12)?.try_into().ok()?;
    Some((MacAddr(source), MacAddr(destination)))
}

fn captured_l4(data: &[u8], ipv6: bool, protocol: u8) -> Option<CapturedL4> {
    const ETH_HLEN: usize = 14;
    let ip = data.get(ETH_HLEN..)?;
    let l4 = if ipv6 {
        // Extension headers are not walked: the programs handle IPv4 only for now.
        ip.get(40..)?
    } else {
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
        if ihl < 20 || frag != 0 {
            return None;
        }
        ip.get(ihl..)?
    };
    match protocol {
        6 => Some(CapturedL4::Tcp(TcpFlags(*l4.get(13)?))),
        1 | 58 => Some(CapturedL4::Icmp(IcmpTypeCode {
            icmp_type: *l4.first()?,
            code: *l4.get(1)?,
        })),
        _ => None,
    }
}
/// Reads `cilium_events` synchronously.
pub struct EventReader {
    ring: RingBuf<MapData>,
    ratelimit: PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
}

impl fmt::Debug for EventReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventReader")
            .field("read", &self.read)
            .field("undecodable", &self.undecodable)
            .finish_non_exhaustive()
    }
}

fn dup_map(fd: std::os::fd::BorrowedFd<'_>, name: &'static str) -> Result<Map, MonitorError> {
    let owned = fd
        .try_clone_to_owned()
        .map_err(|source| MonitorError::DupFd { name, source })?;
    let data = MapData::from_fd(owned).map_err(|source| MonitorError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| MonitorError::OpenMap { name, source })
}

fn pinned_map(dir: &Path, name: &'static str) -> Result<Map, MonitorError> {
    let data = MapData::from_pin(dir.join(name))
        .map_err(|source| MonitorError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| MonitorError::OpenMap { name, source })
}

impl EventReader {
    /// A reader on the event maps of loaded objects (its own fds: the objects may move on).
    pub fn new(objects: &BpfObjects) -> Result<Self, MonitorError> {
        let maps = &objects.maps;
        let ring = dup_map(maps.events.as_fd(), names::EVENTS)?;
        let ratelimit = dup_map(
            maps.events_ratelimit.map().fd().as_fd(),
            names::EVENTS_RATELIMIT,
        )?;
        Self::from_maps(ring, ratelimit)
    }

    /// A reader on the maps pinned under `pin_dir` (`<bpf-root>/tc/globals`), for a process that
    /// does not load the programs itself.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MonitorError> {
        Self::from_maps(
            pinned_map(pin_dir, names::EVENTS)?,
            pinned_map(pin_dir, names::EVENTS_RATELIMIT)?,
        )
    }

    fn from_maps(ring: Map, ratelimit: Map) -> Result<Self, MonitorError> {
        Ok(EventReader {
            ring: RingBuf::try_from(ring).map_err(|source| MonitorError::OpenMap {
                name: names::EVENTS,
                source,
            })?,
            ratelimit: PerCpuArray::try_from(ratelimit).map_err(|source| {
                MonitorError::OpenMap {
                    name: names::EVENTS_RATELIMIT,
                    source,
                }
            })?,
            read: 0,
            undecodable: 0,
        })
    }

    /// Every event available now, in ring order; undecodable records are counted and skipped.
    pub fn drain(&mut self) -> Vec<MonitorEvent> {
        drain_ring(&mut self.ring, &mut self.read, &mut self.undecodable)
    }

    /// The reader's and the datapath's counters.
    pub fn counters(&self) -> Result<EventCounters, MonitorError> {
        counters(&self.ratelimit, self.read, self.undecodable)
    }

    /// An async reader over the same maps; needs a tokio runtime with IO enabled.
    pub fn into_async(self) -> Result<AsyncEventReader, MonitorError> {
        let EventReader {
            ring,
            ratelimit,
            read,
            undecodable,
        } = self;
        // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, for its whole life; the
        // ring buffer never swaps its fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(
            |err| MonitorError::Register {
                source: err.into_parts().1,
            },
        )?;
        Ok(AsyncEventReader {
            ring,
            ratelimit,
            read,
            undecodable,
        })
    }
}

fn drain_ring(
    ring: &mut RingBuf<MapData>,
    read: &mut u64,
    undecodable: &mut u64,
) -> Vec<MonitorEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        match MonitorEvent::from_bytes(&item) {
            Ok(event) => {
                *read += 1;
                events.push(event);
            }
            Err(err) => {
                *undecodable += 1;
                tracing::debug!(error = %err, "skipping an undecodable event record");
            }
        }
    }
    events
}

fn counters(
    ratelimit: &PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
) -> Result<EventCounters, MonitorError> {
    let values = ratelimit
        .get(&0, 0)
        .map_err(|source| MonitorError::Counters { source })?;
    let mut out = EventCounters {
        read,
        undecodable,
        ..EventCounters::default()
    };
    for value in values.iter() {
        out.suppressed += value.suppressed;
        out.lost += value.lost;
    }
    Ok(out)
}

/// Reads `cilium_events` as the ring buffer fills, without a polling loop.
pub struct AsyncEventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    ratelimit: PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
}

impl fmt::Debug for AsyncEventReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncEventReader")
            .field("read", &self.read)
            .field("undecodable", &self.undecodable)
            .finish_non_exhaustive()
    }
}

impl AsyncEventReader {
    /// Waits until records are available and returns them (never an empty batch).
    pub async fn next_batch(&mut self) -> io::Result<Vec<MonitorEvent>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let events = drain_ring(guard.get_inner_mut(), &mut self.read, &mut self.undecodable);
            // Everything is consumed, so the next readiness is a new record.
            guard.clear_ready();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// The reader's and the datapath's counters.
    pub fn counters(&self) -> Result<EventCounters, MonitorError> {
        counters(&self.ratelimit, self.read, self.undecodable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::events::EVENT_CAPTURE_LEN;

    /// A record as the programs write it, for a TCP SYN 10.0.0.1:41234 -> 10.0.0.2:80.
    fn record(kind: u8) -> EventRecord {
        let mut data = [0u8; EVENT_CAPTURE_LEN];
        data[12] = 0x08; // IPv4 ethertype
        data[14] = 0x45; // version 4, IHL 5
        data[14 + 9] = 6;
        data[14 + 20 + 13] = TcpFlags::SYN;
        EventRecord {
            r#type: kind,
            subtype: 0,
            source: 123,
            hash: 0,
            len_orig: 74,
            len_cap: 74,
            version: 1,
            src_label: 1234,
            dst_label: 5678,
            dst_id: 123,
            obs_point: 0,
            reason: 0,
            verdict: 0,
            direction: POLICY_INGRESS,
            match_type: 0,
            flags: 0,
            protocol: 6,
            sport: 41234u16.to_be(),
            dport: 80u16.to_be(),
            ifindex: 5,
            family: 2,
            pad: [0; 3],
            ktime_ns: 99,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            cookie: 0,
            line: 0,
            file: 0,
            ext_error: 0,
            data,
        }
    }

    fn bytes(record: &EventRecord) -> Vec<u8> {
        // SAFETY: EventRecord is Pod without padding; reading its bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(record).cast::<u8>(),
                size_of::<EventRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn drop_record_formats_like_cilium_dbg_monitor() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 133;
        rec.verdict = -133;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(event.event_type(), MonitorEventType::Drop);
        assert_eq!(
            format_monitor_line(&event),
            "xx drop (Policy denied) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:0, \
             identity 1234->5678: 10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN"
        );
        let MonitorEventKind::Drop { reason_name, .. } = &event.kind else {
            panic!("not a drop: {event:?}");
        };
        assert_eq!(reason_name.as_deref(), Some("Policy denied"));
    }

    #[test]
    fn deny_rule_and_unnamed_reasons_render_as_upstream() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 181;
        rec.line = 210;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with(
            "xx drop (Policy denied by denylist) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:210,"
        ));
        rec.subtype = 250;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with("xx drop (250, 0) flow"));
    }

    #[test]
    fn trace_record_formats_with_observation_point_and_state() {
        let mut rec = record(NOTIFY_TRACE);
        rec.obs_point = 0;
        rec.subtype = 0;
        rec.reason = 2;
        rec.hash = 0xabc;
        rec.flags = EVENT_F_REPLY;
        rec.data[14 + 20 + 13] = TcpFlags::SYN | TcpFlags::ACK;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(event.is_reply);
        assert_eq!(
            format_monitor_line(&event),
            "-> endpoint 123 flow 0xabc identity 1234->5678 state reply ifindex 5 orig-ip 0.0.0.0: \
             10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN, ACK"
        );
        rec.obs_point = 3;
        rec.reason = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with("-> stack flow 0xabc"));
    }

    #[test]
    fn policy_verdict_record_formats_with_action_and_match() {
        let mut rec = record(NOTIFY_POLICY_VERDICT);
        rec.verdict = 0;
        rec.match_type = 2;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            format_monitor_line(&event),
            "Policy verdict log: flow 0x0 local EP ID 123, remote ID 1234, proto 6, ingress, \
             action allow, auth: disabled, match L3-L4, 10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN"
        );
        rec.verdict = -133;
        rec.direction = 2;
        rec.match_type = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        let line = format_monitor_line(&event);
        assert!(
            line.contains("remote ID 5678, proto 6, egress, action deny"),
            "{line}"
        );
        assert!(line.contains("match none"), "{line}");
    }

    #[test]
    fn icmp_summary_names_the_type() {
        let mut rec = record(NOTIFY_TRACE);
        rec.protocol = 1;
        rec.data[14 + 9] = 1;
        rec.data[14 + 20] = 8;
        rec.data[14 + 21] = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            event.icmp,
            Some(IcmpTypeCode {
                icmp_type: 8,
                code: 0
            })
        );
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1 -> 10.0.0.2 EchoRequest"
        );
        rec.data[14 + 20] = 3;
        rec.data[14 + 21] = 3;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1 -> 10.0.0.2 DestinationUnreachable(Port)"
        );
    }

    #[test]
    fn the_captured_frame_gives_the_ethernet_addresses() {
        let mut rec = record(NOTIFY_TRACE);
        rec.data[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x22]);
        rec.data[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x11]);
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            event.ethernet,
            Some((
                MacAddr([0x02, 0, 0, 0, 0, 0x11]),
                MacAddr([0x02, 0, 0, 0, 0, 0x22])
            ))
        );
        // Fewer than 12 captured bytes hold no full header.
        rec.len_cap = 11;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(event.ethernet, None);
    }

    #[test]
    fn truncated_captures_fall_back_to_the_record_tuple() {
        let mut rec = record(NOTIFY_TRACE);
        rec.len_cap = 20;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(event.tcp_flags, None);
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1:41234 -> 10.0.0.2:80 tcp "
        );
        // A capture length beyond the buffer is clamped, not trusted.
        rec.len_cap = u16::MAX;
        assert!(MonitorEvent::from_bytes(&bytes(&rec)).is_ok());
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let rec = record(NOTIFY_DROP);
        let raw = bytes(&rec);
        assert!(matches!(
            MonitorEvent::from_bytes(&raw[..10]),
            Err(MonitorError::Record(_))
        ));
        assert!(matches!(
            MonitorEvent::from_bytes(&bytes(&record(77))),
            Err(MonitorError::UnknownType { kind: 77 })
        ));
        // Any bytes of the right length decode or fail cleanly.
        for fill in [0u8, 0xff, 0x5a] {
            let junk = vec![fill; raw.len()];
            let _ = MonitorEvent::from_bytes(&junk);
        }
    }

    #[test]
    fn filter_by_type() {
        let drop = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_DROP))).unwrap();
        let trace = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_TRACE))).unwrap();
        let verdict = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_POLICY_VERDICT))).unwrap();
        let only_drops = MonitorFilter::new(["drop".parse().unwrap()]);
        assert!(only_drops.matches(&drop));
        assert!(!only_drops.matches(&trace));
        let two = MonitorFilter::new([MonitorEventType::Trace, MonitorEventType::PolicyVerdict]);
        assert!(!two.matches(&drop) && two.matches(&trace) && two.matches(&verdict));
        assert!(MonitorFilter::default().matches(&drop));
        assert!("l7".parse::<MonitorEventType>().is_err());
        assert_eq!(
            MonitorEventType::PolicyVerdict.to_string(),
            "policy-verdict"
        );
    }

    #[test]
    fn events_serialize_with_their_type() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 133;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "drop");
        assert_eq!(json["reason"], 133);
        assert_eq!(json["reason_name"], "Policy denied");
        assert_eq!(json["source_ip"], "10.0.0.1");
        assert_eq!(json["source_identity"], 1234);
        let back: MonitorEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
