//! The bounded sort buffer that puts the responses of several nodes back in time order.
//!
//! Each node streams its own flows in time order, but the streams interleave arbitrarily on the
//! way to the relay. Like upstream's priority queue, the buffer holds at most `capacity`
//! responses: when it is full the oldest one leaves, and responses that have waited longer than
//! the drain window leave even when it is not, so a quiet cluster still delivers promptly.
//! Ordering is therefore exact within the window and best-effort beyond it, which is the
//! trade-off upstream makes to keep memory per client bounded.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::observer::GetFlowsResponse;
use proto::observer::get_flows_response::ResponseTypes;

/// A point in time as (seconds, nanoseconds) since the Unix epoch; orders like the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SortKey {
    seconds: i64,
    nanos: i32,
}

impl SortKey {
    /// Sorts before every real timestamp: responses without a time leave first.
    const MISSING: SortKey = SortKey {
        seconds: i64::MIN,
        nanos: 0,
    };

    /// The response's own time, falling back to the time of the flow it carries.
    pub(crate) fn of(response: &GetFlowsResponse) -> SortKey {
        let flow_time = match &response.response_types {
            Some(ResponseTypes::Flow(flow)) => flow.time.as_ref(),
            _ => None,
        };
        response
            .time
            .as_ref()
            .or(flow_time)
            .map_or(SortKey::MISSING, |time| SortKey {
                seconds: time.seconds,
                nanos: time.nanos,
            })
    }

    pub(crate) fn from_system_time(time: SystemTime) -> SortKey {
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) => SortKey {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
            },
            Err(_) => SortKey::MISSING,
        }
    }
}

/// One buffered response; `seq` keeps responses with equal times in arrival order.
#[derive(Debug)]
struct Entry {
    key: SortKey,
    seq: u64,
    response: GetFlowsResponse,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

/// A min-heap of responses by time with a fixed capacity.
#[derive(Debug)]
pub(crate) struct SortBuffer {
    heap: BinaryHeap<Reverse<Entry>>,
    capacity: usize,
    next_seq: u64,
}

impl SortBuffer {
    /// A buffer holding at most `capacity` responses (at least one).
    pub(crate) fn new(capacity: usize) -> SortBuffer {
        let capacity = capacity.max(1);
        SortBuffer {
            heap: BinaryHeap::with_capacity(capacity),
            capacity,
            next_seq: 0,
        }
    }

    /// Adds a response; when the buffer was full, returns the oldest response, which must be
    /// sent before anything newer.
    pub(crate) fn push(&mut self, response: GetFlowsResponse) -> Option<GetFlowsResponse> {
        let evicted = if self.heap.len() >= self.capacity {
            self.pop()
        } else {
            None
        };
        let entry = Entry {
            key: SortKey::of(&response),
            seq: self.next_seq,
            response,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Reverse(entry));
        evicted
    }

    /// Removes and returns the oldest response.
    pub(crate) fn pop(&mut self) -> Option<GetFlowsResponse> {
        self.heap.pop().map(|Reverse(entry)| entry.response)
    }

    /// Removes the responses older than `now - window`, oldest first.
    pub(crate) fn pop_older_than(
        &mut self,
        now: SystemTime,
        window: Duration,
    ) -> Vec<GetFlowsResponse> {
        let cutoff = SortKey::from_system_time(now.checked_sub(window).unwrap_or(UNIX_EPOCH));
        let mut out = Vec::new();
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(entry)| entry.key < cutoff)
        {
            if let Some(response) = self.pop() {
                out.push(response);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::flow::Flow;

    fn at(seconds: i64, node: &str) -> GetFlowsResponse {
        let time = prost_types::Timestamp { seconds, nanos: 0 };
        GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(Flow {
                time: Some(time),
                node_name: node.to_owned(),
                ..Flow::default()
            })),
            node_name: node.to_owned(),
            time: Some(time),
        }
    }

    fn seconds(response: &GetFlowsResponse) -> i64 {
        response.time.as_ref().map_or(-1, |time| time.seconds)
    }

    #[test]
    fn full_buffer_evicts_the_oldest() {
        let mut buffer = SortBuffer::new(3);
        assert!(buffer.push(at(30, "a")).is_none());
        assert!(buffer.push(at(10, "b")).is_none());
        assert!(buffer.push(at(20, "a")).is_none());
        let evicted = buffer.push(at(40, "b")).map(|r| seconds(&r));
        assert_eq!(evicted, Some(10));
        let rest: Vec<i64> = std::iter::from_fn(|| buffer.pop())
            .map(|r| seconds(&r))
            .collect();
        assert_eq!(rest, vec![20, 30, 40]);
    }

    #[test]
    fn equal_times_keep_arrival_order() {
        let mut buffer = SortBuffer::new(10);
        buffer.push(at(5, "first"));
        buffer.push(at(5, "second"));
        buffer.push(at(5, "third"));
        let order: Vec<String> = std::iter::from_fn(|| buffer.pop())
            .map(|r| r.node_name)
            .collect();
        assert_eq!(order, vec!["first", "second", "third"]);
    }

    #[test]
    fn drain_releases_only_entries_older_than_the_window() {
        let mut buffer = SortBuffer::new(10);
        buffer.push(at(100, "a"));
        buffer.push(at(195, "a"));
        buffer.push(at(50, "b"));
        let now = UNIX_EPOCH + Duration::from_secs(200);
        let drained: Vec<i64> = buffer
            .pop_older_than(now, Duration::from_secs(10))
            .iter()
            .map(seconds)
            .collect();
        assert_eq!(drained, vec![50, 100]);
        assert_eq!(buffer.pop().map(|r| seconds(&r)), Some(195));
    }

    #[test]
    fn missing_time_sorts_first_and_flow_time_is_a_fallback() {
        let mut buffer = SortBuffer::new(10);
        let mut flow_only = at(7, "flow-time");
        flow_only.time = None;
        buffer.push(at(9, "response-time"));
        buffer.push(flow_only);
        buffer.push(GetFlowsResponse::default());
        let order: Vec<String> = std::iter::from_fn(|| buffer.pop())
            .map(|r| r.node_name)
            .collect();
        assert_eq!(order, vec!["", "flow-time", "response-time"]);
    }
}
