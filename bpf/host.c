//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Programs on the node's underlay device: the per-packet half of the
 * kube-proxy replacement, for the traffic that the socket hooks do not see
 * (NodePort, ExternalIP and LoadBalancer connections from outside the node).
 *
 *   anet_from_netdev  tc ingress: a new connection to a frontend gets a
 *                     backend (DNAT), and the node's address as its source
 *                     when the backend is on another node (SNAT); replies
 *                     of such connections coming back from that node are
 *                     translated back and sent to the client.
 *   anet_to_netdev    tc egress: replies of a local backend to an outside
 *                     client get the frontend back as their source.
 *
 * In tunnel mode (lib/geneve.h) anet_from_netdev first takes the Geneve
 * packets to this node (UDP 6081 to its underlay address): validated,
 * decapsulated and delivered to the endpoint of the inner destination
 * with bpf_redirect_peer, its ingress policy judged on the VNI's identity.
 * A malformed one is dropped with its reason, never delivered.
 *
 * Everything else passes untouched (TC_ACT_OK). Entry points dispatch;
 * helpers return a negative anet_reason to drop (one drop path).
 */
#include "lib/common.h"
#include "lib/eth.h"
#include "lib/lb.h"
#include "lib/ct.h"
#include "lib/fwd.h"
#include "lib/geneve.h"
#include "lib/node.h"
#include "lib/policy.h"

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stdbool.h>
#include <stddef.h>

char __license[] __section("license") = "Dual BSD/GPL";

#ifndef AF_INET
#define AF_INET 2
#endif

/* A parsed IPv4 TCP or UDP packet: where its fields are. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	bool syn_only; /* TCP SYN without ACK: a new connection */
	bool closing;  /* TCP FIN or RST */
	bool rejected; /* answered for a frontend without backends (counted as a drop) */
	__u32 l4off;
	__u32 csumoff; /* of the L4 checksum */
};

/* parse fills p for an IPv4 TCP or UDP first-or-only fragment. It returns 1
 * for a packet to translate, 0 for one to pass untouched (another
 * protocol, a later fragment), or a negative reason. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	/* Headers in the linear area: IPv4 with options and a TCP header. */
	__u32 want = ETH_HLEN + 60 + sizeof(struct tcphdr);
	if (want > skb->len)
		want = skb->len;
	if (data + want > data_end) {
		if (bpf_skb_pull_data(skb, want) < 0)
			return -DROP_MALFORMED_IP;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	struct iphdr *ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return -DROP_MALFORMED_IP;
	if (ip4->version != 4 || ip4->ihl < 5)
		return -DROP_MALFORMED_IP;
	if (ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP)
		return 0;
	/* A later fragment carries no ports: nothing to match it on. */
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 hdrlen = ip4->ihl * 4;
	p->saddr = ip4->saddr;
	p->daddr = ip4->daddr;
	p->proto = ip4->protocol;
	p->l4off = ETH_HLEN + hdrlen;
	p->syn_only = false;
	p->closing = false;
	p->rejected = false;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + p->l4off;
		if ((void *)(th + 1) > data_end)
			return -DROP_MALFORMED_L4;
		p->sport = th->source;
		p->dport = th->dest;
		p->syn_only = th->syn && !th->ack;
		p->closing = th->fin || th->rst;
		p->csumoff = p->l4off + offsetof(struct tcphdr, check);
	} else {
		struct udphdr *uh = data + p->l4off;
		if ((void *)(uh + 1) > data_end)
			return -DROP_MALFORMED_L4;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->csumoff = p->l4off + offsetof(struct udphdr, check);
	}
	return 1;
}

/* csum_flags: UDP's checksum may be 0 (none); the kernel leaves it so. */
static __always_inline __u64 csum_flags(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

static __always_inline int set_addr(struct __sk_buff *skb, struct pkt *p, bool src, __be32 to)
{
	__u32 off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
	__be32 from = src ? p->saddr : p->daddr;

	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csumoff, from, to, BPF_F_PSEUDO_HDR | sizeof(to) | csum_flags(p)) < 0)
		return -DROP_CSUM_FAILED;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to, sizeof(to)) < 0)
		return -DROP_CSUM_FAILED;
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0) < 0)
		return -DROP_CSUM_FAILED;
	if (src)
		p->saddr = to;
	else
		p->daddr = to;
	return 0;
}

