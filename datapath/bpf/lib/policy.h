/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Policy verdicts from an endpoint's cilium_policy_v2 map, as upstream's
 * __policy_check() (bpf/lib/policy.h): one lookup for the remote identity and
 * one for "any identity" (sec_label 0), both with the full prefix so the trie
 * wildcards protocol and port from the right; the better of the two wins.
 */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"

struct policy_result {
	__s32 verdict;     /* 0 allowed, otherwise -drop reason */
	__u8 match_type;   /* POLICY_MATCH_* */
	__u32 cookie;
	__be16 proxy_port;
};

__inline_fn __u8 policy_prefix_len(const struct policy_entry *entry)
{
	return entry->flags >> POLICY_PREFIX_SHIFT;
}

/*
 * True if `cand` beats `best`: higher precedence, then deny over allow (deny
 * beats allow at equal precedence, the rule upstream's precedence encoding
 * produces), then the longer protocol/port prefix. The caller passes the
 * identity-specific entry as `best` so it wins remaining ties.
 */
__inline_fn bool policy_better(const struct policy_entry *cand, const struct policy_entry *best)
{
	if (cand->precedence != best->precedence)
		return cand->precedence > best->precedence;
	if ((cand->flags & POLICY_F_DENY) != (best->flags & POLICY_F_DENY))
		return cand->flags & POLICY_F_DENY;
	return policy_prefix_len(cand) > policy_prefix_len(best);
}

__inline_fn __u8 policy_match_type(bool specific, __u8 prefix_len)
{
	if (specific) {
		if (prefix_len > LPM_PROTO_PREFIX_BITS)
			return POLICY_MATCH_L3_L4;
		if (prefix_len > 0)
			return POLICY_MATCH_L3_PROTO;
		return POLICY_MATCH_L3_ONLY;
	}
	if (prefix_len == 0)
		return POLICY_MATCH_ALL;
	if (prefix_len <= LPM_PROTO_PREFIX_BITS)
		return POLICY_MATCH_PROTO_ONLY;
	return POLICY_MATCH_L4_ONLY;
}

/*
 * Evaluates the policy of endpoint `ep_id` for a new connection with peer
 * `remote_id`. `untracked_frag` marks a non-first fragment, which has no
 * ports: it can only match port-wildcarded entries (upstream
 * DROP_FRAG_NOSUPPORT otherwise).
 */
__inline_fn void policy_check(__u16 ep_id, __u32 remote_id, __u8 egress, const struct pkt4 *pkt,
			      bool untracked_frag, struct policy_result *res)
{
	struct policy_entry *specific, *wildcard = NULL, *chosen;
	struct policy_key key;
	__u32 idx = ep_id;
	bool is_specific;
	void *map;
	__u8 prefix_len;

	res->verdict = 0;
	res->match_type = POLICY_MATCH_NONE;
	res->cookie = 0;
	res->proxy_port = 0;

	/* No policy map for the endpoint yet: upstream drops with
	 * DROP_EP_NOT_READY when the endpoint's policy program is missing. */
	map = bpf_map_lookup_elem(&cilium_policy_v2, &idx);
	if (!map) {
		res->verdict = -DROP_EP_NOT_READY;
		return;
	}

	/* Path MTU discovery must work whatever the policy says (upstream
	 * allow_icmp_frag_needed, on by default). */
	if (pkt->proto == IPPROTO_ICMP && pkt->icmp_type == ICMP_DEST_UNREACH &&
	    pkt->icmp_code == ICMP_FRAG_NEEDED)
		return;

	key.lpm.prefixlen = POLICY_FULL_PREFIX;
	key.sec_label = remote_id;
	key.egress = egress;
	key.protocol = pkt->proto;
	key.dport = pkt->policy_port;

	specific = bpf_map_lookup_elem(map, &key);
	if (!specific || specific->precedence != MAX_PRECEDENCE) {
		if (remote_id != 0) {
			key.sec_label = 0;
			wildcard = bpf_map_lookup_elem(map, &key);
		}
	}

	if (specific && (!wildcard || !policy_better(wildcard, specific))) {
		chosen = specific;
		is_specific = true;
	} else if (wildcard) {
		chosen = wildcard;
		is_specific = false;
	} else {
		/* No entry at all: default deny (upstream DROP_POLICY). */
		res->verdict = untracked_frag ? -DROP_FRAG_NOSUPPORT : -DROP_POLICY;
		return;
	}

	prefix_len = policy_prefix_len(chosen);
	res->match_type = policy_match_type(is_specific, prefix_len);
	res->cookie = chosen->cookie;
	if (chosen->flags & POLICY_F_DENY) {
		res->verdict = -DROP_POLICY_DENY;
		return;
	}
	if (untracked_frag && prefix_len > LPM_PROTO_PREFIX_BITS) {
		res->verdict = -DROP_FRAG_NOSUPPORT;
		return;
	}
	/* L7 proxy redirection and mutual auth arrive in later milestones:
	 * the proxy port is reported, the packet is forwarded as allowed. */
	res->proxy_port = chosen->proxy_port;
}
