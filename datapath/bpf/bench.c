// SPDX-License-Identifier: Apache-2.0
/*
 * Yardsticks for the BPF_PROG_TEST_RUN benchmark (benches/bpf_prog_run.rs):
 * the cost of running any tc program at all, and of one hash map lookup, so
 * the datapath programs can be reported as ratios (DESIGN.md 6), and the
 * conntrack floor of a new flow (bench_ct_*).
 *
 * bench_replay lets the repeat mode measure what changes state: a repeated
 * run reuses one skb, so a program that rewrites the packet (service DNAT)
 * sees its own output on the next repetition, and a new connection is new
 * only once. bench_replay first writes the frame's headers back from a
 * template (giving each repetition its own source port when asked) and then
 * tail-calls the measured program. The benchmark measures its overhead by
 * replaying into bench_empty and subtracts it.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char _license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1024);
} bench_hash SEC(".maps");

SEC("classifier/bench_empty")
int bench_empty(struct __sk_buff *ctx)
{
	return TC_ACT_OK;
}

/* Looks up key 1, which the benchmark inserts: a hit. The key lives on the
 * stack as in the datapath programs. */
SEC("classifier/bench_hash_lookup")
int bench_hash_lookup(struct __sk_buff *ctx)
{
	__u32 key = 1;
	__u64 *value = bpf_map_lookup_elem(&bench_hash, &key);

	return value ? TC_ACT_OK : TC_ACT_SHOT;
}

/*
 * The floor of a new connection: what any datapath pays to create a
 * conntrack entry in a table of upstream's default size, with nothing else
 * around it. bench_ct has cilium_ct4_global's type, flags, key and value
 * sizes; the benchmark sets max_entries to the same default (524288). A new
 * flow must at least miss in it (bench_ct_lookup) and insert into it
 * (bench_ct_create), touching memory no earlier packet brought into the
 * caches: a random bucket of 8 MiB, one element among 60 MiB of them and the
 * LRU lists threaded through those elements.
 */
struct bench_ct_key {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

struct bench_ct_value {
	__u64 word[7]; /* sizeof(struct ct_entry) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct bench_ct_key);
	__type(value, struct bench_ct_value);
	__uint(max_entries, 1024);
} bench_ct SEC(".maps");

/* Frame offsets of an untagged IPv4 packet without options. */
#define BENCH_IP_SADDR_OFF (14 + 12)
#define BENCH_L4_OFF (14 + 20)

/* The packet's tuple as a conntrack key; false if the frame is too short. */
static __always_inline bool bench_ct_key_of(struct __sk_buff *ctx, struct bench_ct_key *key)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be32 *addrs = data + BENCH_IP_SADDR_OFF;
	__be16 *ports = data + BENCH_L4_OFF;

	if ((void *)(ports + 2) > data_end)
		return false;
	key->daddr = addrs[0];
	key->saddr = addrs[1];
	key->sport = ports[0];
	key->dport = ports[1];
	key->nexthdr = IPPROTO_TCP;
	key->flags = 0;
	return true;
}

SEC("classifier/bench_ct_lookup")
int bench_ct_lookup(struct __sk_buff *ctx)
{
	struct bench_ct_key key;

	if (!bench_ct_key_of(ctx, &key))
		return TC_ACT_SHOT;
	/* A new flow misses; OK either way, the replayer wants 0. */
	bpf_map_lookup_elem(&bench_ct, &key);
	return TC_ACT_OK;
}

SEC("classifier/bench_ct_create")
int bench_ct_create(struct __sk_buff *ctx)
{
	struct bench_ct_value value = {};
	struct bench_ct_key key;

	if (!bench_ct_key_of(ctx, &key))
		return TC_ACT_SHOT;
	if (bpf_map_lookup_elem(&bench_ct, &key))
		return TC_ACT_OK;
	value.word[0] = ctx->len;
	return bpf_map_update_elem(&bench_ct, &key, &value, BPF_ANY) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Ethernet + IPv4 without options + TCP without options. */
#define BENCH_HDR_LEN 56
#define BENCH_SPORT_OFF (14 + 20)

struct bench_template {
	__u64 hdr[BENCH_HDR_LEN / 8]; /* written over the frame's first bytes */
	__u16 first_port;        /* source ports first_port .. first_port + flows - 1 */
	__u16 flows;             /* 0: keep the template's source port */
	__u32 next;              /* the next flow, advanced by every run */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct bench_template);
	__uint(max_entries, 1);
} bench_template SEC(".maps");

/* Slot 0: the program bench_replay hands the restored packet to. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);
} bench_target SEC(".maps");

SEC("classifier/bench_replay")
int bench_replay(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bench_template *t;
	__u32 zero = 0;

	t = bpf_map_lookup_elem(&bench_template, &zero);
	if (!t || data + BENCH_HDR_LEN > data_end)
		return TC_ACT_SHOT;
	/* Word copies: the packet's alignment is unknown to clang, which
	 * would otherwise copy byte by byte (x86 stores unaligned words). */
#pragma unroll
	for (int i = 0; i < BENCH_HDR_LEN / 8; i++)
		((__u64 *)data)[i] = t->hdr[i];
	if (t->flows) {
		__u32 next = t->next;

		*(__be16 *)(data + BENCH_SPORT_OFF) = bpf_htons(t->first_port + (__u16)next);
		t->next = next + 1 < t->flows ? next + 1 : 0;
	}
	bpf_tail_call(ctx, &bench_target, 0);
	return TC_ACT_SHOT;
}