static __always_inline int set_port(struct __sk_buff *skb, struct pkt *p, bool src, __be16 to)
{
	/* sport and dport are the first two fields of both TCP and UDP. */
	__u32 off = p->l4off + (src ? 0 : 2);
	__be16 from = src ? p->sport : p->dport;

	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csumoff, from, to, sizeof(to) | csum_flags(p)) < 0)
		return -DROP_CSUM_FAILED;
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0) < 0)
		return -DROP_CSUM_FAILED;
	if (src)
		p->sport = to;
	else
		p->dport = to;
	return 0;
}

/* set_endpoint rewrites the source (src) or destination address and port. */
static __always_inline int set_endpoint(struct __sk_buff *skb, struct pkt *p, bool src, __be32 addr, __be16 port)
{
	int err = set_addr(skb, p, src, addr);

	return err ? err : set_port(skb, p, src, port);
}

/* route sends a translated packet out by a FIB lookup, as a router would
 * (TTL decremented): the host stack would drop it, its source being one of
 * the node's own addresses. */
static __always_inline int route(struct __sk_buff *skb, const struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;

	if ((void *)(ip4 + 1) > data_end)
		return -DROP_MALFORMED_IP;
	if (ip4->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	__be16 old = *(__be16 *)&ip4->ttl;
	ip4->ttl--;
	__be16 new = *(__be16 *)&ip4->ttl;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2) < 0)
		return -DROP_CSUM_FAILED;

	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = p->proto,
		.sport = p->sport,
		.dport = p->dport,
		.ipv4_src = p->saddr,
		.ipv4_dst = p->daddr,
		.ifindex = skb->ifindex,
	};
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	/* With IP forwarding off on the device the FIB helper refuses; the
	 * packet then leaves by the device it came in on (the underlay, for
	 * both directions of a NodePort connection), the kernel choosing the
	 * next hop and its address. */
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -DROP_FIB_FAILED;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -DROP_MALFORMED_L2;
	mac_copy(eth->h_dest, fib.dmac);
	mac_copy(eth->h_source, fib.smac);
	int ret = bpf_redirect(fib.ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	return ret;
}

/* forward sends a packet of a translated connection on: to the backend
 * (DNAT), from the node (SNAT, for a backend on another node) and out by
 * the FIB; a local backend's is delivered by the host stack. */
static __always_inline int forward(struct __sk_buff *skb, struct pkt *p, const struct ct4_entry *orig)
{
	__be32 baddr = orig->addr, saddr = orig->addr2;
	__be16 bport = orig->port, sport = orig->port2;
	bool snat = orig->flags & CT_F_SNAT;
	int err = set_endpoint(skb, p, false, baddr, bport);

	if (err)
		return err;
	if (!snat)
		return TC_ACT_OK;
	err = set_endpoint(skb, p, true, saddr, sport);
	return err ? err : route(skb, p);
}

/* A frontend without a usable backend refuses a new connection from
 * outside as kube-proxy's REJECT rule does: a TCP SYN gets a reset, a UDP
 * datagram an ICMP port unreachable, sent back out by the device it came
 * in on. Anything else (IPv4 options, a TCP segment that is no SYN) is
 * only dropped. Either way the packet is counted as no-service-backend. */

/* fold turns a 32-bit one's complement sum into a checksum. */
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	mac_copy(tmp, eth->h_source);
	mac_copy(eth->h_source, eth->h_dest);
	mac_copy(eth->h_dest, tmp);
}

