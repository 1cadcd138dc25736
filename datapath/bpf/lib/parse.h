/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 header parsing into struct pkt4. Every read is bounds-checked against
 * data_end; malformed packets return the drop reason upstream uses.
 */
#pragma once

#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

/* Enough linear data for Ethernet, a maximal IPv4 header and a TCP header. */
#define PARSE_PULL_LEN (ETH_HLEN + 60 + 20)

/* L4 checksum field offsets (for bpf_l4_csum_replace). */
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

/* The ICMP header (linux/icmp.h drags in libc socket headers). */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;  /* echo identifier */
	__be16 seq; /* echo sequence */
};

struct pkt4 {
	__u32 l4_off;      /* offset of the L4 header from the start of the frame */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;      /* TCP/UDP/SCTP ports; ICMP echo id as upstream puts it */
	__be16 dport;
	__be16 policy_port;/* port for the policy key: dport, or ICMP type */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 has_l4;       /* false for non-first fragments */
	__u8 is_fragment;
};

/*
 * Makes sure the headers we parse are in the linear part of the skb
 * (upstream revalidate_data_pull). Packets shorter than the pull length are
 * pulled whole.
 */
__inline_fn void pull_headers(struct __sk_buff *ctx)
{
	__u32 linear = ctx->data_end - ctx->data;
	__u32 want = ctx->len < PARSE_PULL_LEN ? ctx->len : PARSE_PULL_LEN;

	if (linear < want)
		bpf_skb_pull_data(ctx, want);
}

/* Returns 0 or a positive drop reason. */
__inline_fn int parse_ipv4(struct __sk_buff *ctx, struct pkt4 *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	__u32 hdrlen;
	__u16 frag;
	void *l4;

	/* Truncated L3 header: upstream revalidate_data() -> DROP_INVALID. */
	if ((void *)(ip4 + 1) > data_end)
		return DROP_INVALID;
	/* Not IPv4 despite the ethertype, or a header shorter than 20 bytes. */
	if (ip4->version != 4 || ip4->ihl < 5)
		return DROP_INVALID;
	hdrlen = ip4->ihl * 4;
	/* IP options are legal and skipped, as upstream (ipv4_hdrlen()). */
	l4 = (void *)ip4 + hdrlen;
	if (l4 > data_end)
		return DROP_INVALID;

	pkt->l4_off = ETH_HLEN + hdrlen;
	pkt->saddr = ip4->saddr;
	pkt->daddr = ip4->daddr;
	pkt->proto = ip4->protocol;
	pkt->sport = 0;
	pkt->dport = 0;
	pkt->policy_port = 0;
	pkt->tcp_flags = 0;
	pkt->icmp_type = 0;
	pkt->icmp_code = 0;

	frag = bpf_ntohs(ip4->frag_off);
	pkt->is_fragment = (frag & (IP_MF | IP_OFFSET)) != 0;
	/* Only the first fragment carries the L4 header (upstream
	 * ipfrag_has_l4_header()); later ones are "untracked fragments". */
	pkt->has_l4 = (frag & IP_OFFSET) == 0;

	switch (pkt->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if (!pkt->has_l4)
			return 0;
		/* Upstream ct_lookup4() fails on a short L4 header. */
		if ((void *)(tcp + 1) > data_end)
			return DROP_CT_INVALID_HDR;
		pkt->sport = tcp->source;
		pkt->dport = tcp->dest;
		pkt->policy_port = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* UDP header and SCTP common header both start with the ports. */
		__u32 need = pkt->proto == IPPROTO_UDP ? 8 : 12;

		if (!pkt->has_l4)
			return 0;
		if (l4 + need > data_end)
			return DROP_CT_INVALID_HDR;
		pkt->sport = ((__be16 *)l4)[0];
		pkt->dport = ((__be16 *)l4)[1];
		pkt->policy_port = pkt->dport;
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;

		if (!pkt->has_l4)
			return 0;
		if ((void *)(icmp + 1) > data_end)
			return DROP_CT_INVALID_HDR;
		pkt->icmp_type = icmp->type;
		pkt->icmp_code = icmp->code;
		/* Policy matches ICMP types as ports (upstream enable_icmp_rule). */
		pkt->policy_port = bpf_htons(icmp->type);
		/* Echo: the identifier is the source "port" of requests and the
		 * destination "port" of replies, so a reply reverses a request. */
		if (icmp->type == ICMP_ECHO)
			pkt->sport = icmp->id;
		else if (icmp->type == ICMP_ECHOREPLY)
			pkt->dport = icmp->id;
		return 0;
	}
	default:
		/* Upstream conntrack handles TCP, UDP, SCTP and ICMP only. */
		return DROP_CT_UNKNOWN_PROTO;
	}
}

__inline_fn bool icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

/*
 * The connection an ICMP error refers to: the IP header and first 8 bytes of
 * the offending packet follow the ICMP header. Returns false if they are not
 * there or not TCP/UDP.
 */
__inline_fn bool parse_icmp_inner(struct __sk_buff *ctx, const struct pkt4 *pkt,
				  struct pkt4 *inner)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = pkt->l4_off + sizeof(struct icmphdr);
	struct iphdr *ip4;
	__be16 *ports;

	if (off > ETH_HLEN + 60 + 8)
		return false;
	ip4 = data + off;
	if ((void *)(ip4 + 1) > data_end)
		return false;
	if (ip4->version != 4 || ip4->ihl != 5)
		return false;
	if (ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP)
		return false;
	ports = (void *)(ip4 + 1);
	if ((void *)(ports + 2) > data_end)
		return false;
	inner->saddr = ip4->saddr;
	inner->daddr = ip4->daddr;
	inner->proto = ip4->protocol;
	inner->sport = ports[0];
	inner->dport = ports[1];
	return true;
}
