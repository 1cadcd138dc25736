/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map shared by the datapath programs, with the upstream names, key and
 * value layouts and sizes (DESIGN.md 4.8). The Rust side (datapath/src/maps)
 * asserts the same sizes at compile time; change both together.
 *
 * No map declares `pinning` here: the Rust loader decides whether a map is
 * pinned under <bpf-root>/tc/globals/ (agent) or private (tests, benches).
 */
#pragma once

#include "common.h"

/* Sizes as upstream's defaults (bpf/node_config.h, pkg/maps). */
#define ENDPOINTS_MAP_SIZE 65535
#define IPCACHE_MAP_SIZE 512000
#define POLICY_MAP_SIZE 16384
#define POLICY_OUTER_MAP_SIZE 65536
#define LB_MAP_SIZE 65536
#define CT_MAP_SIZE_TCP 524288
#define CT_MAP_SIZE_ANY 262144
#define METRICS_MAP_SIZE 65536
#define EVENTS_RINGBUF_SIZE (1 << 20)

/* ---- cilium_lxc: local endpoints by IP (upstream bpf/lib/eps.h). ---- */

struct endpoint_key {
	union v6addr ip; /* IPv4 in ip.p[0], network order */
	__u8 family;     /* ENDPOINT_KEY_IPV4 / ENDPOINT_KEY_IPV6 */
	__u8 key;        /* unused by local endpoints, 0 */
	__u16 cluster_id;
} __attribute__((packed));

#define ENDPOINT_F_HOST 1 /* the entry is the local host, not a pod */

struct endpoint_info {
	__u32 ifindex;   /* host-side veth: the device the programs run on */
	__u16 unused;    /* was sec_label upstream */
	__u16 lxc_id;    /* endpoint id, selects the policy map */
	__u32 flags;     /* ENDPOINT_F_* */
	__u32 rt_info;
	__u8 mac[8];     /* pod-side MAC (6 bytes + pad), upstream mac_t */
	__u8 node_mac[8];/* host-side veth MAC, answered for the gateway */
	__u32 sec_id;    /* the endpoint's security identity */
	__u32 parent_ifindex;
	__u32 pad[2];
};

/*
 * Upstream compiles one bpf_lxc object per endpoint with LXC_ID/LXC_IPV4 and
 * the identity as constants. We load one object for every endpoint, so the
 * programs look their endpoint up here: by source IP on the way out of the
 * pod, by destination IP on the way in, and check the entry's ifindex so a
 * pod cannot borrow another local pod's address (upstream's
 * is_valid_lxc_src_ip check against the compiled-in LXC_IPV4). Packets of
 * established connections skip the lookup: their conntrack entry records the
 * veth whose programs did it (ct_entry_on_device()).
 *
 * A map keyed by ifindex would make the lookup cheaper but needs a second
 * writer-maintained copy of this map; the conntrack shortcut needs none.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_lxc SEC(".maps");

/* ---- cilium_ipcache_v2: prefix -> identity (upstream bpf/lib/maps.h). ---- */

struct ipcache_key {
	struct lpm_hdr lpm; /* 32 + IP prefix length */
	__u16 cluster_id;
	__u8 pad1;
	__u8 family;        /* ENDPOINT_KEY_IPV4 / ENDPOINT_KEY_IPV6 */
	union v6addr ip;
} __attribute__((packed));

/* cluster_id, pad1 and family precede the address in the LPM key. */
#define IPCACHE_PREFIX_STATIC 32

#define IPCACHE_F_SKIP_TUNNEL (1 << 0)
#define IPCACHE_F_HAS_TUNNEL_EP (1 << 1)
#define IPCACHE_F_IPV6_TUNNEL_EP (1 << 2)
#define IPCACHE_F_REMOTE_CLUSTER (1 << 3)

struct remote_endpoint_info {
	__u32 sec_identity;
	union v6addr tunnel_endpoint;
	__u16 pad;
	__u8 key;   /* encryption key index */
	__u8 flags; /* IPCACHE_F_* */
};

/* Upstream's identity lookup for remote peers; a miss means "world". */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_ipcache_v2 SEC(".maps");

/* ---- cilium_policy_v2: per-endpoint policy (upstream bpf/lib/policy.h). ---- */

struct policy_key {
	struct lpm_hdr lpm;
	__u32 sec_label; /* remote identity, 0 = any identity */
	__u8 egress;     /* bit 0: 0 ingress, 1 egress; bits 1-7 zero */
	__u8 protocol;   /* 0 = any protocol (only with a wildcarded port) */
	__be16 dport;    /* 0 = any port; ranges by the prefix length */
};