/* ip_reply fills a 20-byte IPv4 header from src to dst. */
static __always_inline void ip_reply(struct iphdr *ip4, __be32 src, __be32 dst, __u8 proto, __u16 totlen)
{
	ip4->version = 4;
	ip4->ihl = 5;
	ip4->tos = 0;
	ip4->tot_len = bpf_htons(totlen);
	ip4->id = 0;
	ip4->frag_off = bpf_htons(0x4000); /* DF */
	ip4->ttl = 64;
	ip4->protocol = proto;
	ip4->check = 0;
	ip4->saddr = src;
	ip4->daddr = dst;
	ip4->check = fold(bpf_csum_diff(NULL, 0, (__be32 *)ip4, sizeof(*ip4), 0));
}

static __always_inline int reject_tcp(struct __sk_buff *skb, const struct pkt *p)
{
	const __u32 len = ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcphdr);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl != 5 || !p->syn_only)
		return -DROP_NO_SERVICE_BACKEND;
	struct tcphdr *th = (void *)(ip4 + 1);
	if ((void *)(th + 1) > data_end)
		return -DROP_MALFORMED_L4;
	/* The SYN's sequence number plus its length (SYN counts one). */
	__u32 ack = bpf_ntohl(th->seq) + 1 + (bpf_ntohs(ip4->tot_len) - sizeof(*ip4) - th->doff * 4);
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return -DROP_NO_SERVICE_BACKEND;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	ip4 = data + ETH_HLEN;
	th = (void *)(ip4 + 1);
	if ((void *)(th + 1) > data_end)
		return -DROP_NO_SERVICE_BACKEND;
	swap_macs(eth);
	ip_reply(ip4, p->daddr, p->saddr, IPPROTO_TCP, sizeof(*ip4) + sizeof(*th));
	__builtin_memset(th, 0, sizeof(*th));
	th->source = p->dport;
	th->dest = p->sport;
	th->ack_seq = bpf_htonl(ack);
	th->doff = 5;
	th->rst = 1;
	th->ack = 1;
	/* The checksum over the pseudo-header and the header. */
	struct {
		__be32 saddr, daddr;
		__u8 zero, proto;
		__be16 len;
	} ph = { .saddr = p->daddr, .daddr = p->saddr, .proto = IPPROTO_TCP, .len = bpf_htons(sizeof(*th)) };
	__u32 sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)th, sizeof(*th), sum);
	th->check = fold(sum);
	return bpf_redirect(skb->ifindex, 0);
}

/* The ICMP message quotes the datagram's IP header and first 8 bytes. */
#define ICMP_QUOTE (sizeof(struct iphdr) + 8)

struct icmp_unreach {
	__u8 type;
	__u8 code;
	__be16 check;
	__be32 unused;
};

static __always_inline int reject_udp(struct __sk_buff *skb, const struct pkt *p)
{
	const __u32 room = sizeof(struct iphdr) + sizeof(struct icmp_unreach);
	const __u32 len = ETH_HLEN + room + ICMP_QUOTE;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl != 5)
		return -DROP_NO_SERVICE_BACKEND;
	if (skb->len < ETH_HLEN + ICMP_QUOTE)
		return -DROP_MALFORMED_L4;
	/* Room for the new IP and ICMP headers between the Ethernet header
	 * and the datagram, then the datagram cut to what is quoted. */
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, 0) < 0)
		return -DROP_NO_SERVICE_BACKEND;
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return -DROP_NO_SERVICE_BACKEND;
	if (bpf_skb_pull_data(skb, len) < 0)
		return -DROP_NO_SERVICE_BACKEND;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	ip4 = data + ETH_HLEN;
	struct icmp_unreach *ic = (void *)(ip4 + 1);
	__u8 *quote = (void *)(ic + 1);
	if ((void *)quote + ICMP_QUOTE > data_end)
		return -DROP_NO_SERVICE_BACKEND;
	eth->h_proto = bpf_htons(ETH_P_IP);
	swap_macs(eth);
	ip_reply(ip4, p->daddr, p->saddr, IPPROTO_ICMP, room + ICMP_QUOTE);
	ic->type = 3; /* destination unreachable */
	ic->code = 3; /* port unreachable */
	ic->check = 0;
	ic->unused = 0;
	__u32 sum = bpf_csum_diff(NULL, 0, (__be32 *)ic, sizeof(*ic) + ICMP_QUOTE, 0);
	ic->check = fold(sum);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int reject(struct __sk_buff *skb, struct pkt *p)
{
	p->rejected = true;
	if (p->proto == IPPROTO_TCP)
		return reject_tcp(skb, p);
	return reject_udp(skb, p);
}

