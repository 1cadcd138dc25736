// SPDX-License-Identifier: Apache-2.0
/*
 * Yardsticks for the BPF_PROG_TEST_RUN benchmark (benches/bpf_prog_run.rs):
 * the cost of running any tc program at all, and of one hash map lookup, so
 * the datapath programs can be reported as ratios (DESIGN.md 6).
 *
 * bench_replay lets the repeat mode measure what changes state: a repeated
 * run reuses one skb, so a program that rewrites the packet (service DNAT)
 * sees its own output on the next repetition, and a new connection is new
 * only once. bench_replay first writes the frame's headers back from a
 * template (giving each repetition its own source port when asked) and then
 * tail-calls the measured program. The benchmark measures its overhead by
 * replaying into bench_empty and subtracts it.
 */
#include <linux/bpf.h>
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
