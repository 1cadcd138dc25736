/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Metrics and monitor events: drop, trace and policy-verdict notifications.
 *
 * Mirrors upstream's update_metrics() (bpf/lib/metrics.h), send_drop_notify()
 * (drop.h), send_trace_notify() (trace.h) and send_policy_verdict_notify()
 * (policy_log.h), with one record layout for all three (struct event).
 */
#pragma once

#include "common.h"
#include "maps.h"

/* Bytes of the packet copied into each record (upstream TRACE_PAYLOAD_LEN). */
#define EVENT_CAPTURE_LEN 128
#define EVENT_VERSION 1

#define EVENT_F_IPV6 (1 << 0)
#define EVENT_F_REPLY (1 << 1)
#define EVENT_F_AUDITED (1 << 2)

struct event {
	/* Upstream's NOTIFY_CAPTURE_HDR. */
	__u8 type;      /* CILIUM_NOTIFY_* */
	__u8 subtype;   /* drop: reason; trace: observation point; verdict: 0 */
	__u16 source;   /* endpoint id whose program emitted the event */
	__u32 hash;     /* skb flow hash */
	__u32 len_orig; /* packet length */
	__u16 len_cap;  /* bytes of packet in data[] */
	__u16 version;  /* EVENT_VERSION */
	__u32 src_label;
	__u32 dst_label;
	__u16 dst_id;   /* destination endpoint id, 0 if not a local endpoint */
	__u8 obs_point; /* TRACE_* observation point */
	__u8 reason;    /* trace: CT_* state; drop: drop reason */
	__s32 verdict;  /* verdicts: 0 allow, -reason deny; drops: -reason */
	__u8 direction; /* POLICY_INGRESS / POLICY_EGRESS */
	__u8 match_type;/* POLICY_MATCH_* */
	__u8 flags;     /* EVENT_F_* */
	__u8 protocol;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u8 family;    /* EVENT_AF_INET */
	__u8 pad[3];
	__u64 ktime_ns; /* bpf_ktime_get_ns() */
	union v6addr saddr;
	union v6addr daddr;
	__u32 cookie;   /* verdicts: policy log cookie */
	__u16 line;     /* drops: source line of the drop site */
	__u8 file;
	__s8 ext_error;
	__u8 data[EVENT_CAPTURE_LEN];
};

/* Events per second and bucket size per CPU; patched by the loader. */
volatile const __u64 events_rate_per_sec = 1000;
volatile const __u64 events_burst = 1000;

/*
 * Upstream's monitor aggregation level (--monitor-aggregation, MONITOR_AGGREGATION):
 * at TRACE_AGGREGATE_ACTIVE_CT (medium, upstream's default and ours) a
 * forwarded packet is traced only when conntrack asks for it (a new
 * connection, new TCP flags, or one report interval since the last trace of
 * the direction), so established flows do not emit an event per packet.
 * Below that every forwarded packet is traced (our programs have no FROM_*
 * observation points, which is all TRACE_AGGREGATE_RX would hide). Patched by
 * the loader; read-only, so the verifier prunes the branch it cannot take.
 */
volatile const __u32 monitor_aggregation = TRACE_AGGREGATE_ACTIVE_CT;

/* Everything an event says about a packet besides its type. */
struct event_info {
	__u32 src_label;
	__u32 dst_label;
	__u16 source;
	__u16 dst_id;
	__u8 direction;
	__u8 flags;
	__u8 protocol;
	__be16 sport;
	__be16 dport;
	__be32 saddr;
	__be32 daddr;
};

__inline_fn void update_metrics(__u32 bytes, __u8 dir, __u8 reason, __u16 line)
{
	struct metrics_key key = {
		.reason = reason,
		.dir = dir & 0x3,
		.line = line,
	};
	struct metrics_value *value;

	value = bpf_map_lookup_elem(&cilium_metrics, &key);
	if (value) {
		/* Per-CPU values: no atomics needed. */
		value->count += 1;
		value->bytes += bytes;
	} else {
		struct metrics_value init = { .count = 1, .bytes = bytes };

		bpf_map_update_elem(&cilium_metrics, &key, &init, BPF_NOEXIST);
	}
}

/* Forwarded packets: the per-CPU array (see cilium_metrics_fwd), no hashing. */
__inline_fn void update_metrics_forwarded(__u32 bytes, __u8 dir)
{
	__u32 idx = dir & 0x3;
	struct metrics_value *value = bpf_map_lookup_elem(&cilium_metrics_fwd, &idx);

	if (value) {
		value->count += 1;
		value->bytes += bytes;
	}
}

/* Whether a forwarded packet is traced at the configured aggregation level;
 * `monitor` is conntrack's request for this packet. */
__inline_fn bool trace_wanted(bool monitor)
{
	return monitor || monitor_aggregation < TRACE_AGGREGATE_ACTIVE_CT;
}

/* Token bucket: true if one more event may be emitted now. A rate of zero
 * disables the limit, as upstream's events_map_rate_limit = 0. */