/* sec_label (32) + direction (8) + protocol (8) + dport (16). */
#define POLICY_FULL_PREFIX 64
#define POLICY_STATIC_PREFIX 40
/* lpm_prefix_length counts only protocol and port bits (upstream). */
#define LPM_PROTO_PREFIX_BITS 8
#define LPM_FULL_PREFIX_BITS 24

#define POLICY_F_DENY 0x01
#define POLICY_PREFIX_SHIFT 3 /* flags: deny:1, reserved:2, lpm_prefix_length:5 */
#define POLICY_AUTH_TYPE_MASK 0x7f
#define POLICY_F_EXPLICIT_AUTH 0x80
#define MAX_PRECEDENCE 0xffffffffU

struct policy_entry {
	__be16 proxy_port; /* 0: no L7 redirect */
	__u8 flags;        /* POLICY_F_DENY | lpm_prefix_length << 3 */
	__u8 auth_type;    /* auth_type:7, has_explicit_auth_type:1 */
	__u32 precedence;  /* higher wins */
	__u32 cookie;      /* policy log cookie, reported in verdict events */
};

/* Sizes, not types: BTF of a map reached only through the outer map's
 * value array would carry the key and value structs as forward decls. */
struct policy_map {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/*
 * Deviation from upstream: upstream gives every endpoint its own compiled
 * program whose policy map `cilium_policy_v2_<epid>` is bound at load time
 * (and reached from other programs through the cilium_call_policy tail-call
 * array). Recompiling per pod is too slow for us, so one program serves all
 * endpoints and selects the endpoint's map here, indexed by endpoint id. The
 * inner maps keep the upstream name, layout and size and are pinned as
 * cilium_policy_v2_<epid:05> by the agent. An array (not a hash) of maps,
 * because endpoint ids are dense u16 values and the array lookup is inlined
 * by the verifier.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, POLICY_OUTER_MAP_SIZE);
	__type(key, __u32);
	__array(values, struct policy_map);
} cilium_policy_v2 SEC(".maps");

/* ---- Load balancing (upstream bpf/lib/lb.h). ---- */

#define LB_LOOKUP_SCOPE_EXT 0
#define LB_LOOKUP_SCOPE_INT 1

struct lb4_key {
	__be32 address;     /* service virtual IP */
	__be16 dport;       /* service port */
	__u16 backend_slot; /* 0: the master entry; 1..count: backends */
	__u8 proto;         /* IPPROTO_*, 0 = any protocol */
	__u8 scope;         /* LB_LOOKUP_SCOPE_* */
	__u8 pad[2];
};

/* Selection algorithm in the top byte of the master entry's first word,
 * as upstream's per-service selection (affinity_timeout >> 24). */
#define LB_SELECTION_DEFAULT 0
#define LB_SELECTION_RANDOM 1
#define LB_SELECTION_HASH 2

struct lb4_service {
	__u32 backend_id;  /* slot entry: backend id; master: selection << 24 */
	__u16 count;       /* master: number of backend slots */
	__be16 rev_nat_index;
	__u8 flags;
	__u8 flags2;
	__u16 qcount;      /* quarantined backends (after count) */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
	__u16 cluster_id;
	__u8 zone;
	__u8 pad;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
} __attribute__((packed));

/* ClusterIP frontends: master entry per (VIP, port, proto) plus one slot
 * entry per backend; the agent writes them, the datapath only reads. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_lb4_services_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_lb4_backends_v3 SEC(".maps");

/* rev_nat_index (network order) -> frontend, to undo DNAT on replies. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_lb4_reverse_nat SEC(".maps");

/* ---- Connection tracking (upstream bpf/lib/conntrack.h). ---- */

#define TUPLE_F_OUT 0
#define TUPLE_F_IN 1
#define TUPLE_F_RELATED 2
#define TUPLE_F_SERVICE 4

/*
 * Stored as upstream stores it: the address fields are named for the reply
 * direction and the ports for the original direction, so a connection
 * A:a -> B:b created on egress is {daddr A, saddr B, dport b, sport a, OUT}.
 */
struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

#define CT_F_RX_CLOSING (1 << 0)
#define CT_F_TX_CLOSING (1 << 1)
#define CT_F_LB_LOOPBACK (1 << 3)
#define CT_F_SEEN_NON_SYN (1 << 4)
#define CT_F_NODE_PORT (1 << 5)
#define CT_F_PROXY_REDIRECT (1 << 6)

struct ct_entry {
	__u64 reserved0;
	__u64 backend_id;    /* service entries: the chosen backend */
	__u64 packets;       /* accounting is off, as upstream's default */
	__u64 bytes;
	__u32 lifetime;      /* expiry, seconds of CLOCK_MONOTONIC */
	__u16 flags;         /* CT_F_* bits, upstream's bitfield order */
	__be16 rev_nat_index;/* non-zero: replies get reverse NAT */
	__u16 ifindex;       /* host-side veth whose programs created the entry, 0 if
			      * unknown (upstream: u16 NodePort device; see
			      * ct_entry_on_device()) */
	__u8 tx_flags_seen;  /* TCP flags seen in the original direction */
	__u8 rx_flags_seen;  /* TCP flags seen in the reply direction */
	__u32 src_sec_id;    /* identity of the connection's initiator */
	__u32 last_tx_report;/* seconds, for trace report intervals */
	__u32 last_rx_report;
};

/* Lifetimes in seconds, upstream defaults (bpf/node_config.h). */
#define CT_CONNECTION_LIFETIME_TCP 21600
#define CT_CONNECTION_LIFETIME_NONTCP 60
#define CT_SERVICE_LIFETIME_TCP 21600
#define CT_SERVICE_LIFETIME_NONTCP 60
#define CT_SYN_TIMEOUT 60
#define CT_CLOSE_TIMEOUT 10
#define CT_REPORT_INTERVAL 5

/*
 * TCP connections; LRU so a full table evicts instead of failing. One LRU
 * list for all CPUs, as upstream's default: BPF_F_NO_COMMON_LRU (upstream's
 * optional distributed LRU) was measured slower here for new connections in
 * a table of the default size (new flow 1040-1140 ns against 770-850 ns
 * replayed, 1140-1600 against 780-840 one packet per run): the per-CPU
 * lists rotate a few inactive entries on every insert, each a cache miss in
 * 60 MiB of entries, where the common list does that work once per batch of
 * 128 inserts. It would also cap each CPU's share of the table at
 * max_entries / possible CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE_TCP);
} cilium_ct4_global SEC(".maps");

/* UDP, ICMP, SCTP: upstream keeps non-TCP in the separate "any" table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE_ANY);
} cilium_ct_any4_global SEC(".maps");

/* ---- Metrics (upstream bpf/lib/metrics.h). ---- */

struct metrics_key {
	__u8 reason; /* 0 forwarded, otherwise the drop reason */
	__u8 dir;    /* METRIC_* in bits 0-1 */
	__u16 line;  /* source line of the drop site, 0 when forwarded */
	__u8 file;   /* source file id, 0: bpf_lxc.c */
	__u8 reserved[3];
};

struct metrics_value {
	__u64 count;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilium_metrics SEC(".maps");

/*
 * Forwarded packets, per CPU, indexed by METRIC_* direction. Our addition:
 * upstream counts forwarded packets in cilium_metrics under reason 0 like
 * drops, which costs every forwarded packet a per-CPU hash lookup (hashing
 * the key, walking the bucket). An array lookup is inlined by the verifier
 * and costs a few instructions. Drops stay in cilium_metrics with the line
 * of their drop site; the loader's metric_totals() reports these counters as
 * reason 0 next to them, the view upstream's cilium_metrics gives.
 */
#define METRICS_FWD_SIZE 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_FWD_SIZE);
} cilium_metrics_fwd SEC(".maps");

/* ---- Events (upstream bpf/lib/drop.h, trace.h, policy_log.h). ---- */

/*
 * Deviation from upstream: upstream writes notifications to a per-CPU perf
 * event array (cilium_events) and the agent re-parses the captured packet.
 * We use one BPF ring buffer of the same name (ordered across CPUs, one
 * consumer) and put the parsed 5-tuple in the record next to the capture.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SIZE);
} cilium_events SEC(".maps");

/* Per-CPU token bucket in front of cilium_events, upstream's
 * cilium_ratelimit for the events map, simplified to one bucket per CPU. */
struct events_ratelimit {
	__u64 last_topup_ns;
	__u64 tokens;
	__u64 suppressed; /* events dropped by the rate limit */
	__u64 lost;       /* events dropped because the ring buffer was full */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct events_ratelimit);
	__uint(max_entries, 1);
} cilium_events_ratelimit SEC(".maps");