/* pick_backend chooses the backend of a new connection from outside: the
 * one of the client's address while its session affinity lasts, else a
 * random active one. */
static __always_inline bool pick_backend(const struct lb4_frontend *fe, const struct pkt *p,
					 struct lb4_target *t, __u64 now)
{
	struct lb4_key key = {
		.addr = p->daddr, .port = p->dport, .proto = p->proto,
		.scope = ANET_SCOPE_EXTERNAL,
	};
	struct lb4_affinity_key akey = {
		.client = p->saddr, .rev_nat = fe->rev_nat,
		.scope = ANET_SCOPE_EXTERNAL, .kind = ANET_AFFINITY_ADDR,
	};
	bool found = false;

	if (fe->affinity_timeout)
		found = lb4_affinity_backend(&akey, fe, now, t);
	if (!found && !lb4_select_backend(&key, fe, t))
		return false;
	if (fe->affinity_timeout)
		lb4_affinity_update(&akey, t->backend_id, now);
	return true;
}

/* snat_claim finds a free source port on the node's address for a
 * connection to backend be, and claims it by writing the reply entry. */
static __always_inline int snat_claim(const struct node_config *cfg, const struct lb4_target *be,
				      const struct pkt *p, struct ct4_entry *rev, __be16 *port, __u64 now)
{
	__u32 range = (__u32)cfg->snat_max - cfg->snat_min + 1;

	if (cfg->addr == 0 || cfg->snat_max < cfg->snat_min)
		return -DROP_NO_SNAT_PORT;
	for (int i = 0; i < 8; i++) {
		__u16 pick = cfg->snat_min + bpf_get_prandom_u32() % range;
		struct ct4_key rk = {
			.saddr = be->addr, .daddr = cfg->addr,
			.sport = be->port, .dport = bpf_htons(pick),
			.proto = p->proto,
		};
		/* An expired entry may hold the port: take it over. */
		struct ct4_entry *old = bpf_map_lookup_elem(&anet_ct4, &rk);
		if (old && old->expires < now)
			bpf_map_delete_elem(&anet_ct4, &rk);
		if (bpf_map_update_elem(&anet_ct4, &rk, rev, BPF_NOEXIST) == 0) {
			*port = bpf_htons(pick);
			return 0;
		}
	}
	return -DROP_NO_SNAT_PORT;
}

/* new_conn translates the first packet of a connection to a frontend. It
 * returns TC_ACT_OK when daddr:dport is no frontend. */
