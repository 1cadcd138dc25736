// SPDX-License-Identifier: Apache-2.0
/*
 * Programs on the host-side veth of every endpoint, as upstream's bpf_lxc.c:
 *
 *   cil_from_container  tc ingress of the host-side veth: packets leaving
 *                       the pod. ARP responder for the gateway, source
 *                       validation, ClusterIP load balancing, conntrack,
 *                       egress policy, reverse NAT of replies.
 *   cil_to_container    tc egress of the host-side veth: packets entering
 *                       the pod. Conntrack, reverse NAT of service replies,
 *                       ingress policy.
 *
 * IPv4 only for now: IPv6 frames are dropped with DROP_UNKNOWN_L3 as upstream
 * does with IPv6 disabled; the IPv6 path will add ct6/lb6 maps beside these.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/parse.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/policy.h"

char _license[] SEC("license") = "Dual BSD/GPL";

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_eth {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 proto;
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

__inline_fn struct endpoint_info *lookup_endpoint4(__be32 addr)
{
	struct endpoint_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.ip.p[0] = addr;
	key.family = ENDPOINT_KEY_IPV4;
	return bpf_map_lookup_elem(&cilium_lxc, &key);
}

/* The identity of a peer address: ipcache longest prefix, world on a miss
 * (upstream resolve_srcid_ipv4() / lookup_ip4_remote_endpoint()). */
__inline_fn __u32 lookup_identity4(__be32 addr)
{
	struct remote_endpoint_info *info;
	struct ipcache_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.lpm.prefixlen = IPCACHE_PREFIX_STATIC + 32;
	key.family = ENDPOINT_KEY_IPV4;
	key.ip.p[0] = addr;
	info = bpf_map_lookup_elem(&cilium_ipcache_v2, &key);
	return info ? info->sec_identity : WORLD_ID;
}

__inline_fn void event_info_from_pkt(struct event_info *info, const struct pkt4 *pkt)
{
	info->protocol = pkt->proto;
	info->saddr = pkt->saddr;
	info->daddr = pkt->daddr;
	info->sport = pkt->sport;
	info->dport = pkt->dport;
}

/*
 * Upstream's ARP responder (bpf/lib/arp.h, ENABLE_ARP_RESPONDER): a pod's
 * request for any address other than its own (its gateway, in practice) is
 * answered with the host-side veth MAC and sent straight back to the pod.
 * Everything else ARP goes to the stack; an agent that prefers the kernel's
 * proxy_arp on the host-side veth gets the same answer from there.
 */
__inline_fn int handle_arp(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct arp_eth *req = data;
	struct endpoint_info *ep;
	struct arp_eth reply;
	__be32 sip, tip;

	if ((void *)(req + 1) > data_end)
		return CTX_ACT_OK;
	if (req->hrd != bpf_htons(ARPHRD_ETHER) || req->pro != bpf_htons(ETH_P_IP) ||
	    req->hln != ETH_ALEN || req->pln != 4 || req->op != bpf_htons(ARPOP_REQUEST))
		return CTX_ACT_OK;
	sip = req->sip;
	tip = req->tip;
	/* Gratuitous ARP and duplicate address probes are not questions. */
	if (tip == sip || sip == 0)
		return CTX_ACT_OK;
	ep = lookup_endpoint4(sip);
	if (!ep || ep->ifindex != ctx->ifindex)
		return CTX_ACT_OK;

	__builtin_memcpy(reply.dst, req->sha, ETH_ALEN);
	__builtin_memcpy(reply.src, ep->node_mac, ETH_ALEN);
	reply.proto = bpf_htons(ETH_P_ARP);
	reply.hrd = bpf_htons(ARPHRD_ETHER);
	reply.pro = bpf_htons(ETH_P_IP);
	reply.hln = ETH_ALEN;
	reply.pln = 4;
	reply.op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(reply.sha, ep->node_mac, ETH_ALEN);
	reply.sip = tip;
	__builtin_memcpy(reply.tha, req->sha, ETH_ALEN);
	reply.tip = sip;
	if (bpf_skb_store_bytes(ctx, 0, &reply, sizeof(reply), 0) < 0)
		return CTX_ACT_OK;
	/* Egress of the same veth delivers to the pod (upstream arp_respond()). */
	return bpf_redirect(ctx->ifindex, 0);
}