__inline_fn bool events_admit(struct events_ratelimit *rl, __u64 now)
{
	__u64 rate = events_rate_per_sec;
	__u64 burst = events_burst;
	__u64 elapsed;

	if (rate == 0)
		return true;
	elapsed = now - rl->last_topup_ns;
	if (elapsed >= NSEC_PER_SEC) {
		rl->tokens = burst;
		rl->last_topup_ns = now;
	} else if (elapsed * rate >= NSEC_PER_SEC) {
		/* At least one token earned: only then the division (a flood,
		 * where most events are suppressed, skips it). */
		rl->tokens += elapsed * rate / NSEC_PER_SEC;
		if (rl->tokens > burst)
			rl->tokens = burst;
		rl->last_topup_ns = now;
	}
	if (rl->tokens == 0) {
		rl->suppressed += 1;
		return false;
	}
	rl->tokens -= 1;
	return true;
}

/* Reserves a record if the rate limit admits one; counts what it drops. */
__inline_fn struct event *event_reserve(void)
{
	__u32 zero = 0;
	struct events_ratelimit *rl;
	struct event *ev;

	rl = bpf_map_lookup_elem(&cilium_events_ratelimit, &zero);
	if (!rl)
		return NULL;
	/* The coarse clock (one tick) is precise enough for a per-second
	 * budget and, unlike bpf_ktime_get_ns(), reads no clock source. */
	if (!events_admit(rl, bpf_ktime_get_coarse_ns()))
		return NULL;
	ev = bpf_ringbuf_reserve(&cilium_events, sizeof(*ev), 0);
	if (!ev)
		rl->lost += 1;
	return ev;
}

__inline_fn void event_fill_submit(struct __sk_buff *ctx, struct event *ev,
				   const struct event_info *info)
{
	__u32 len = ctx->len;
	__u32 cap = len < EVENT_CAPTURE_LEN ? len : EVENT_CAPTURE_LEN;

	ev->hash = bpf_get_hash_recalc(ctx);
	ev->len_orig = len;
	ev->version = EVENT_VERSION;
	ev->src_label = info->src_label;
	ev->dst_label = info->dst_label;
	ev->source = info->source;
	ev->dst_id = info->dst_id;
	ev->direction = info->direction;
	ev->flags = info->flags;
	ev->protocol = info->protocol;
	ev->sport = info->sport;
	ev->dport = info->dport;
	ev->ifindex = ctx->ifindex;
	ev->family = EVENT_AF_INET;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	ev->ktime_ns = bpf_ktime_get_ns();
	__builtin_memset(&ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(&ev->daddr, 0, sizeof(ev->daddr));
	ev->saddr.p[0] = info->saddr;
	ev->daddr.p[0] = info->daddr;
	ev->len_cap = 0;
	if (cap > 0 && cap <= EVENT_CAPTURE_LEN &&
	    bpf_skb_load_bytes(ctx, 0, ev->data, cap) == 0)
		ev->len_cap = cap;
	bpf_ringbuf_submit(ev, 0);
}

/* Upstream send_drop_notify(): metrics always, an event if admitted. */
__inline_fn int send_drop_notify(struct __sk_buff *ctx, const struct event_info *info,
				 __u8 reason, __u16 line, __u8 metric_dir)
{
	struct event *ev;

	update_metrics(ctx->len, metric_dir, reason, line);
	ev = event_reserve();
	if (ev) {
		ev->type = CILIUM_NOTIFY_DROP;
		ev->subtype = reason;
		ev->obs_point = 0;
		ev->reason = reason;
		ev->verdict = -(__s32)reason;
		ev->match_type = 0;
		ev->cookie = 0;
		ev->line = line;
		ev->file = 0;
		ev->ext_error = 0;
		event_fill_submit(ctx, ev, info);
	}
	return CTX_ACT_DROP;
}

#define DROP(ctx, info, reason, dir) send_drop_notify(ctx, info, reason, __LINE__, dir)

/* Upstream send_trace_notify() for a forwarded packet. */
__inline_fn void send_trace_notify(struct __sk_buff *ctx, const struct event_info *info,
				   __u8 obs_point, __u8 ct_reason)
{
	struct event *ev = event_reserve();

	if (!ev)
		return;
	ev->type = CILIUM_NOTIFY_TRACE;
	ev->subtype = obs_point;
	ev->obs_point = obs_point;
	ev->reason = ct_reason;
	ev->verdict = 0;
	ev->match_type = 0;
	ev->cookie = 0;
	ev->line = 0;
	ev->file = 0;
	ev->ext_error = 0;
	event_fill_submit(ctx, ev, info);
}

/* Upstream send_policy_verdict_notify(): one per new connection. */
__inline_fn void send_policy_verdict_notify(struct __sk_buff *ctx,
					    const struct event_info *info,
					    __s32 verdict, __u8 match_type, __u32 cookie)
{
	struct event *ev = event_reserve();

	if (!ev)
		return;
	ev->type = CILIUM_NOTIFY_POLICY_VERDICT;
	ev->subtype = 0;
	ev->obs_point = 0;
	ev->reason = verdict < 0 ? (__u8)(-verdict) : 0;
	ev->verdict = verdict;
	ev->match_type = match_type;
	ev->cookie = cookie;
	ev->line = 0;
	ev->file = 0;
	ev->ext_error = 0;
	event_fill_submit(ctx, ev, info);
}
