/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection tracking over cilium_ct4_global (TCP) and cilium_ct_any4_global
 * (everything else), as upstream's bpf/lib/conntrack.h: a reply of a tracked
 * connection is CT_REPLY and skips policy, later packets of an allowed
 * connection are CT_ESTABLISHED, anything else is CT_NEW.
 */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct ct_state {
	__be16 rev_nat_index; /* from the matched entry */
	__u8 monitor;         /* emit a trace for this packet */
	__u32 src_sec_id;
};

/*
 * Lookups and updates of the table of `proto`. Each call names its map as a
 * constant: through a map pointer chosen at run time the verifier can
 * neither inline a lookup nor call the map's own function, and every access
 * becomes an indirect call through bpf_map_lookup_elem(). The empty asm
 * keeps clang from merging the two calls into one on a selected pointer.
 */
__inline_fn struct ct_entry *ct_map4_lookup(__u8 proto, const struct ipv4_ct_tuple *key)
{
	struct ct_entry *entry;

	if (proto == IPPROTO_TCP) {
		entry = bpf_map_lookup_elem(&cilium_ct4_global, key);
		asm volatile("" : "+r"(entry));
	} else {
		entry = bpf_map_lookup_elem(&cilium_ct_any4_global, key);
	}
	return entry;
}

__inline_fn long ct_map4_update(__u8 proto, const struct ipv4_ct_tuple *key,
				const struct ct_entry *entry)
{
	long ret;

	if (proto == IPPROTO_TCP) {
		ret = bpf_map_update_elem(&cilium_ct4_global, key, entry, BPF_ANY);
		asm volatile("" : "+r"(ret));
	} else {
		ret = bpf_map_update_elem(&cilium_ct_any4_global, key, entry, BPF_ANY);
	}
	return ret;
}

/* Seconds of CLOCK_MONOTONIC (coarse); the agent's GC reads the same clock. */
__inline_fn __u32 ct_now(void)
{
	return bpf_ktime_get_coarse_ns() / NSEC_PER_SEC;
}

/* The key a connection whose first packet is `pkt` is stored under when it
 * is created in direction `dir` (TUPLE_F_OUT on egress, TUPLE_F_IN on ingress). */
__inline_fn void ct_key_forward(struct ipv4_ct_tuple *key, const struct pkt4 *pkt, __u8 dir)
{
	key->daddr = pkt->saddr;
	key->saddr = pkt->daddr;
	key->dport = pkt->dport;
	key->sport = pkt->sport;
	key->nexthdr = pkt->proto;
	key->flags = dir;
}

/* The key of the connection `pkt` would be a reply to: the original went the
 * other way and was created in the opposite direction. */
__inline_fn void ct_key_reverse(struct ipv4_ct_tuple *key, const struct pkt4 *pkt, __u8 dir)
{
	key->daddr = pkt->daddr;
	key->saddr = pkt->saddr;
	key->dport = pkt->sport;
	key->sport = pkt->dport;
	key->nexthdr = pkt->proto;
	key->flags = dir ^ TUPLE_F_IN;
}

