/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery to an endpoint of this node: the routed hop into its netns. */
#pragma once

#include "common.h"
#include "eth.h"

#include <linux/ip.h>

/* csum16_add is a one's complement addition of 16-bit words. */
static __always_inline __u16 csum16_add(__u16 csum, __u16 addend)
{
	__u16 res = csum + addend;

	return res + (res < addend);
}

/* ip_decrease_ttl decrements the TTL of a header whose TTL is above 1 and
 * updates its checksum in place, as bpf_l3_csum_replace(..., 2) would
 * (csum_replace2, RFC 1624), without a helper call: on these machines a
 * call and its return cost more than the arithmetic (the kernel's
 * return-stack mitigations), and the header is in the linear area,
 * writable (the verifier's prologue unclones the skb of a program that
 * writes packets directly). */
static __always_inline void ip_decrease_ttl(struct iphdr *ip4)
{
	__u16 old = *(__u16 *)&ip4->ttl;

	ip4->ttl--;
	__u16 new = *(__u16 *)&ip4->ttl;
	ip4->check = (__sum16)~csum16_add(csum16_add(~ip4->check, ~old), new);
}

#define IP_ECN_MASK 0x03
#define IP_ECN_CE 0x03

/* ip_set_tos rewrites the TOS byte and updates the checksum in place, as
 * ip_decrease_ttl does. */
static __always_inline void ip_set_tos(struct iphdr *ip4, __u8 tos)
{
	__u16 old = *(__u16 *)ip4;

	ip4->tos = tos;
	__u16 new = *(__u16 *)ip4;
	ip4->check = (__sum16)~csum16_add(csum16_add(~ip4->check, ~old), new);
}

/* ipv4_pull puts the Ethernet and IPv4 headers of an IPv4 frame in the
 * linear area (the payload may stay in page fragments) and validates the
 * IPv4 header: version, IHL, a total length within the packet (against
 * skb->len, not data_end: the packet is longer than its linear part).
 * *hdrlenp is the IPv4 header's length. */
static __always_inline int ipv4_pull(struct __sk_buff *skb, struct ethhdr **ethp, struct iphdr **ip4p, __u32 *hdrlenp)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

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
	if (totlen < hdrlen || ETH_HLEN + totlen > skb->len)
		return -DROP_MALFORMED_IP;
	*ethp = eth;
	*ip4p = ip4;
	*hdrlenp = hdrlen;
	return 0;
}

/* deliver_local hands a packet to the endpoint dst as a router would:
 * TTL decremented, the endpoint's MACs, straight into its netns. The
 * headers eth and ip4 are in the linear area. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct ethhdr *eth, struct iphdr *ip4,
					 const struct endpoint_info *dst)
{
	if (ip4->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	ip_decrease_ttl(ip4);
	mac_copy(eth->h_dest, dst->pod_mac);
	mac_copy(eth->h_source, dst->host_mac);

	int ret = bpf_redirect_peer(dst->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	account(dst->ifindex, DIR_INGRESS, REASON_FORWARDED, skb->len);
	return ret;
}
