//! Liveness and completeness markers: the per-prefix sync canaries a writer puts once its
//! initial synchronisation of a prefix is complete (`cilium/synced/<cluster>/<prefix>`), and
//! the operator's heartbeat (`cilium/.heartbeat`). Both hold an RFC 3339 timestamp, as
//! upstream's `time.Now().Format(time.RFC3339)` writes it.

use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::{HEARTBEAT_KEY, sync_canary_key};
use crate::backend::{Backend, LeaseId, Revision, WatchEvent, WatchFrom};
use crate::error::Error;

/// How often the heartbeat key is rewritten (upstream `HeartbeatWriteInterval`).
pub const HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// Clients treat this much silence of the heartbeat as a lost connection (twice the write
/// interval, as upstream's agents do).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(120);

/// `t` as RFC 3339 with second precision in UTC (`2024-05-01T12:00:00Z`).
pub fn encode_timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses an RFC 3339 timestamp as Go writes it: `Z` or a numeric `±hh:mm` offset, optional
/// fractional seconds.
pub fn decode_timestamp(data: &[u8]) -> Result<SystemTime, String> {
    let text = std::str::from_utf8(data).map_err(|_| "timestamp is not UTF-8".to_owned())?;
    let invalid = || format!("invalid RFC 3339 timestamp {text:?}");
    let bytes = text.as_bytes();
    let n = bytes.len();
    let has_offset = n >= 6
        && matches!(bytes[n - 6], b'+' | b'-')
        && bytes[n - 3] == b':'
        && text.is_char_boundary(n - 6);
    if !has_offset {
        return humantime::parse_rfc3339_weak(text).map_err(|_| invalid());
    }
    let (local, offset) = text.split_at(n - 6);
    let hours: u64 = offset[1..3].parse().map_err(|_| invalid())?;
    let minutes: u64 = offset[4..6].parse().map_err(|_| invalid())?;
    if hours > 23 || minutes > 59 {
        return Err(invalid());
    }
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(local).map_err(|_| invalid())?;
    // Local time minus a positive offset is UTC.
    let utc = if offset.starts_with('+') {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    utc.ok_or_else(invalid)
}

/// Writes the sync canary of `prefix` for `cluster`: the readers of that prefix may now treat
/// their listing as complete. Upstream attaches the canary to the writer's lease.
pub async fn write_sync_canary(
    backend: &dyn Backend,
    cluster: &str,
    prefix: &str,
    now: SystemTime,
    lease: Option<LeaseId>,
) -> Result<Revision, Error> {
    let key = sync_canary_key(cluster, prefix);
    backend
        .put(&key, encode_timestamp(now).into_bytes(), lease)
        .await
}

/// Waits until the sync canary of `prefix` for `cluster` exists. Readers only need its
/// presence; the timestamp inside is informative, so a value that does not parse still counts.
/// Wrap the call in a timeout to bound the wait.
pub async fn wait_for_sync_canary(
    backend: &dyn Backend,
    cluster: &str,
    prefix: &str,
) -> Result<(), Error> {
    let key = sync_canary_key(cluster, prefix);
    // A prefix watch also reports longer keys (`<prefix>2`), so match the key exactly.
    let mut events = backend.watch(&key, WatchFrom::List).await?;
    while let Some(event) = events.next().await {
        match event? {
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) if kv.key == key => return Ok(()),
            _ => {}
        }
    }
    Err(Error::Backend {
        op: "watch",
        message: format!("watch of sync canary {key:?} ended"),
    })
}

/// Writes the heartbeat key with the current time (the operator does this every
/// [`HEARTBEAT_WRITE_INTERVAL`], attached to its lease).
pub async fn write_heartbeat(
    backend: &dyn Backend,
    now: SystemTime,
    lease: Option<LeaseId>,
) -> Result<Revision, Error> {
    backend
        .put(HEARTBEAT_KEY, encode_timestamp(now).into_bytes(), lease)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_second_precision() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(encode_timestamp(t), "2024-05-01T12:00:00Z");
        assert_eq!(decode_timestamp(b"2024-05-01T12:00:00Z"), Ok(t));
    }

    #[test]
    fn go_offsets_are_applied() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(decode_timestamp(b"2024-05-01T14:00:00+02:00"), Ok(t));
        assert_eq!(decode_timestamp(b"2024-05-01T07:30:00-04:30"), Ok(t));
        assert_eq!(
            decode_timestamp(b"2024-05-01T12:00:00.5Z"),
            Ok(t + Duration::from_millis(500))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b""[..],
            b"yesterday",
            b"2024-05-01T12:00:00+2x:00",
            b"2024-13-01T12:00:00Z",
            b"\xff\xfe",
        ] {
            assert!(decode_timestamp(bad).is_err(), "{bad:?}");
        }
    }
}