__inline_fn __u32 ct_lifetime(const struct pkt4 *pkt, __u16 flags)
{
	if (pkt->proto != IPPROTO_TCP)
		return CT_CONNECTION_LIFETIME_NONTCP;
	if ((flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
	    (CT_F_RX_CLOSING | CT_F_TX_CLOSING))
		return CT_CLOSE_TIMEOUT;
	if (!(flags & CT_F_SEEN_NON_SYN))
		return CT_SYN_TIMEOUT;
	return CT_CONNECTION_LIFETIME_TCP;
}

/*
 * Per-packet update of a matched entry: TCP flags and closing state, the
 * expiry, and whether this packet should be traced (new TCP flags or one
 * report interval since the last trace in this direction, as upstream's
 * monitor aggregation). Writes only what changed to keep the cache line
 * shared between CPUs.
 */
__inline_fn void ct_refresh(struct ct_entry *entry, const struct pkt4 *pkt, __u32 now,
			    bool reply, struct ct_state *state)
{
	__u16 flags = entry->flags;
	__u8 tcp_flags = pkt->tcp_flags;
	__u32 *last_report;
	__u32 expiry;

	state->monitor = 0;
	if (pkt->proto == IPPROTO_TCP) {
		__u8 *seen = reply ? &entry->rx_flags_seen : &entry->tx_flags_seen;

		if ((*seen | tcp_flags) != *seen) {
			*seen |= tcp_flags;
			state->monitor = 1;
		}
		if (tcp_flags & TCP_FLAG_RST)
			flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
		else if (tcp_flags & TCP_FLAG_FIN)
			flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
		if (!(tcp_flags & TCP_FLAG_SYN))
			flags |= CT_F_SEEN_NON_SYN;
		if (flags != entry->flags)
			entry->flags = flags;
	}
	expiry = now + ct_lifetime(pkt, flags);
	if (entry->lifetime != expiry)
		entry->lifetime = expiry;

	last_report = reply ? &entry->last_rx_report : &entry->last_tx_report;
	if (now - *last_report >= CT_REPORT_INTERVAL) {
		*last_report = now;
		state->monitor = 1;
	}
	state->rev_nat_index = entry->rev_nat_index;
	state->src_sec_id = entry->src_sec_id;
}

/* A SYN on a closing connection starts a new one: upstream treats it as
 * CT_NEW so that policy is evaluated again and the entry recreated. */
__inline_fn bool ct_syn_reopens(const struct ct_entry *entry, const struct pkt4 *pkt)
{
	return pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & TCP_FLAG_SYN) &&
	       !(pkt->tcp_flags & TCP_FLAG_ACK) &&
	       (entry->flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING));
}

/* The reply half of a lookup: CT_REPLY if `pkt` answers a connection created
 * in the other direction, else CT_NEW. */
__inline_fn int ct_lookup4_reply(const struct pkt4 *pkt, __u8 dir, struct ct_entry **out)
{
	struct ipv4_ct_tuple key;

	ct_key_reverse(&key, pkt, dir);
	*out = ct_map4_lookup(pkt->proto, &key);
	return *out ? CT_REPLY : CT_NEW;
}

/* The forward half: CT_ESTABLISHED if `pkt` belongs to a connection created
 * in direction `dir` (and does not reopen it), else CT_NEW. */
__inline_fn int ct_lookup4_forward(const struct pkt4 *pkt, __u8 dir, struct ct_entry **out)
{
	struct ipv4_ct_tuple key;
	struct ct_entry *entry;

	ct_key_forward(&key, pkt, dir);
	entry = ct_map4_lookup(pkt->proto, &key);
	if (entry && ct_syn_reopens(entry, pkt))
		entry = NULL;
	*out = entry;
	return entry ? CT_ESTABLISHED : CT_NEW;
}

/*
 * Deviation from upstream, which looks the reply tuple up for every packet: a
 * TCP segment with SYN set and ACK clear opens a connection and is never a
 * reply, so when its forward lookup misses it is CT_NEW without the reverse
 * lookup. For a new connection in a table of upstream's default size that
 * lookup is a cache miss on a bucket no other packet touches (about a sixth
 * of a new flow's cost here), for nothing: the answer to a SYN is SYN-ACK.
 * A retransmitted SYN still finds its own entry (forward lookup), and
 * SYN-ACK, ACK, FIN and RST replies are looked up as before. What changes is
 * a SYN whose reversed tuple is tracked: TCP simultaneous open (both ends
 * send SYN) and a peer reusing the reversed tuple of a connection still in
 * the table. Upstream passes such a SYN as a reply without policy; here it is
 * a new connection in its own direction, subject to that direction's policy
 * and, if allowed, tracked under its own entry (so the tuple then has
 * entries both ways, which ct_reply_first() below allows for). Stricter,
 * never looser: a SYN that policy allows passes either way.
 */
