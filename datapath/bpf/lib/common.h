/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared definitions of the datapath programs: return codes, upstream drop
 * reasons, notification types, observation points and small helpers.
 *
 * Numeric values mirror upstream Cilium (bpf/lib/common.h, trace.h,
 * conntrack.h) because Hubble, the metrics and `cilium-dbg` interpret them.
 */
#pragma once

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define __inline_fn static __always_inline

#define CTX_ACT_OK TC_ACT_OK
#define CTX_ACT_DROP TC_ACT_SHOT
#define CTX_ACT_REDIRECT TC_ACT_REDIRECT

/* Address families in map keys (upstream ENDPOINT_KEY_IPV4/IPV6, not AF_*). */
#define ENDPOINT_KEY_IPV4 1
#define ENDPOINT_KEY_IPV6 2

/* Address families in event records (AF_INET / AF_INET6). */
#define EVENT_AF_INET 2
#define EVENT_AF_INET6 10

/* Reserved identities used by the datapath (upstream pkg/identity). */
#define WORLD_ID 2

/*
 * Drop reasons. Upstream returns them negated (DROP_POLICY is -133); the
 * positive value is what metrics, drop notifications and Hubble carry.
 */
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_CT_UNKNOWN_PROTO 137
#define DROP_UNKNOWN_L3 139
#define DROP_WRITE_ERROR 141
#define DROP_CSUM_L3 153
#define DROP_CSUM_L4 154
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_UNKNOWN_TARGET 150
#define DROP_UNSUPPORTED_L2 166
#define DROP_POLICY_DENY 181
#define DROP_EP_NOT_READY 203

/* Metric reasons: 0 is "forwarded", anything else a drop reason. */
#define REASON_FORWARDED 0

/* Metric directions (upstream METRIC_INGRESS/EGRESS/SERVICE). */
#define METRIC_INGRESS 1
#define METRIC_EGRESS 2
#define METRIC_SERVICE 3

/* Notification types (upstream CILIUM_NOTIFY_*). */
#define CILIUM_NOTIFY_DROP 1
#define CILIUM_NOTIFY_TRACE 4
#define CILIUM_NOTIFY_POLICY_VERDICT 5

/* Trace observation points (upstream enum trace_point). */
#define TRACE_TO_LXC 0
#define TRACE_TO_STACK 3
#define TRACE_FROM_LXC 5

/* Trace aggregation levels (upstream TRACE_AGGREGATE_*; 2 "low" and 4
 * "maximum" behave as the level below them). */
#define TRACE_AGGREGATE_NONE 0
#define TRACE_AGGREGATE_RX 1
#define TRACE_AGGREGATE_ACTIVE_CT 3

/* Connection tracking results, also the trace reasons (upstream ct_status). */
#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2
#define CT_RELATED 3

/* Policy directions in verdict events (upstream POLICY_INGRESS/EGRESS). */
#define POLICY_INGRESS 1
#define POLICY_EGRESS 2

/* Policy match types in verdict events (upstream POLICY_MATCH_*). */
#define POLICY_MATCH_NONE 0
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4
#define POLICY_MATCH_L3_PROTO 5
#define POLICY_MATCH_PROTO_ONLY 6

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define NSEC_PER_SEC 1000000000ULL

/* Header of every LPM trie key (struct bpf_lpm_trie_key without the
 * flexible array, which cannot be embedded under -Werror). */
struct lpm_hdr {
	__u32 prefixlen;
};

/* An IPv4 address in the first word, room for IPv6 in the others. */
union v6addr {
	__u32 p[4];
	__u8 addr[16];
};