static __always_inline int new_conn(struct __sk_buff *skb, struct pkt *p, __u64 now)
{
	/* Traffic from outside the node sees the external scope: the
	 * frontend's entry of externalTrafficPolicy. */
	struct lb4_key key = {
		.addr = p->daddr, .port = p->dport, .proto = p->proto,
		.scope = ANET_SCOPE_EXTERNAL, .slot = ANET_LB_MASTER_SLOT,
	};
	struct lb4_frontend fe;

	if (!lb4_read_master(&key, &fe))
		return TC_ACT_OK;
	/* kube-proxy drops, rather than refuses, what an externalTrafficPolicy
	 * Local frontend cannot serve here: a load balancer's health check
	 * steers clients to the nodes that can. */
	if (fe.count == 0 && (fe.flags & ANET_SVC_EXT_LOCAL))
		return -DROP_NO_SERVICE_BACKEND;
	if (fe.count == 0)
		return reject(skb, p);
	struct lb4_target be = {};
	if (!pick_backend(&fe, p, &be, now))
		return TC_ACT_OK; /* the frontend is being deleted right now */
	__u32 id = be.backend_id;
	__be32 baddr = be.addr;
	__be16 bport = be.port;
	bool local = bpf_map_lookup_elem(&anet_ep_by_ip, &baddr) != NULL;
	if (!local && (fe.flags & ANET_SVC_EXT_LOCAL))
		return -DROP_NO_SERVICE_BACKEND; /* only local endpoints serve it */

	struct ct4_entry orig = {
		.addr = baddr, .port = bport, .rev_nat = fe.rev_nat, .backend_id = id,
	};
	struct ct4_entry rev = {
		.addr = p->daddr, .port = p->dport, .flags = CT_F_REPLY,
		.rev_nat = fe.rev_nat, .backend_id = id,
	};
	rev.expires = now + ct_lifetime(p->proto, rev.flags);
	if (local) {
		struct ct4_key rk = {
			.saddr = baddr, .daddr = p->saddr, .sport = bport, .dport = p->sport,
			.proto = p->proto,
		};
		if (bpf_map_update_elem(&anet_ct4, &rk, &rev, BPF_ANY) < 0)
			return -DROP_CT_FULL;
	} else {
		struct node_config *cfg = node_config();
		if (!cfg)
			return -DROP_NO_SNAT_PORT;
		rev.flags |= CT_F_SNAT;
		rev.addr2 = p->saddr;
		rev.port2 = p->sport;
		__be16 sport = 0;
		int err = snat_claim(cfg, &be, p, &rev, &sport, now);
		if (err < 0)
			return err;
		orig.flags |= CT_F_SNAT;
		orig.addr2 = cfg->addr;
		orig.port2 = sport;
	}
	if (!p->syn_only)
		orig.flags |= CT_F_ESTABLISHED;
	orig.expires = now + ct_lifetime(p->proto, orig.flags);
	struct ct4_key ok = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto,
	};
	if (bpf_map_update_elem(&anet_ct4, &ok, &orig, BPF_ANY) < 0)
		return -DROP_CT_FULL;
	return forward(skb, p, &orig);
}

/* backend_gone says whether a UDP flow's backend left its Service: the
 * flow then starts over with a live one, so that clients move on. TCP
 * connections keep their backend until they end (a terminating endpoint
 * finishes what it serves). */
static __always_inline bool backend_gone(const struct ct4_entry *e, __u8 proto)
{
	struct lb4_target t;

	if (proto != IPPROTO_UDP)
		return false;
	/* Backend IDs are reused: the ID must still name the same address. */
	return !lb4_read_backend(e->backend_id, &t) || t.addr != e->addr || t.port != e->port;
}


/* tunnel_decap takes a Geneve packet to this node: it returns 0 for any
 * other packet (left untouched, for the NodePort path and the host
 * stack), TC_ACT_REDIRECT once the inner packet is on its way to its
 * endpoint, or a negative reason. A drop that belongs to the destination
 * endpoint (its ingress policy) sets *acct_if to it. */