__inline_fn bool ct_may_be_reply(const struct pkt4 *pkt)
{
	return pkt->proto != IPPROTO_TCP ||
	       (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN;
}

/*
 * Deviation from upstream, which always looks the reverse tuple up first
 * (SCOPE_BIDIR: REPLY takes precedence over ESTABLISHED), so that every
 * packet of a connection in its original direction pays a miss: we look
 * first in the direction the ports suggest (a packet from the lower port to
 * the higher one is likely a server's reply), so an established packet
 * usually costs one lookup. The answer can only differ when entries exist in
 * both directions of one 5-tuple. Creating one needs CT_NEW, which a packet
 * gets while the opposite entry exists only as a SYN (ct_may_be_reply()),
 * after policy allowed it in its own direction, or when two first packets
 * race on two CPUs; either answer then passes without policy.
 */
__inline_fn bool ct_reply_first(const struct pkt4 *pkt)
{
	return bpf_ntohs(pkt->sport) < bpf_ntohs(pkt->dport);
}

/*
 * Upstream ct_lookup4() without side effects: the status and the matched
 * entry (set exactly for CT_ESTABLISHED and CT_REPLY). The caller validates
 * the packet's endpoint before ct_refresh() writes anything, so a spoofed
 * packet cannot touch a connection's state.
 */
__inline_fn int ct_lookup4(const struct pkt4 *pkt, __u8 dir, struct ct_entry **out)
{
	bool may_be_reply = ct_may_be_reply(pkt);
	int ret;

	if (may_be_reply && ct_reply_first(pkt)) {
		ret = ct_lookup4_reply(pkt, dir, out);
		if (ret == CT_NEW)
			ret = ct_lookup4_forward(pkt, dir, out);
		return ret;
	}
	ret = ct_lookup4_forward(pkt, dir, out);
	if (ret == CT_NEW && may_be_reply)
		ret = ct_lookup4_reply(pkt, dir, out);
	return ret;
}

/* The ifindex an entry records (upstream's u16 ct_entry.ifindex); 0, which
 * no device has, for devices beyond its range. */
__inline_fn __u16 ct_ifindex(__u32 ifindex)
{
	return ifindex <= 0xffff ? (__u16)ifindex : 0;
}

/*
 * True if `entry` was created by the programs of the device `ctx` runs on,
 * after they validated the endpoint address this packet carries (its source
 * on egress, destination on ingress). The established fast path trusts that
 * instead of looking the endpoint up again; upstream gets the same for free
 * from the endpoint address compiled into each endpoint's program.
 */
__inline_fn bool ct_entry_on_device(const struct ct_entry *entry, const struct __sk_buff *ctx)
{
	return entry->ifindex != 0 && entry->ifindex == ctx->ifindex;
}

/* ICMP errors about a tracked TCP/UDP connection are CT_RELATED and pass
 * without policy, as upstream (which tracks them through RELATED twins of
 * each entry; we look the embedded header up instead). */
__inline_fn bool ct_icmp_related4(struct __sk_buff *ctx, const struct pkt4 *pkt, __u8 dir)
{
	struct ipv4_ct_tuple key;
	struct pkt4 inner;

	if (pkt->proto != IPPROTO_ICMP || !pkt->has_l4 || !icmp_is_error(pkt->icmp_type))
		return false;
	if (!parse_icmp_inner(ctx, pkt, &inner))
		return false;
	/* The embedded packet belongs to a connection created in the other
	 * direction than the one this error travels in. */
	ct_key_forward(&key, &inner, dir ^ TUPLE_F_IN);
	return ct_map4_lookup(inner.proto, &key) != NULL;
}

/* Upstream ct_create4(); returns 0 or a drop reason. `ifindex` is the device
 * whose programs validated the endpoint (see ct_entry_on_device()). */
__inline_fn int ct_create4(const struct pkt4 *pkt, __u8 dir, __u32 now, __be16 rev_nat_index,
			   __u32 src_sec_id, __u32 ifindex)
{
	struct ipv4_ct_tuple key;
	struct ct_entry entry;

	__builtin_memset(&entry, 0, sizeof(entry));
	ct_key_forward(&key, pkt, dir);
	if (pkt->proto == IPPROTO_TCP) {
		entry.tx_flags_seen = pkt->tcp_flags;
		if (!(pkt->tcp_flags & TCP_FLAG_SYN))
			entry.flags |= CT_F_SEEN_NON_SYN;
	}
	entry.lifetime = now + ct_lifetime(pkt, entry.flags);
	entry.rev_nat_index = rev_nat_index;
	entry.src_sec_id = src_sec_id;
	entry.ifindex = ct_ifindex(ifindex);
	entry.last_tx_report = now;
	if (ct_map4_update(pkt->proto, &key, &entry) < 0)
		return DROP_CT_CREATE_FAILED;
	return 0;
}
