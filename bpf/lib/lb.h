/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing: the maps that anetd's service reconciler writes
 * (through datapath.ServiceMaps, the contract in daemon/service) and the
 * lookups every program that translates a service address shares. Cilium's
 * lb4 maps, simplified.
 *
 * A frontend (address, port, protocol, scope) is one master entry (slot 0)
 * and one entry per backend (slots 1..total) in anet_lb4_services. The
 * first `count` slots are the active backends, which take new connections;
 * the slots after them hold the inactive ones (terminating), kept so that
 * lookups by ID still find them. Backends themselves are in
 * anet_lb4_backends by ID, shared by every frontend that uses them.
 *
 * Writers keep a live frontend serving at every instant: backends and slots
 * are written before the master that counts them, and slots and backends
 * that left are removed only after the master stopped counting them.
 *
 * Map sizes here are defaults: the loader sets them from anetd's flags
 * before load (datapath.Options). */
#pragma once

#include "common.h"

#define ANET_LB_MASTER_SLOT 0

/* Scopes of a frontend's entries (service.Scope): the external entry is what
 * every client sees unless the master has ANET_SVC_TWO_SCOPES, in which case
 * in-cluster clients (all of the socket hooks' clients) use the internal one. */
#define ANET_SCOPE_EXTERNAL 0
#define ANET_SCOPE_INTERNAL 1

/* Frontend flags (service.Flags). */
#define ANET_SVC_NODEPORT (1U << 0)
#define ANET_SVC_EXTERNAL (1U << 1)
#define ANET_SVC_EXT_LOCAL (1U << 2)
#define ANET_SVC_INT_LOCAL (1U << 3)
#define ANET_SVC_TWO_SCOPES (1U << 4)

/* Backend states (service.BackendState). */
#define ANET_BACKEND_READY 1
#define ANET_BACKEND_SERVING 2
#define ANET_BACKEND_TERMINATING 3

/* Who a session-affinity entry is for. */
#define ANET_AFFINITY_NETNS 0 /* a network namespace cookie: one pod */
#define ANET_AFFINITY_ADDR 1  /* a client IPv4 address (per-packet translation) */

struct lb4_key {
	__be32 addr;
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 scope;  /* ANET_SCOPE_* */
	__u16 slot;  /* 0: the master entry; 1..total: a backend */
	__u16 pad;
};

struct lb4_service {
	__u32 backend_id;       /* slot > 0: the backend in this slot */
	__u32 count;            /* master: active backends, slots 1..count; 0 refuses */
	__u32 total;            /* master: slots in use, active and inactive */
	__u32 rev_nat;          /* master: index in anet_lb4_revnat, never 0 */
	__u32 affinity_timeout; /* master: session affinity in seconds, 0 = none */
	__u32 flags;            /* master: ANET_SVC_* */
};

struct lb4_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 state; /* ANET_BACKEND_* */
};

/* A frontend's address by its reverse-NAT index. */
struct lb4_revnat {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct lb4_affinity_key {
	__u64 client;    /* netns cookie or IPv4 address, by kind */
	__u32 rev_nat;
	__u8 scope;
	__u8 kind;       /* ANET_AFFINITY_* */
	__u16 pad;
};

struct lb4_affinity {
	__u64 last_used_ns; /* bpf_ktime_get_ns */
	__u32 backend_id;
	__u32 pad;
};

/* An active backend of a frontend with session affinity: an affinity entry
 * is followed only while this says its backend may take new connections for
 * that frontend (backend IDs are reused; one in the backends map may belong
 * to another frontend by now, or be terminating). */
struct lb4_affinity_match {
	__u32 backend_id;
	__u32 rev_nat;
	__u8 scope;
	__u8 pad[3];
};

/* A socket the hooks translated, and the backend it was sent to: recvmsg4
 * and getpeername4 show the frontend instead. */
struct sock4_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__be32 addr;  /* backend */
	__be16 port;
	__u16 pad;
};

struct sock4_revnat {
	__be32 addr; /* frontend */
	__be16 port;
	__u16 pad;
	__u32 rev_nat;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 327680);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_lb4_services __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_lb4_backends __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct lb4_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_lb4_revnat __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_lb4_affinity __section(".maps");

/* Map names must differ in their first 15 bytes (the kernel's object names,
 * and the keys of the layout fingerprints): hence "aff_match". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb4_affinity_match);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_lb4_aff_match __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sock4_revnat_key);
	__type(value, struct sock4_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_sock4_revnat __section(".maps");

/* The master entry of a frontend as a client inside the cluster sees it:
 * the internal-scope entry when the frontend has two. NULL when addr:port
 * is no frontend. */
static __always_inline struct lb4_service *lb4_lookup_service(struct lb4_key *key)
{
	key->scope = ANET_SCOPE_EXTERNAL;
	key->slot = ANET_LB_MASTER_SLOT;
	struct lb4_service *svc = bpf_map_lookup_elem(&anet_lb4_services, key);

	if (svc && (svc->flags & ANET_SVC_TWO_SCOPES)) {
		key->scope = ANET_SCOPE_INTERNAL;
		struct lb4_service *in = bpf_map_lookup_elem(&anet_lb4_services, key);
		if (in)
			return in;
		/* Not written yet (the reconciler writes the internal entry
		 * first, so only while a frontend is being deleted): the
		 * external entry is all there is. */
		key->scope = ANET_SCOPE_EXTERNAL;
	}
	return svc;
}

/* The backend in an active slot picked at random. A slot removed between
 * the master's lookup and this one (the set shrank meanwhile) falls back to
 * the first, which every frontend with count > 0 has. */
static __always_inline __u32 lb4_select_backend(struct lb4_key *key, const struct lb4_service *svc)
{
	key->slot = (bpf_get_prandom_u32() % svc->count) + 1;
	struct lb4_service *slot = bpf_map_lookup_elem(&anet_lb4_services, key);

	if (!slot) {
		key->slot = 1;
		slot = bpf_map_lookup_elem(&anet_lb4_services, key);
	}
	return slot ? slot->backend_id : 0;
}

/* The backend this client used last for the frontend, while its affinity
 * has not lapsed and the backend is still active for the frontend; 0 if
 * none. */
static __always_inline __u32 lb4_affinity_backend(const struct lb4_affinity_key *akey,
						  const struct lb4_service *svc, __u64 now)
{
	struct lb4_affinity *a = bpf_map_lookup_elem(&anet_lb4_affinity, akey);

	if (!a)
		return 0;
	if (now - a->last_used_ns > (__u64)svc->affinity_timeout * 1000000000ULL)
		return 0;
	struct lb4_affinity_match m = { .backend_id = a->backend_id, .rev_nat = akey->rev_nat, .scope = akey->scope };
	if (!bpf_map_lookup_elem(&anet_lb4_aff_match, &m))
		return 0;
	return a->backend_id;
}

static __always_inline void lb4_affinity_update(const struct lb4_affinity_key *akey, __u32 backend_id, __u64 now)
{
	struct lb4_affinity a = { .last_used_ns = now, .backend_id = backend_id };

	bpf_map_update_elem(&anet_lb4_affinity, akey, &a, BPF_ANY);
}
