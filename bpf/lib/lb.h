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
 * lookups by ID still find them. A slot carries its backend's ID and
 * address; backends are also in anet_lb4_backends by ID, shared by every
 * frontend that uses them (session affinity finds its backend there). A
 * frontend's active backends with session affinity are listed in
 * anet_lb4_aff_match, which an affinity entry must match to be followed.
 *
 * Writers keep a live frontend serving at every instant: backends and slots
 * are written before the master that counts them, and slots and backends
 * that left are removed only after the master stopped counting them.
 *
 * Map sizes here are defaults: the loader sets them from anetd's flags
 * before load (datapath.Options). */
#pragma once

#include "common.h"

#include <stdbool.h>

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
#define ANET_AFFINITY_SOCKET 2 /* a socket cookie: an unconnected UDP socket's datagrams to a frontend without affinity stay on one backend, for the socket's life */

struct lb4_key {
	__be32 addr;
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 scope;  /* ANET_SCOPE_* */
	__u16 slot;  /* 0: the master entry; 1..total: a backend */
	__u16 pad;
};

/* A master or a slot entry. Both are updated in place under the entry's
 * lock (BPF_F_LOCK from user space, bpf_spin_lock here): an update of a hash
 * map entry without it frees the old element, which the map reuses at once
 * for another key while a program may still read it, and the programs read
 * every entry under its lock so that no update is seen half-made. A slot
 * carries its backend's address, so that one lookup finds where to go, and
 * its frontend's rev_nat, so that a slot removed and reused for another
 * entry while a program held it is told apart. */
struct lb4_service {
	struct bpf_spin_lock lock;
	__u32 count;            /* master: active backends, slots 1..count; 0 refuses */
	__u32 total;            /* master: slots in use, active and inactive */
	__u32 rev_nat;          /* the frontend's index in anet_lb4_revnat, never 0 */
	__u32 affinity_timeout; /* master: session affinity in seconds, 0 = none */
	__u32 flags;            /* master: ANET_SVC_* */
	__u32 backend_id;       /* slot: its backend; master: 0 */
	__be32 backend_addr;    /* slot */
	__be16 backend_port;    /* slot */
	__u16 pad;
};

/* A backend, under its lock as the services' entries; id is the key again,
 * for the same reason as a slot's rev_nat. */
struct lb4_backend {
	struct bpf_spin_lock lock;
	__u32 id;
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

/* A frontend's master entry, copied out of the map. */
struct lb4_frontend {
	__u32 count;
	__u32 rev_nat;
	__u32 affinity_timeout;
	__u32 flags;
};

/* Where a connection goes. */
struct lb4_target {
	__u32 backend_id;
	__be32 addr;
	__be16 port;
};

static __always_inline bool lb4_read_master(const struct lb4_key *key, struct lb4_frontend *fe)
{
	struct lb4_service *svc = bpf_map_lookup_elem(&anet_lb4_services, key);

	if (!svc)
		return false;
	__u32 backend_id;

	bpf_spin_lock(&svc->lock);
	fe->count = svc->count;
	fe->rev_nat = svc->rev_nat;
	fe->affinity_timeout = svc->affinity_timeout;
	fe->flags = svc->flags;
	backend_id = svc->backend_id;
	bpf_spin_unlock(&svc->lock);
	/* A master has no backend: otherwise this is a slot that took the
	 * place of a master deleted under us. */
	return backend_id == 0 && fe->rev_nat != 0;
}

/* The master entry of a frontend as a client inside the cluster sees it
 * (the internal-scope entry when the frontend has two), copied into fe;
 * false when addr:port is no frontend. key->scope says which entry it is. */
static __always_inline bool lb4_lookup_service(struct lb4_key *key, struct lb4_frontend *fe)
{
	key->scope = ANET_SCOPE_EXTERNAL;
	key->slot = ANET_LB_MASTER_SLOT;
	if (!lb4_read_master(key, fe))
		return false;
	if (fe->flags & ANET_SVC_TWO_SCOPES) {
		struct lb4_frontend in;

		key->scope = ANET_SCOPE_INTERNAL;
		if (lb4_read_master(key, &in)) {
			*fe = in;
			return true;
		}
		/* Not written yet (the reconciler writes the internal entry
		 * first, so only while a frontend is being deleted): the
		 * external entry is all there is. */
		key->scope = ANET_SCOPE_EXTERNAL;
	}
	return true;
}

static __always_inline bool lb4_read_slot(struct lb4_key *key, __u16 slot, __u32 rev_nat, struct lb4_target *t)
{
	key->slot = slot;
	struct lb4_service *s = bpf_map_lookup_elem(&anet_lb4_services, key);
	__u32 owner;

	if (!s)
		return false;
	bpf_spin_lock(&s->lock);
	owner = s->rev_nat;
	t->backend_id = s->backend_id;
	t->addr = s->backend_addr;
	t->port = s->backend_port;
	bpf_spin_unlock(&s->lock);
	return owner == rev_nat && t->backend_id != 0;
}

/* An active slot picked at random. A slot removed between the master's
 * lookup and this one (the set shrank meanwhile) falls back to the first,
 * which every frontend with count > 0 has. */
static __always_inline bool lb4_select_backend(struct lb4_key *key, const struct lb4_frontend *fe, struct lb4_target *t)
{
	if (lb4_read_slot(key, (bpf_get_prandom_u32() % fe->count) + 1, fe->rev_nat, t))
		return true;
	return lb4_read_slot(key, 1, fe->rev_nat, t);
}

/* The backend by ID, with its address in t; false when it is gone. */
static __always_inline bool lb4_read_backend(__u32 id, struct lb4_target *t)
{
	struct lb4_backend *b = bpf_map_lookup_elem(&anet_lb4_backends, &id);
	__u32 got;

	if (!b)
		return false;
	bpf_spin_lock(&b->lock);
	got = b->id;
	t->addr = b->addr;
	t->port = b->port;
	bpf_spin_unlock(&b->lock);
	t->backend_id = id;
	return got == id;
}

/* The backend this client used last for the frontend, while its affinity
 * has not lapsed and the backend is still active for the frontend. */
static __always_inline bool lb4_affinity_backend(const struct lb4_affinity_key *akey, const struct lb4_frontend *fe,
						 __u64 now, struct lb4_target *t)
{
	struct lb4_affinity *a = bpf_map_lookup_elem(&anet_lb4_affinity, akey);

	if (!a)
		return false;
	__u64 last = a->last_used_ns;
	__u32 id = a->backend_id;
	/* A socket's own entry has no timeout: the socket is the session. */
	if (akey->kind != ANET_AFFINITY_SOCKET && now - last > (__u64)fe->affinity_timeout * 1000000000ULL)
		return false;
	struct lb4_affinity_match m = { .backend_id = id, .rev_nat = akey->rev_nat, .scope = akey->scope };
	if (!bpf_map_lookup_elem(&anet_lb4_aff_match, &m))
		return false;
	return lb4_read_backend(id, t);
}

static __always_inline void lb4_affinity_update(const struct lb4_affinity_key *akey, __u32 backend_id, __u64 now)
{
	struct lb4_affinity a = { .last_used_ns = now, .backend_id = backend_id };

	bpf_map_update_elem(&anet_lb4_affinity, akey, &a, BPF_ANY);
}