static __always_inline int tunnel_decap(struct __sk_buff *skb, __u32 *acct_if)
{
	/* Outer IPv4 (options allowed), UDP, Geneve without options. */
	const __u32 want = ETH_HLEN + 60 + sizeof(struct udphdr) + sizeof(struct genevehdr);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (data + want > data_end) {
		__u32 n = skb->len < want ? skb->len : want;
		if (bpf_skb_pull_data(skb, n) < 0)
			return 0;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	struct iphdr *ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end || ip4->version != 4 || ip4->ihl < 5 || ip4->protocol != IPPROTO_UDP)
		return 0;
	/* A fragment: the tunnel sets DF and never sends one. */
	if (ip4->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return 0;
	struct node_config *cfg = node_config();
	if (!cfg || ip4->daddr != cfg->addr)
		return 0;
	__u32 hdrlen = ip4->ihl * 4;
	struct udphdr *uh = (void *)ip4 + hdrlen;
	if ((void *)(uh + 1) > data_end || uh->dest != bpf_htons(GENEVE_PORT))
		return 0;

	/* Ours from here: whatever is wrong is dropped. */
	__u32 totlen = bpf_ntohs(ip4->tot_len);
	__u32 udplen = bpf_ntohs(uh->len);
	if (ETH_HLEN + totlen > skb->len || hdrlen + udplen > totlen || udplen < sizeof(*uh) + sizeof(struct genevehdr))
		return -DROP_TUNNEL_TRUNCATED;
	struct genevehdr *gh = (void *)(uh + 1);
	if ((void *)(gh + 1) > data_end)
		return -DROP_TUNNEL_TRUNCATED;
	if (gh->ver_optlen >> 6)
		return -DROP_TUNNEL_BAD_VERSION;
	/* anet sends no options; it skips those of other senders unless
	 * they are critical (RFC 8926 3.5: a receiver drops what it cannot
	 * process), and takes no OAM (control) frames as data. */
	__u32 optlen = (gh->ver_optlen & 0x3f) * 4;
	if (gh->flags & (GENEVE_F_OAM | GENEVE_F_CRITICAL))
		return -DROP_TUNNEL_BAD_OPTIONS;
	if (sizeof(*uh) + sizeof(*gh) + optlen > udplen)
		return -DROP_TUNNEL_BAD_OPTIONS;
	if (gh->proto != bpf_htons(GENEVE_PROTO_ETH))
		return -DROP_TUNNEL_BAD_PROTOCOL;
	__u32 inner = sizeof(*uh) + sizeof(*gh) + optlen; /* from the UDP header */
	if (udplen < inner + ETH_HLEN + sizeof(struct iphdr))
		return -DROP_TUNNEL_TRUNCATED;
	__u32 vni = (__u32)gh->vni[0] << 16 | (__u32)gh->vni[1] << 8 | gh->vni[2];
	__be32 outer_src = ip4->saddr;
	__u8 outer_ecn = ip4->tos & IP_ECN_MASK;

	/* The inner Ethernet type and IPv4 source, wherever they lie. */
	__u32 ioff = ETH_HLEN + hdrlen + inner;
	__be16 itype;
	__be32 isrc;
	if (bpf_skb_load_bytes(skb, ioff + 12, &itype, sizeof(itype)) < 0 ||
	    bpf_skb_load_bytes(skb, ioff + ETH_HLEN + offsetof(struct iphdr, saddr), &isrc, sizeof(isrc)) < 0)
		return -DROP_TUNNEL_TRUNCATED;
	if (itype != bpf_htons(ETH_P_IP))
		return -DROP_TUNNEL_BAD_PROTOCOL;
	/* The inner source must be of the node that sent it: a pod of its
	 * pod CIDR, or its own address. The VNI is trusted as far as that. */
	if (isrc != outer_src) {
		struct tunnel_peer *peer = tunnel_lookup(isrc);
		if (!peer || peer->node != outer_src)
			return -DROP_TUNNEL_BAD_SOURCE;
	}

	/* Strip outer IPv4, UDP, Geneve and the inner Ethernet header: the
	 * outer Ethernet header (type IPv4) is left in front of the inner
	 * IPv4 header, and gets the endpoint's MACs on delivery. */
	if (bpf_skb_adjust_room(skb, -(__s32)(hdrlen + inner + ETH_HLEN), BPF_ADJ_ROOM_MAC, 0) < 0)
		return -DROP_TUNNEL_TRUNCATED;

	int ret = ipv4_pull(skb, &eth, &ip4, &hdrlen);
	if (ret < 0)
		return ret;
	/* RFC 6040 (normal mode): congestion the underlay marked on the
	 * outer header reaches the inner packet of an ECN-capable flow. (A
	 * not-ECT inner packet under CE, which RFC 6040 drops, is delivered
	 * unmarked: anet never sends that combination.) */
	if (outer_ecn == IP_ECN_CE && (ip4->tos & IP_ECN_MASK) && (ip4->tos & IP_ECN_MASK) != IP_ECN_CE)
		ip_set_tos(ip4, ip4->tos | IP_ECN_CE);
	__be32 daddr = ip4->daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&anet_ep_by_ip, &daddr);
	if (!dst)
		return -DROP_TUNNEL_NO_ENDPOINT;
	ret = policy_to_pod(skb, ip4, hdrlen, dst->ifindex, vni);
	if (ret < 0) {
		if (ret == -DROP_POLICY_INGRESS)
			*acct_if = dst->ifindex;
		return ret;
	}
	return deliver_local(skb, eth, ip4, dst);
}

