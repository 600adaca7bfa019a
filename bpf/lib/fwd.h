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
