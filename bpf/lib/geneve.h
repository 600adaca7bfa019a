/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The Geneve overlay (RFC 8926), built by anet's programs with no kernel
 * tunnel device: the pod program encapsulates (tunnel_encap), the underlay
 * program decapsulates (tunnel_decap, in ../host.c).
 *
 * On the wire, after the underlay's Ethernet header:
 *   IPv4   20 bytes, no options; DF set (the tunnel does not fragment: a
 *          packet too large for the underlay is the sender's to shrink),
 *          TTL 64, the inner packet's TOS (DSCP and ECN, RFC 6040's normal
 *          mode), ID 0 (RFC 6864: an atomic datagram), checksum computed;
 *          from the node's underlay address to the peer node's.
 *   UDP    8 bytes, to 6081; from a port of 49152-65535 (RFC 8926 3.3's
 *          recommendation) taken from the kernel's hash of the inner flow,
 *          so that the underlay's ECMP spreads flows and keeps each on one
 *          path. Checksum 0: RFC 8926 3.3 allows it over IPv4, the inner
 *          packet carries its own, and it keeps segmentation offload of
 *          the tunnel (SKB_GSO_UDP_TUNNEL without _CSUM) cheap.
 *   Geneve 8 bytes: version 0, no options, protocol 0x6558 (Transparent
 *          Ethernet Bridging), VNI = the sending pod's security identity
 *          (24 bits), so that the receiver judges ingress policy on it
 *          without an ipcache lookup.
 *   The pod's Ethernet frame, byte for byte as the pod sent it: the
 *          receiving node makes the routed hop (TTL, MACs) on delivery.
 *
 * The routing mode is a load-time constant (datapath.Options.RoutingMode):
 * in native mode the verifier removes every tunnel branch, so native
 * packets pay nothing for it.
 */
#pragma once

#include "common.h"
#include "eth.h"
#include "node.h"

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define ANET_ROUTING_NATIVE 0
#define ANET_ROUTING_TUNNEL 1

volatile const __u32 ANET_ROUTING_MODE = ANET_ROUTING_NATIVE;

#define GENEVE_PORT 6081
#define GENEVE_PROTO_ETH 0x6558
#define GENEVE_F_OAM 0x80
#define GENEVE_F_CRITICAL 0x40
#define TUNNEL_SPORT_MIN 49152

struct genevehdr {
	__u8 ver_optlen; /* version (2 bits), options length in 4-byte words (6) */
	__u8 flags;      /* O, C, reserved */
	__be16 proto;
	__u8 vni[3];
	__u8 rsvd;
};

/* What encapsulation puts between the outer Ethernet header and the
 * inner IPv4 header: 50 bytes. */
#define TUNNEL_OVERHEAD (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct genevehdr) + ETH_HLEN)

/* anet_tunnel4: pod CIDR of another node -> that node's underlay address
 * (datapath.SetTunnelPeer). */
struct tunnel_key {
	__u32 prefixlen; /* 0..32 */
	__be32 addr;
};

struct tunnel_peer {
	__be32 node;
	__u32 flags; /* reserved */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_tunnel4 __section(".maps");

static __always_inline struct tunnel_peer *tunnel_lookup(__be32 addr)
{
	struct tunnel_key k = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&anet_tunnel4, &k);
}

/* ip4_csum is the checksum of a 20-byte IPv4 header whose check is 0. */
static __always_inline __u16 ip4_csum(const struct iphdr *ip4)
{
	const __u16 *w = (const __u16 *)ip4;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip4) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* tunnel_sport is the outer source port of the packet's flow. */
static __always_inline __be16 tunnel_sport(struct __sk_buff *skb)
{
	__u32 h = bpf_get_hash_recalc(skb);

	h ^= h >> 16;
	return bpf_htons(TUNNEL_SPORT_MIN | (h & 0x3fff));
}

/* tunnel_encap wraps the frame (Ethernet + IPv4, headers in the linear
 * area) in Geneve toward the node peer with VNI vni, and sends it out of
 * the underlay device: bpf_redirect_neigh routes the outer destination
 * (the node's routing table, IP forwarding not needed) and fills the outer
 * MACs from the neighbour table. */
static __always_inline int tunnel_encap(struct __sk_buff *skb, const struct node_config *cfg, __be32 peer, __u32 vni)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr inner;
	struct iphdr *ip4 = data + ETH_HLEN;

	if ((void *)(ip4 + 1) > data_end)
		return -DROP_MALFORMED_IP;
	__builtin_memcpy(&inner, data, ETH_HLEN);
	__u8 tos = ip4->tos;
	__be16 sport = tunnel_sport(skb);
	__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		      BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	if (bpf_skb_adjust_room(skb, TUNNEL_OVERHEAD, BPF_ADJ_ROOM_MAC, flags) < 0)
		return -DROP_TUNNEL_ENCAP_FAILED;

	__u32 len = skb->len;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *oip = (void *)(eth + 1);
	struct udphdr *uh = (void *)(oip + 1);
	struct genevehdr *gh = (void *)(uh + 1);
	struct ethhdr *ieth = (void *)(gh + 1);
	if ((void *)(ieth + 1) > data_end)
		return -DROP_TUNNEL_ENCAP_FAILED;

	__builtin_memcpy(ieth, &inner, ETH_HLEN);
	/* The neighbour subsystem writes the next hop's MAC over h_dest. */
	__builtin_memset(eth->h_dest, 0, ETH_ALEN);
	mac_copy(eth->h_source, cfg->tunnel_mac);
	eth->h_proto = bpf_htons(ETH_P_IP);

	oip->version = 4;
	oip->ihl = 5;
	oip->tos = tos;
	oip->tot_len = bpf_htons(len - ETH_HLEN);
	oip->id = 0;
	oip->frag_off = bpf_htons(0x4000); /* DF */
	oip->ttl = 64;
	oip->protocol = IPPROTO_UDP;
	oip->check = 0;
	oip->saddr = cfg->addr;
	oip->daddr = peer;
	oip->check = ip4_csum(oip);

	uh->source = sport;
	uh->dest = bpf_htons(GENEVE_PORT);
	uh->len = bpf_htons(len - ETH_HLEN - sizeof(struct iphdr));
	uh->check = 0;

	gh->ver_optlen = 0;
	gh->flags = 0;
	gh->proto = bpf_htons(GENEVE_PROTO_ETH);
	gh->vni[0] = vni >> 16;
	gh->vni[1] = vni >> 8;
	gh->vni[2] = vni;
	gh->rsvd = 0;

	return bpf_redirect_neigh(cfg->tunnel_ifindex, NULL, 0, 0);
}
