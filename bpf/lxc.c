//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Programs on the host side of a pod's veth pair.
 *
 *   anet_from_container  tc ingress: every packet the pod sends.
 *   anet_to_container    tc egress: packets the host stack sends to the pod.
 *
 * Entry points dispatch; helpers return a negative anet_reason to drop, and
 * the entry point turns it into one counted drop (one drop path).
 */
#include "lib/common.h"
#include "lib/eth.h"

#include <linux/ip.h>
#include <stddef.h>

char __license[] __section("license") = "Dual BSD/GPL";

/* <linux/if_arp.h> pulls in libc headers; the few ARP definitions we need. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* Answer an ARP request from the pod for any address other than its own with
 * the host-side MAC: the pod's gateway resolves without a bridge. */
static __always_inline int handle_arp(struct __sk_buff *skb, const struct endpoint_info *src)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return -DROP_MALFORMED_ARP;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return -DROP_MALFORMED_ARP;
	if (body->sip != src->ip && body->sip != 0)
		return -DROP_INVALID_SOURCE;
	/* Replies, and probes or announcements of the pod's own address, go to
	 * the host stack as they would on any link. */
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || body->tip == src->ip || body->sip == 0)
		return TC_ACT_OK;

	__be32 target = body->tip;

	arp->ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(body->tha, body->sha);
	body->tip = body->sip;
	mac_copy(body->sha, src->host_mac);
	body->sip = target;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, src->host_mac);

	int ret = bpf_redirect(skb->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	return ret;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb, const struct endpoint_info *src)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	/* The payload may sit in page fragments; only the headers need to be
	 * in the linear area, and a pull puts them there if they are not. */
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end) {
		if (skb->len < ETH_HLEN + sizeof(struct iphdr) ||
		    bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct iphdr)) < 0)
			return -DROP_MALFORMED_IP;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	struct ethhdr *eth = data;
	struct iphdr *ip4 = (void *)(eth + 1);

	if ((void *)(ip4 + 1) > data_end)
		return -DROP_MALFORMED_IP;
	if (ip4->version != 4 || ip4->ihl < 5)
		return -DROP_MALFORMED_IP;
	__u32 hdrlen = ip4->ihl * 4;
	__u32 totlen = bpf_ntohs(ip4->tot_len);
	/* Against skb->len, not data_end: the packet is longer than its
	 * linear part. */
	if (totlen < hdrlen || ETH_HLEN + totlen > skb->len)
		return -DROP_MALFORMED_IP;
	if (ip4->saddr != src->ip)
		return -DROP_INVALID_SOURCE;

	__u32 daddr = ip4->daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&anet_ep_by_ip, &daddr);
	if (!dst)
		return TC_ACT_OK; /* the node itself, or beyond it: the host stack decides */

	/* Routed hop between two pods of this node: decrement TTL, rewrite
	 * L2 and hand the packet straight to the peer's netns. */
	if (ip4->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	__be16 old = *(__be16 *)&ip4->ttl;
	ip4->ttl--;
	__be16 new = *(__be16 *)&ip4->ttl;
	mac_copy(eth->h_dest, dst->pod_mac);
	mac_copy(eth->h_source, dst->host_mac);
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2) < 0)
		return -DROP_CSUM_FAILED;

	int ret = bpf_redirect_peer(dst->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	account(dst->ifindex, DIR_INGRESS, REASON_FORWARDED, skb->len);
	return ret;
}

__section("tc")
int anet_from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	int ret;

	struct endpoint_info *src = bpf_map_lookup_elem(&anet_ep_by_if, &ifindex);
	if (!src) {
		/* Under the node-wide key: counters of an unknown device would
		 * outlive it (see struct metrics_key). */
		account(ANET_IFINDEX_NODE, DIR_EGRESS, DROP_UNKNOWN_ENDPOINT, len);
		return TC_ACT_SHOT;
	}
	if ((void *)(eth + 1) > data_end) {
		ret = -DROP_MALFORMED_L2;
		goto out;
	}
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		ret = handle_ipv4(skb, src);
		break;
	case bpf_htons(ETH_P_ARP):
		ret = handle_arp(skb, src);
		break;
	default:
		ret = -DROP_UNSUPPORTED_L3;
	}
out:
	if (ret < 0) {
		account(ifindex, DIR_EGRESS, (__u8)-ret, len);
		return TC_ACT_SHOT;
	}
	account(ifindex, DIR_EGRESS, REASON_FORWARDED, len);
	return ret;
}

__section("tc")
int anet_to_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;

	/* Only a registered endpoint is delivered to and counted: a device
	 * whose endpoint was deleted (collected while the runtime keeps the
	 * veth) gets nothing and re-creates no counter of its own. */
	if (!bpf_map_lookup_elem(&anet_ep_by_if, &ifindex)) {
		account(ANET_IFINDEX_NODE, DIR_INGRESS, DROP_UNKNOWN_ENDPOINT, skb->len);
		return TC_ACT_SHOT;
	}
	/* Ingress policy will sit here; for now the host stack's packets to a
	 * pod are counted and delivered. */
	account(ifindex, DIR_INGRESS, REASON_FORWARDED, skb->len);
	return TC_ACT_OK;
}
