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
#include "ct_state.h"

#include <linux/in.h>
#include <stdbool.h>

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

/* ct_lookup returns the live entry of key, or NULL (absent or expired). */
static __always_inline struct ct4_entry *ct_lookup(const struct ct4_key *key, __u64 now)
{
	struct ct4_entry *e = bpf_map_lookup_elem(&anet_ct4, key);

	if (!e || e->expires < now)
		return NULL;
	return e;
}

/* ct_touch records a packet of e's direction (see ct_state_touch). */
static __always_inline void ct_touch(struct ct4_entry *e, __u8 proto, bool syn_only, bool closing, __u64 now)
{
	ct_state_touch(&e->expires, &e->flags, proto, syn_only, closing, now);
}
