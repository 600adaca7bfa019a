/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NetworkPolicy enforcement on the pod devices, by security identity.
 *
 * Maps (pinned by name, written by anetd's datapath.SetEndpointPolicy and
 * SetIPCache; Go sees the structs through bpf2go):
 *
 *   anet_ipcache4  LPM trie, IPv4 prefix -> identity. Every pod address of
 *                  the cluster, every node address (the node's own as
 *                  identity 1, host), every ipBlock CIDR and except CIDR.
 *                  No entry: world (2).
 *   anet_policy    LPM trie, the allow rules of every endpoint, keyed by
 *                  {endpoint ifindex, peer identity, direction, protocol,
 *                  destination port}, the port's prefix as the trailing
 *                  bits: a rule for a port range is a few prefix blocks,
 *                  one for "any port of TCP" ends after the protocol, one
 *                  for "any protocol" after the direction. Identity 0 is
 *                  the wildcard peer. A packet needs two lookups whatever
 *                  the number of rules: its exact identity, then 0.
 *   anet_pol_ep    hash, endpoint ifindex -> which directions are isolated
 *                  (some NetworkPolicy selects the pod for them). No entry,
 *                  or the direction's bit clear: everything is allowed.
 *                  A map of its own, not a field of endpoint_info: the
 *                  endpoint manager rewrites endpoint_info (restore,
 *                  re-ADD) without knowing policy, and must not open an
 *                  isolated pod doing so.
 *   anet_pol_ct4   LRU hash, 5-tuple -> state: the connections that policy
 *                  allowed, one entry per direction (the original tuple,
 *                  and the reversed one with CT_F_REPLY), so that any
 *                  packet of either direction is one lookup. Every
 *                  connection to or from a pod is tracked, isolated or
 *                  not: a policy applied later refuses new connections
 *                  and leaves the established ones alone, in both
 *                  directions (Kubernetes leaves existing connections to
 *                  the implementation; this is Cilium's and Calico's
 *                  choice).
 *   anet_frag4     LRU hash, {saddr, daddr, IP id, proto} -> ports of the
 *                  first fragment, so that the later fragments of a
 *                  datagram (which carry no ports) are judged as their
 *                  first was. A later fragment whose first was not seen
 *                  here (reordered, or evicted) is judged with port 0:
 *                  only rules that allow any port (or any protocol) admit
 *                  it.
 *
 * Semantics (Kubernetes NetworkPolicy, see the policy contract): a packet
 * of no tracked connection is a new connection; it passes iff the
 * source endpoint's egress allows (destination identity, protocol,
 * destination port) when its egress is isolated, and the destination
 * endpoint's ingress allows (source identity, ...) when the destination is
 * an endpoint of this node whose ingress is isolated. The host (identity
 * 1) is always allowed in. ICMP and other port-less protocols match only
 * rules that allow any protocol (Proto 0): NetworkPolicy port rules name
 * TCP, UDP and SCTP only. An ICMP error (destination unreachable, time
 * exceeded, parameter problem) about a tracked connection passes as part
 * of it, so that path MTU discovery works for isolated pods; one about
 * no tracked connection is judged as any ICMP packet. */
#pragma once

#include "common.h"
#include "ct_state.h"

