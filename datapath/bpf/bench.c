// SPDX-License-Identifier: Apache-2.0
/*
 * Yardsticks for the BPF_PROG_TEST_RUN benchmark (benches/bpf_prog_run.rs):
 * the cost of running any tc program at all, and of one hash map lookup, so
 * the datapath programs can be reported as ratios (DESIGN.md 6).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

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