static __always_inline int from_netdev(struct __sk_buff *skb, bool *rejected, __u32 *acct_if)
{
	struct pkt p;
	int ret;

	if (ANET_ROUTING_MODE == ANET_ROUTING_TUNNEL) {
		ret = tunnel_decap(skb, acct_if);
		if (ret)
			return ret;
	}
	ret = parse(skb, &p);

	if (ret <= 0)
		return ret == 0 ? TC_ACT_OK : ret;
	__u64 now = bpf_ktime_get_ns();
	struct ct4_key key = {
		.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport,
		.proto = p.proto,
	};
	struct ct4_entry *e = ct_lookup(&key, now);
	if (e && (e->flags & CT_F_REPLY)) {
		/* A reply from a backend on another node to our SNAT port. */
		if (!(e->flags & CT_F_SNAT))
			return TC_ACT_OK;
		__be32 faddr = e->addr, caddr = e->addr2;
		__be16 fport = e->port, cport = e->port2;
		ct_touch(e, p.proto, p.syn_only, p.closing, now);
		ret = set_endpoint(skb, &p, true, faddr, fport);
		if (!ret)
			ret = set_endpoint(skb, &p, false, caddr, cport);
		return ret ? ret : route(skb, &p);
	}
	if (e && backend_gone(e, p.proto)) {
		bpf_map_delete_elem(&anet_ct4, &key);
		e = NULL;
	}
	if (!e) {
		ret = new_conn(skb, &p, now);
		*rejected = p.rejected;
		return ret;
	}

	/* A later packet of a translated connection: as its first went. */
	ct_touch(e, p.proto, p.syn_only, p.closing, now);
	struct ct4_entry orig = *e;
	return forward(skb, &p, &orig);
}

static __always_inline int to_netdev(struct __sk_buff *skb)
{
	struct pkt p;
	int ret = parse(skb, &p);

	if (ret <= 0)
		return ret == 0 ? TC_ACT_OK : ret;
	__u64 now = bpf_ktime_get_ns();
	struct ct4_key key = {
		.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport,
		.proto = p.proto,
	};
	struct ct4_entry *e = ct_lookup(&key, now);
	/* A local backend's reply to an outside client: from the frontend. */
	if (!e || !(e->flags & CT_F_REPLY) || (e->flags & CT_F_SNAT))
		return TC_ACT_OK;
	__be32 faddr = e->addr;
	__be16 fport = e->port;
	ct_touch(e, p.proto, p.syn_only, p.closing, now);
	ret = set_endpoint(skb, &p, true, faddr, fport);
	return ret ? ret : TC_ACT_OK;
}

__section("tc")
int anet_from_netdev(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	bool rejected = false;
	__u32 acct_if = ANET_IFINDEX_NODE;
	int ret = from_netdev(skb, &rejected, &acct_if);

	if (ret < 0) {
		account(acct_if, DIR_INGRESS, (__u8)-ret, len);
		return TC_ACT_SHOT;
	}
	if (rejected) /* answered with a reset or an ICMP error */
		account(ANET_IFINDEX_NODE, DIR_INGRESS, DROP_NO_SERVICE_BACKEND, len);
	return ret;
}

__section("tc")
int anet_to_netdev(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	int ret = to_netdev(skb);

	if (ret < 0) {
		account(ANET_IFINDEX_NODE, DIR_EGRESS, (__u8)-ret, len);
		return TC_ACT_SHOT;
	}
	return ret;
}
