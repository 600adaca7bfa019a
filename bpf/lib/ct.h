/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for the per-packet service translation (NodePort,
 * ExternalIP and LoadBalancer traffic on the underlay device).
 *
 * A translated connection has two entries in anet_ct4, one per direction,
 * each keyed by the tuple as a packet of that direction carries it on the
 * wire of this node:
 *
 *   original  client:cport -> frontend:fport   says where to send it
 *             (backend, and the SNAT address and port when the backend is
 *             on another node);
 *   reply     backend:bport -> client:cport    (no SNAT) or
 *             backend:bport -> node:sport      (SNAT) says how to undo it.
 *
 * Entries expire (expires is on bpf_ktime_get_ns' clock): a hit refreshes
 * them; anetd's collector deletes expired ones and those of backends that
 * are gone. The map is an LRU, so a full table evicts the oldest instead
 * of refusing new connections. */
#pragma once

#include "common.h"

#include <linux/in.h>
#include <stdbool.h>

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

#define CT_F_REPLY (1 << 0)  /* the entry of the reply direction */
#define CT_F_SNAT (1 << 1)   /* the source was translated to the node's address */
#define CT_F_CLOSING (1 << 2) /* a FIN or RST was seen: short lifetime */
#define CT_F_ESTABLISHED (1 << 3) /* a packet other than a bare TCP SYN went this way */

struct ct4_entry {
	__u64 expires;     /* ns, bpf_ktime_get_ns */
	/* original: the backend. reply: the frontend (new source). */
	__be32 addr;
	__be16 port;
	__u16 flags;
	/* original: the SNAT address and port (CT_F_SNAT). reply: the client
	 * (new destination, when CT_F_SNAT). */
	__be32 addr2;
	__be16 port2;
	__u16 pad;
	__u32 rev_nat;     /* the frontend's reverse-NAT index */
	__u32 backend_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_ct4 __section(".maps");

/* Lifetimes, as Cilium's defaults: long for TCP connections, one minute
 * for UDP flows and for TCP connections that never got a reply, a few
 * seconds after a FIN or RST. */
#define CT_LIFETIME_TCP (6ULL * 3600 * 1000000000ULL)
#define CT_LIFETIME_SYN (60ULL * 1000000000ULL)
#define CT_LIFETIME_UDP (60ULL * 1000000000ULL)
#define CT_LIFETIME_CLOSE (10ULL * 1000000000ULL)

static __always_inline __u64 ct_lifetime(__u8 proto, __u16 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_UDP;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSE;
	if (!(flags & CT_F_ESTABLISHED))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

/* ct_lookup returns the live entry of key, or NULL (absent or expired). */
static __always_inline struct ct4_entry *ct_lookup(const struct ct4_key *key, __u64 now)
{
	struct ct4_entry *e = bpf_map_lookup_elem(&anet_ct4, key);

	if (!e || e->expires < now)
		return NULL;
	return e;
}

/* ct_touch records a packet of e's direction: established by anything but
 * a bare SYN, closing by a FIN or RST, and the lifetime that follows. */
static __always_inline void ct_touch(struct ct4_entry *e, __u8 proto, bool syn_only, bool closing, __u64 now)
{
	__u16 flags = e->flags;

	if (!syn_only)
		flags |= CT_F_ESTABLISHED;
	if (closing)
		flags |= CT_F_CLOSING;
	__u64 exp = now + ct_lifetime(proto, flags);
	/* Writing every packet would bounce the cache line between CPUs;
	 * a second's precision is plenty, unless the state changed. */
	if (flags != e->flags || exp > e->expires + 1000000000ULL) {
		e->flags = flags;
		e->expires = exp;
	}
}