/*
 * Fills the event fields that name the local endpoint, for events of packets
 * the fast path let through without looking it up. A miss (the endpoint is
 * being removed while its veth still carries traffic) leaves them 0.
 */
__inline_fn void event_info_src_endpoint(struct event_info *info, __be32 addr)
{
	struct endpoint_info *ep = lookup_endpoint4(addr);

	if (ep) {
		info->source = ep->lxc_id;
		info->src_label = ep->sec_id;
	}
}

__inline_fn void event_info_dst_endpoint(struct event_info *info, __be32 addr)
{
	struct endpoint_info *ep = lookup_endpoint4(addr);

	if (ep) {
		info->source = ep->lxc_id;
		info->dst_id = ep->lxc_id;
		info->dst_label = ep->sec_id;
	}
}

/*
 * Packets leaving the pod. Conntrack comes first, on the packet as the pod
 * sent it: a packet of a known connection whose entry this veth created is
 * forwarded after one lookup, without the endpoint, service or policy maps
 * (see ct_entry_on_device()). Anything else is validated against the
 * endpoint, then translated if addressed to a ClusterIP (and looked up again
 * as translated) and, if new, subject to policy.
 *
 * Deviation from upstream, which translates services before conntrack: a
 * connection that exists before a service is created on its destination
 * keeps going to that destination instead of being moved to a backend
 * mid-stream, and a pod's replies to a peer that connected from a frontend
 * address are not translated.
 */
__inline_fn int handle_ipv4_from_lxc(struct __sk_buff *ctx, struct event_info *info)
{
	bool untracked_frag, related = false, ep_known = false, may_be_reply, reply_first;
	struct lb4_service *svc = NULL;
	struct ct_entry *entry = NULL;
	struct policy_result res;
	struct ct_state ct = {};
	__be16 rev_nat = 0;
	__be32 src_addr;
	struct pkt4 pkt;
	int ct_ret, ret;
	__u32 now;

	ret = parse_ipv4(ctx, &pkt);
	if (ret)
		return DROP(ctx, info, ret, METRIC_EGRESS);
	event_info_from_pkt(info, &pkt);
	src_addr = pkt.saddr;
	untracked_frag = pkt.is_fragment && !pkt.has_l4;
	now = ct_now();

	/* Conntrack as in ct_lookup4(), except that a packet to a service
	 * frontend skips the reply half: translated, it is looked up again. */
	may_be_reply = ct_may_be_reply(&pkt);
	reply_first = may_be_reply && ct_reply_first(&pkt);
	ct_ret = CT_NEW;
	if (reply_first)
		ct_ret = ct_lookup4_reply(&pkt, TUPLE_F_OUT, &entry);
	if (ct_ret == CT_NEW)
		ct_ret = ct_lookup4_forward(&pkt, TUPLE_F_OUT, &entry);
	if (ct_ret == CT_NEW && pkt.has_l4 &&
	    (pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP))
		svc = lb4_lookup_service(&pkt);
	if (ct_ret == CT_NEW && !svc && may_be_reply && !reply_first)
		ct_ret = ct_lookup4_reply(&pkt, TUPLE_F_OUT, &entry);

	/* `entry` is set exactly when ct_ret is CT_ESTABLISHED or CT_REPLY. */
	if (!entry || !ct_entry_on_device(entry, ctx)) {
		/* The source must be this veth's endpoint (upstream DROP_INVALID_SIP). */
		struct endpoint_info *ep = lookup_endpoint4(pkt.saddr);

		if (!ep || ep->ifindex != ctx->ifindex)
			return DROP(ctx, info, DROP_INVALID_SIP, METRIC_EGRESS);
		ep_known = true;
		info->source = ep->lxc_id;
		info->src_label = ep->sec_id;

		if (svc) {
			ret = lb4_local(ctx, &pkt, svc, ep->sec_id, now, &rev_nat);
			if (ret)
				return DROP(ctx, info, ret, METRIC_EGRESS);
			info->daddr = pkt.daddr;
			info->dport = pkt.dport;
			ct_ret = ct_lookup4(&pkt, TUPLE_F_OUT, &entry);
		}

		if (ct_ret == CT_NEW && ct_icmp_related4(ctx, &pkt, TUPLE_F_OUT)) {
			ct_ret = CT_RELATED;
			related = true;
		} else if (ct_ret == CT_NEW) {
			info->dst_label = lookup_identity4(pkt.daddr);
			policy_check(ep->lxc_id, info->dst_label, 1, &pkt, untracked_frag, &res);
			send_policy_verdict_notify(ctx, info, res.verdict, res.match_type,
						   res.cookie);
			if (res.verdict < 0)
				return DROP(ctx, info, (__u8)(-res.verdict), METRIC_EGRESS);
			if (!untracked_frag) {
				ret = ct_create4(&pkt, TUPLE_F_OUT, now, rev_nat, ep->sec_id,
						 ctx->ifindex);
				if (ret)
					return DROP(ctx, info, ret, METRIC_EGRESS);
			}
			ct.monitor = 1;
		}
	}

	if (entry) {
		ct_refresh(entry, &pkt, now, ct_ret == CT_REPLY, &ct);
		/* Replies of connections that were DNATed on their way in. */
		if (ct_ret == CT_REPLY) {
			info->flags |= EVENT_F_REPLY;
			if (ct.rev_nat_index) {
				ret = lb4_rev_nat(ctx, &pkt, ct.rev_nat_index);
				if (ret) {
					if (!ep_known)
						event_info_src_endpoint(info, src_addr);
					return DROP(ctx, info, ret, METRIC_EGRESS);
				}
				info->saddr = pkt.saddr;
				info->sport = pkt.sport;
			}
		}
	}

	update_metrics_forwarded(ctx->len, METRIC_EGRESS);
	if (trace_wanted(ct.monitor || related)) {
		if (!ep_known)
			event_info_src_endpoint(info, src_addr);
		if (!info->dst_label)
			info->dst_label = lookup_identity4(pkt.daddr);
		send_trace_notify(ctx, info, TRACE_TO_STACK, (__u8)ct_ret);
	}
	return CTX_ACT_OK;
}