#include <linux/in.h>
#include <linux/ip.h>
#include <stdbool.h>

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* Reserved identities (the contract's numbering). */
#define ID_ANY 0   /* the wildcard peer of a rule; never a packet's */
#define ID_HOST 1  /* this node itself */
#define ID_WORLD 2 /* outside the cluster: no ipcache entry */

struct ipcache_key {
	__u32 prefixlen; /* 0..32 */
	__be32 addr;
};

struct ipcache_entry {
	__u32 identity;
	__u32 flags; /* reserved */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 131072);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_ipcache4 __section(".maps");

/* The bits of a policy key after prefixlen. The LPM trie matches bytes in
 * memory order, most significant bit first: the port is in network byte
 * order so that a port prefix is a range. ifindex and identity are always
 * matched in full (native order is fine). */
struct policy_key {
	__u32 prefixlen;
	__u32 ifindex;  /* the endpoint's host-side veth */
	__u32 identity; /* the peer's; 0 = any */
	__u8 dir;       /* enum anet_dir */
	__u8 proto;     /* 0 in a rule for any protocol */
	__be16 dport;   /* the destination port (the pod's for ingress, the peer's for egress) */
};

#define POL_PREFIX_ANY_PROTO (32 + 32 + 8) /* ifindex, identity, dir */
#define POL_PREFIX_ANY_PORT (POL_PREFIX_ANY_PROTO + 8)
#define POL_PREFIX_FULL (POL_PREFIX_ANY_PORT + 16)

struct policy_entry {
	/* Reserved for the logging issue: the model's handle on the rules
	 * that allow this entry. 0 for now. */
	__u32 cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_policy __section(".maps");

/* Bit (1 << dir) of flags: the direction is isolated. */
struct policy_ep {
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct policy_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_pol_ep __section(".maps");

struct pol_ct_entry {
	__u64 expires; /* ns, bpf_ktime_get_ns */
	__u16 flags;   /* CT_F_REPLY, CT_F_ESTABLISHED, CT_F_CLOSING */
	__u16 pad;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct4_key);
	__type(value, struct pol_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_pol_ct4 __section(".maps");

struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag4_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag4_key);
	__type(value, struct frag4_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_frag4 __section(".maps");

/* A packet as policy sees it. */
struct pol_pkt {
	struct ct4_key key; /* ports 0 for port-less protocols */
	bool syn_only;      /* TCP SYN without ACK */
	bool closing;       /* TCP FIN or RST */
	bool related;       /* an ICMP error: inner is the packet it is about */
	struct ct4_key inner;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* pol_parse_icmp_error reads the datagram an ICMP error quotes (its IPv4
 * header and first 8 bytes: the ports of TCP, UDP and SCTP) into
 * p->inner, as that datagram's own tuple: it went the other way, so its
 * connection's entry is the one of the quoted tuple. */
static __always_inline void pol_parse_icmp_error(struct __sk_buff *skb, __u32 off, struct pol_pkt *p)
{
	__u8 type;

	if (bpf_skb_load_bytes(skb, off, &type, 1) < 0)
		return;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED && type != ICMP_PARAMETERPROB)
		return;
	struct iphdr in;
	if (bpf_skb_load_bytes(skb, off + 8, &in, sizeof(in)) < 0 || in.version != 4 || in.ihl < 5)
		return;
	if (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP && in.protocol != IPPROTO_SCTP)
		return;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, off + 8 + in.ihl * 4, ports, sizeof(ports)) < 0)
		return;
	p->inner.saddr = in.saddr;
	p->inner.daddr = in.daddr;
	p->inner.sport = ports[0];
	p->inner.dport = ports[1];
	p->inner.proto = in.protocol;
	p->related = true;
}

#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff

/* pol_parse fills p from an IPv4 packet whose header (hdrlen bytes at
 * ETH_HLEN) the caller validated. The L4 header is read in place when it
 * is in the linear area, else copied with bpf_skb_load_bytes; neither
 * invalidates the caller's packet pointers (no pull). */
static __always_inline int pol_parse(struct __sk_buff *skb, const struct iphdr *ip4, __u32 hdrlen, struct pol_pkt *p)
{
	__u8 proto = ip4->protocol;
	__u16 frag = bpf_ntohs(ip4->frag_off);
	__u32 off = ETH_HLEN + hdrlen;

	__builtin_memset(p, 0, sizeof(*p));
	p->key.saddr = ip4->saddr;
	p->key.daddr = ip4->daddr;
	p->key.proto = proto;
	if (proto == IPPROTO_ICMP && !(frag & IP_OFFMASK)) {
		pol_parse_icmp_error(skb, off, p);
		return 0;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;

	struct frag4_key fk = { .saddr = ip4->saddr, .daddr = ip4->daddr, .id = ip4->id, .proto = proto };
	if (frag & IP_OFFMASK) {
		struct frag4_ports *fp = bpf_map_lookup_elem(&anet_frag4, &fk);
		if (fp) {
			p->key.sport = fp->sport;
			p->key.dport = fp->dport;
		}
		return 0;
	}
	/* Direct access when the header is in the linear area (the common
	 * case: cheaper than a helper call), else a copy. */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (proto == IPPROTO_TCP) {
		__u8 buf[20];
		__u8 *th = data + off;
		if ((void *)(th + 20) > data_end) {
			if (bpf_skb_load_bytes(skb, off, buf, sizeof(buf)) < 0)
				return -DROP_MALFORMED_L4;
			th = buf;
		}
		__builtin_memcpy(&p->key.sport, &th[0], 2);
		__builtin_memcpy(&p->key.dport, &th[2], 2);
		__u8 fl = th[13];
		p->syn_only = (fl & 0x12) == 0x02; /* SYN, no ACK */
		p->closing = fl & 0x05;            /* FIN or RST */
	} else {
		/* UDP's header is 8 bytes; SCTP's common header 12 (ports,
		 * verification tag, checksum). Both start with the ports. */
		__u32 need = proto == IPPROTO_UDP ? 8 : 12;
		__be16 buf[6];
		__be16 *h = data + off;
		if ((void *)h + need > data_end) {
			int err = proto == IPPROTO_UDP ? bpf_skb_load_bytes(skb, off, buf, 8)
						       : bpf_skb_load_bytes(skb, off, buf, 12);
			if (err < 0)
				return -DROP_MALFORMED_L4;
			h = buf;
		} else if ((void *)(h + 2) > data_end) {
			return -DROP_MALFORMED_L4; /* for the verifier: need >= 4 */
		}
		p->key.sport = h[0];
		p->key.dport = h[1];
	}
	if (frag & IP_MF) {
		struct frag4_ports fp = { .sport = p->key.sport, .dport = p->key.dport };
		bpf_map_update_elem(&anet_frag4, &fk, &fp, BPF_ANY);
	}
	return 0;
}

static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache_entry *e = bpf_map_lookup_elem(&anet_ipcache4, &k);

	return e ? e->identity : ID_WORLD;
}

static __always_inline bool pol_isolated(__u32 ifindex, __u8 dir)
{
	struct policy_ep *e = bpf_map_lookup_elem(&anet_pol_ep, &ifindex);

	return e && (e->flags & (1u << dir));
}

/* pol_rule_allows looks up the endpoint's rules: the peer's own identity,
 * then the wildcard. */
static __always_inline bool pol_rule_allows(__u32 ifindex, __u8 dir, __u32 identity, const struct pol_pkt *p)
{
	struct policy_key k = {
		.prefixlen = POL_PREFIX_FULL, .ifindex = ifindex, .identity = identity,
		.dir = dir, .proto = p->key.proto, .dport = p->key.dport,
	};

	if (bpf_map_lookup_elem(&anet_policy, &k))
		return true;
	k.identity = ID_ANY;
	return bpf_map_lookup_elem(&anet_policy, &k) != NULL;
}

/* pol_ingress_allows: a new connection into an isolated endpoint, from a
 * source of identity src_id as the packet carried it (a Geneve VNI), or,
 * for 0 (none carried) and 1 (a sender's own host, which is not this
 * node's), the ipcache's identity of its address. */
static __always_inline bool pol_ingress_allows(__u32 ifindex, const struct pol_pkt *p, __u32 src_id)
{
	__u32 id = src_id > ID_HOST ? src_id : ipcache_identity(p->key.saddr);

	return id == ID_HOST || pol_rule_allows(ifindex, DIR_INGRESS, id, p);
}

static __always_inline bool pol_egress_allows(__u32 ifindex, const struct pol_pkt *p)
{
	return pol_rule_allows(ifindex, DIR_EGRESS, ipcache_identity(p->key.daddr), p);
}

/* The kernel's tick as the loader measured it (datapath's jiffyClock):
 * the length of a jiffy in ns (the kernel's TICK_NSEC) and the offset
 * that puts jiffies * ANET_JIFFY_NS on CLOCK_MONOTONIC. 0: not measured,
 * pol_now calls bpf_ktime_get_coarse_ns (the verifier removes the branch
 * not taken). */
volatile const __u64 ANET_JIFFY_NS = 0;
volatile const __u64 ANET_JIFFY_BASE = 0;

/* pol_now is the conntrack's clock: CLOCK_MONOTONIC at the tick's
 * precision (a tick is plenty for lifetimes of seconds). Go reads the same
 * clock (Monotonic) to collect expired entries. From jiffies when the
 * loader measured the tick: the verifier inlines bpf_jiffies64 as a load
 * of the kernel's jiffies_64, where bpf_ktime_get_coarse_ns is a call,
 * and a call and its return cost 10-15 % of an established packet on
 * our machines (the kernel's return-thunk mitigations). Both clocks lag
 * CLOCK_MONOTONIC by less than a tick. */
static __always_inline __u64 pol_now(void)
{
	if (ANET_JIFFY_NS)
		return bpf_jiffies64() * ANET_JIFFY_NS - ANET_JIFFY_BASE;
	return bpf_ktime_get_coarse_ns();
}

/* pol_ct_hit records a packet of a tracked connection and says whether it
 * was one. A SYN on a closed connection's tuple starts a new one. */
static __always_inline bool pol_ct_hit(const struct pol_pkt *p, __u64 now)
{
	struct pol_ct_entry *e = bpf_map_lookup_elem(&anet_pol_ct4, &p->key);

	if (!e || e->expires < now)
		return false;
	if (p->syn_only && (e->flags & CT_F_CLOSING))
		return false;
	ct_state_touch(&e->expires, &e->flags, p->key.proto, p->syn_only, p->closing, now);
	return true;
}

/* pol_related says whether p is an ICMP error about a tracked
 * connection (a fragmentation-needed, a port unreachable): it passes
 * without an entry of its own. */
static __always_inline bool pol_related(const struct pol_pkt *p, __u64 now)
{
	if (!p->related)
		return false;
	struct pol_ct_entry *e = bpf_map_lookup_elem(&anet_pol_ct4, &p->inner);
	return e && e->expires >= now;
}

/* pol_ct_create tracks an allowed new connection, both directions. A full
 * table evicts its oldest entries (LRU); should the kernel refuse all the
 * same, the packet still goes (policy allowed it) and the next one is
 * judged again. */
static __always_inline void pol_ct_create(const struct pol_pkt *p, __u64 now)
{
	__u8 proto = p->key.proto;
	struct pol_ct_entry orig = {};
	struct pol_ct_entry rev = { .flags = CT_F_REPLY };
	struct ct4_key rk = {
		.saddr = p->key.daddr, .daddr = p->key.saddr,
		.sport = p->key.dport, .dport = p->key.sport, .proto = proto,
	};

	if (!p->syn_only)
		orig.flags |= CT_F_ESTABLISHED;
	if (p->closing)
		orig.flags |= CT_F_CLOSING;
	orig.expires = now + ct_lifetime(proto, orig.flags);
	rev.expires = now + ct_lifetime(proto, rev.flags);
	bpf_map_update_elem(&anet_pol_ct4, &rk, &rev, BPF_ANY);
	bpf_map_update_elem(&anet_pol_ct4, &p->key, &orig, BPF_ANY);
}

/* policy_from_pod judges a packet that the endpoint src_if sent, to dst
 * when the destination is an endpoint of this node (else NULL). It returns
 * 0 to let it go, -DROP_POLICY_EGRESS or -DROP_POLICY_INGRESS (the
 * destination's ingress refused it), or another negative drop reason. */
static __always_inline int policy_from_pod(struct __sk_buff *skb, const struct iphdr *ip4, __u32 hdrlen, __u32 src_if,
					   const struct endpoint_info *dst)
{
	struct pol_pkt p;
	int ret = pol_parse(skb, ip4, hdrlen, &p);

	if (ret < 0)
		return ret;
	__u64 now = pol_now();
	if (pol_ct_hit(&p, now) || pol_related(&p, now))
		return 0;
	if (pol_isolated(src_if, DIR_EGRESS) && !pol_egress_allows(src_if, &p))
		return -DROP_POLICY_EGRESS;
	if (dst && pol_isolated(dst->ifindex, DIR_INGRESS) && !pol_ingress_allows(dst->ifindex, &p, 0))
		return -DROP_POLICY_INGRESS;
	pol_ct_create(&p, now);
	return 0;
}

/* policy_to_pod judges a packet that the host stack delivers to the
 * endpoint ifindex (from another node, from the node itself, or from a pod
 * whose packet went through the host stack), or that the tunnel delivers:
 * the endpoint's ingress. src_id is the source's identity when the packet
 * carried it (the VNI), else 0: the ipcache's. */
static __always_inline int policy_to_pod(struct __sk_buff *skb, const struct iphdr *ip4, __u32 hdrlen, __u32 ifindex,
					 __u32 src_id)
{
	struct pol_pkt p;
	int ret = pol_parse(skb, ip4, hdrlen, &p);

	if (ret < 0)
		return ret;
	__u64 now = pol_now();
	if (pol_ct_hit(&p, now) || pol_related(&p, now))
		return 0;
	if (pol_isolated(ifindex, DIR_INGRESS) && !pol_ingress_allows(ifindex, &p, src_id))
		return -DROP_POLICY_INGRESS;
	pol_ct_create(&p, now);
	return 0;
}
