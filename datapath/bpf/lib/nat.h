/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Address and port rewrites with incremental L3/L4 checksum updates, as
 * upstream's lb4_rewrite_*() / csum helpers. ICMP has no pseudo header, so
 * only its L3 checksum changes with an address.
 */
#pragma once

#include "common.h"
#include "parse.h"

#define IPV4_SADDR_OFF (ETH_HLEN + 12)
#define IPV4_DADDR_OFF (ETH_HLEN + 16)
#define IPV4_CSUM_OFF (ETH_HLEN + 10)

__inline_fn __u32 l4_csum_off(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return TCP_CSUM_OFF;
	if (proto == IPPROTO_UDP)
		return UDP_CSUM_OFF;
	return 0;
}

/* A zero UDP checksum means "none" and must stay zero. */
__inline_fn __u64 l4_csum_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites the address at `addr_off` (IPV4_SADDR_OFF / IPV4_DADDR_OFF). */
__inline_fn int nat_rewrite_addr(struct __sk_buff *ctx, const struct pkt4 *pkt, __u32 addr_off,
				 __be32 old_addr, __be32 new_addr)
{
	__u32 csum_off = l4_csum_off(pkt->proto);

	if (old_addr == new_addr)
		return 0;
	if (csum_off && pkt->has_l4 &&
	    bpf_l4_csum_replace(ctx, pkt->l4_off + csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | sizeof(new_addr) | l4_csum_flags(pkt->proto)) < 0)
		return DROP_CSUM_L4;
	if (bpf_l3_csum_replace(ctx, IPV4_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
		return DROP_CSUM_L3;
	if (bpf_skb_store_bytes(ctx, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* Rewrites the TCP/UDP port at `port_off` (0 source, 2 destination). */
__inline_fn int nat_rewrite_port(struct __sk_buff *ctx, const struct pkt4 *pkt, __u32 port_off,
				 __be16 old_port, __be16 new_port)
{
	__u32 csum_off = l4_csum_off(pkt->proto);

	if (old_port == new_port || !csum_off || !pkt->has_l4)
		return 0;
	if (bpf_l4_csum_replace(ctx, pkt->l4_off + csum_off, old_port, new_port,
				sizeof(new_port) | l4_csum_flags(pkt->proto)) < 0)
		return DROP_CSUM_L4;
	if (bpf_skb_store_bytes(ctx, pkt->l4_off + port_off, &new_port, sizeof(new_port), 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}
