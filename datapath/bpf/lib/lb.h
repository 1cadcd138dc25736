/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ClusterIP load balancing for traffic leaving a pod, as upstream's
 * lb4_lookup_service() / lb4_local() / lb4_rev_nat() (bpf/lib/lb.h):
 * frontend lookup, backend selection (random or a hash of the 5-tuple),
 * stickiness through a TUPLE_F_SERVICE conntrack entry, DNAT, and the reverse
 * translation on replies.
 */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "nat.h"
#include "conntrack.h"

__inline_fn struct lb4_service *lb4_lookup_service(const struct pkt4 *pkt)
{
	/* The agent writes one frontend per protocol, so a single lookup with
	 * the packet's protocol suffices (no wildcard-protocol fallback). */
	struct lb4_key key = {
		.address = pkt->daddr,
		.dport = pkt->dport,
		.backend_slot = 0,
		.proto = pkt->proto,
		.scope = LB_LOOKUP_SCOPE_EXT,
	};

	return bpf_map_lookup_elem(&cilium_lb4_services_v2, &key);
}

/* Murmur3's finalizer over the 5-tuple: the same connection always lands on
 * the same slot while the backend set is unchanged. Deviation: upstream's
 * hash-based selection is Maglev with a lookup table (consistent hashing). */
__inline_fn __u32 lb4_hash_tuple(const struct pkt4 *pkt)
{
	__u32 h = pkt->saddr ^ (pkt->daddr * 0x9e3779b1U);

	h ^= ((__u32)pkt->sport << 16 | pkt->dport) * 0x85ebca6bU;
	h ^= pkt->proto;
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

__inline_fn __u16 lb4_select_slot(const struct lb4_service *svc, const struct pkt4 *pkt)
{
	__u32 alg = svc->backend_id >> 24;
	__u32 h;

	if (alg == LB_SELECTION_HASH)
		h = lb4_hash_tuple(pkt);
	else
		h = bpf_get_prandom_u32();
	return (h % svc->count) + 1;
}

/* The service conntrack key as upstream stores it: packet addresses, ports
 * in reverse order (client port in dport), TUPLE_F_SERVICE. */
__inline_fn void lb4_svc_ct_key(struct ipv4_ct_tuple *key, const struct pkt4 *pkt)
{
	key->daddr = pkt->daddr;
	key->saddr = pkt->saddr;
	key->dport = pkt->sport;
	key->sport = pkt->dport;
	key->nexthdr = pkt->proto;
	key->flags = TUPLE_F_SERVICE;
}

/*
 * `pkt` is addressed to the frontend `svc` (lb4_lookup_service()): picks a
 * backend and DNATs the packet to it; `pkt` then describes the translated
 * packet and *rev_nat the frontend to restore on replies. Returns 0 or a
 * drop reason.
 */
__inline_fn int lb4_local(struct __sk_buff *ctx, struct pkt4 *pkt, const struct lb4_service *svc,
			  __u32 src_sec_id, __u32 now, __be16 *rev_nat)
{
	struct lb4_service *slot;
	struct lb4_backend *backend = NULL;
	struct ipv4_ct_tuple ct_key;
	struct ct_entry *svc_ct;
	__u32 backend_id = 0;
	__be32 old_daddr;
	__be16 old_dport;
	int ret;

	*rev_nat = 0;
	/* A frontend without backends: upstream DROP_NO_SERVICE. */
	if (svc->count == 0)
		return DROP_NO_SERVICE;

	/* Stickiness: an existing service entry keeps its backend for as long
	 * as that backend exists. */
	lb4_svc_ct_key(&ct_key, pkt);
	svc_ct = ct_map4_lookup(pkt->proto, &ct_key);
	if (svc_ct && svc_ct->rev_nat_index == svc->rev_nat_index) {
		backend_id = (__u32)svc_ct->backend_id;
		backend = bpf_map_lookup_elem(&cilium_lb4_backends_v3, &backend_id);
		if (backend) {
			__u32 expiry = now + (pkt->proto == IPPROTO_TCP ? CT_SERVICE_LIFETIME_TCP
									: CT_SERVICE_LIFETIME_NONTCP);

			if (svc_ct->lifetime != expiry)
				svc_ct->lifetime = expiry;
		}
	}
	if (!backend) {
		struct lb4_key slot_key = {
			.address = pkt->daddr,
			.dport = pkt->dport,
			.backend_slot = lb4_select_slot(svc, pkt),
			.proto = pkt->proto,
			.scope = LB_LOOKUP_SCOPE_EXT,
		};
		struct ct_entry entry;

		slot = bpf_map_lookup_elem(&cilium_lb4_services_v2, &slot_key);
		if (!slot)
			return DROP_NO_SERVICE;
		backend_id = slot->backend_id;
		backend = bpf_map_lookup_elem(&cilium_lb4_backends_v3, &backend_id);
		if (!backend)
			return DROP_NO_SERVICE;

		__builtin_memset(&entry, 0, sizeof(entry));
		entry.backend_id = backend_id;
		entry.rev_nat_index = svc->rev_nat_index;
		entry.src_sec_id = src_sec_id;
		entry.lifetime = now + (pkt->proto == IPPROTO_TCP ? CT_SERVICE_LIFETIME_TCP
								  : CT_SERVICE_LIFETIME_NONTCP);
		entry.last_tx_report = now;
		if (ct_map4_update(pkt->proto, &ct_key, &entry) < 0)
			return DROP_CT_CREATE_FAILED;
	}

	old_daddr = pkt->daddr;
	old_dport = pkt->dport;
	ret = nat_rewrite_addr(ctx, pkt, IPV4_DADDR_OFF, old_daddr, backend->address);
	if (ret)
		return ret;
	pkt->daddr = backend->address;
	/* A backend port of 0 keeps the frontend port. */
	if (backend->port) {
		ret = nat_rewrite_port(ctx, pkt, 2, old_dport, backend->port);
		if (ret)
			return ret;
		pkt->dport = backend->port;
		pkt->policy_port = backend->port;
	}
	*rev_nat = svc->rev_nat_index;
	return 0;
}

/* Upstream lb4_rev_nat(): a reply from a backend gets the frontend's address
 * and port back as its source. Returns 0 or a drop reason. */
__inline_fn int lb4_rev_nat(struct __sk_buff *ctx, struct pkt4 *pkt, __be16 rev_nat_index)
{
	struct lb4_reverse_nat *nat;
	__be32 addr;
	__be16 port;
	int ret;

	nat = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &rev_nat_index);
	if (!nat)
		return 0;
	addr = nat->address;
	port = nat->port;
	ret = nat_rewrite_addr(ctx, pkt, IPV4_SADDR_OFF, pkt->saddr, addr);
	if (ret)
		return ret;
	pkt->saddr = addr;
	if (port) {
		ret = nat_rewrite_port(ctx, pkt, 0, pkt->sport, port);
		if (ret)
			return ret;
		pkt->sport = port;
	}
	return 0;
}