SEC("classifier/cil_from_container")
int cil_from_container(struct __sk_buff *ctx)
{
	struct event_info info;
	struct ethhdr *eth;
	void *data, *data_end;
	__u16 proto;

	__builtin_memset(&info, 0, sizeof(info));
	info.direction = POLICY_EGRESS;

	pull_headers(ctx);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return DROP(ctx, &info, DROP_INVALID, METRIC_EGRESS);
	proto = bpf_ntohs(eth->h_proto);
	/* 802.3 length field instead of an ethertype (upstream validate_ethertype). */
	if (proto < ETH_P_802_3_MIN)
		return DROP(ctx, &info, DROP_UNSUPPORTED_L2, METRIC_EGRESS);

	switch (proto) {
	case ETH_P_IP:
		return handle_ipv4_from_lxc(ctx, &info);
	case ETH_P_ARP:
		return handle_arp(ctx);
	default:
		return DROP(ctx, &info, DROP_UNKNOWN_L3, METRIC_EGRESS);
	}
}

/* Packets entering the pod: conntrack first, as on the way out; only a
 * packet no entry of this veth vouches for needs the endpoint lookup. */
__inline_fn int handle_ipv4_to_lxc(struct __sk_buff *ctx, struct event_info *info)
{
	bool untracked_frag, related = false, ep_known = false;
	struct ct_entry *entry = NULL;
	struct policy_result res;
	struct ct_state ct = {};
	__be32 dst_addr;
	struct pkt4 pkt;
	int ct_ret, ret;
	__u32 now;

	ret = parse_ipv4(ctx, &pkt);
	if (ret)
		return DROP(ctx, info, ret, METRIC_INGRESS);
	event_info_from_pkt(info, &pkt);
	dst_addr = pkt.daddr;
	untracked_frag = pkt.is_fragment && !pkt.has_l4;
	now = ct_now();

	/* `entry` is set exactly when ct_ret is CT_ESTABLISHED or CT_REPLY. */
	ct_ret = ct_lookup4(&pkt, TUPLE_F_IN, &entry);
	if (!entry || !ct_entry_on_device(entry, ctx)) {
		/* Only this veth's endpoint is behind it; upstream's per-endpoint
		 * program has no way to be reached for another address. */
		struct endpoint_info *ep = lookup_endpoint4(pkt.daddr);

		if (!ep || ep->ifindex != ctx->ifindex)
			return DROP(ctx, info, DROP_UNKNOWN_TARGET, METRIC_INGRESS);
		ep_known = true;
		info->source = ep->lxc_id;
		info->dst_id = ep->lxc_id;
		info->dst_label = ep->sec_id;

		if (ct_ret == CT_NEW && ct_icmp_related4(ctx, &pkt, TUPLE_F_IN)) {
			ct_ret = CT_RELATED;
			related = true;
		} else if (ct_ret == CT_NEW) {
			info->src_label = lookup_identity4(pkt.saddr);
			policy_check(ep->lxc_id, info->src_label, 0, &pkt, untracked_frag, &res);
			send_policy_verdict_notify(ctx, info, res.verdict, res.match_type,
						   res.cookie);
			if (res.verdict < 0)
				return DROP(ctx, info, (__u8)(-res.verdict), METRIC_INGRESS);
			if (!untracked_frag) {
				ret = ct_create4(&pkt, TUPLE_F_IN, now, 0, info->src_label,
						 ctx->ifindex);
				if (ret)
					return DROP(ctx, info, ret, METRIC_INGRESS);
			}
			ct.monitor = 1;
		}
	}

	if (entry) {
		ct_refresh(entry, &pkt, now, ct_ret == CT_REPLY, &ct);
		if (ct_ret == CT_ESTABLISHED)
			info->src_label = ct.src_sec_id;
		/* A reply from a service backend: restore the frontend as source. */
		if (ct_ret == CT_REPLY) {
			info->flags |= EVENT_F_REPLY;
			if (ct.rev_nat_index) {
				ret = lb4_rev_nat(ctx, &pkt, ct.rev_nat_index);
				if (ret) {
					if (!ep_known)
						event_info_dst_endpoint(info, dst_addr);
					return DROP(ctx, info, ret, METRIC_INGRESS);
				}
				info->saddr = pkt.saddr;
				info->sport = pkt.sport;
			}
		}
	}

	update_metrics_forwarded(ctx->len, METRIC_INGRESS);
	if (trace_wanted(ct.monitor || related)) {
		if (!ep_known)
			event_info_dst_endpoint(info, dst_addr);
		if (!info->src_label)
			info->src_label = lookup_identity4(pkt.saddr);
		send_trace_notify(ctx, info, TRACE_TO_LXC, (__u8)ct_ret);
	}
	return CTX_ACT_OK;
}

SEC("classifier/cil_to_container")
int cil_to_container(struct __sk_buff *ctx)
{
	struct event_info info;
	struct ethhdr *eth;
	void *data, *data_end;
	__u16 proto;

	__builtin_memset(&info, 0, sizeof(info));
	info.direction = POLICY_INGRESS;

	pull_headers(ctx);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return DROP(ctx, &info, DROP_INVALID, METRIC_INGRESS);
	proto = bpf_ntohs(eth->h_proto);
	if (proto < ETH_P_802_3_MIN)
		return DROP(ctx, &info, DROP_UNSUPPORTED_L2, METRIC_INGRESS);

	switch (proto) {
	case ETH_P_IP:
		return handle_ipv4_to_lxc(ctx, &info);
	case ETH_P_ARP:
		/* The host resolving the pod, and answers to the pod's requests. */
		return CTX_ACT_OK;
	default:
		return DROP(ctx, &info, DROP_UNKNOWN_L3, METRIC_INGRESS);
	}
}
