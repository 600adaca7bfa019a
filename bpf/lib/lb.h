/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* PROVISIONAL: the service maps as specified for the socket-LB work; the
 * real header comes with it. */
#pragma once

#include "common.h"

struct lb4_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 scope;
	__u16 slot;
	__u16 pad;
};

struct lb4_service {
	__u32 backend_id;
	__u32 count;
	__u32 rev_nat;
	__u32 affinity_timeout;
	__u32 flags;
};

struct lb4_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 state;
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

#define SVC_F_NODEPORT (1 << 0)
#define SVC_F_EXTERNAL (1 << 1)
#define SVC_F_EXT_LOCAL (1 << 2)
#define SVC_F_INT_LOCAL (1 << 3)
#define SVC_F_TWO_SCOPES (1 << 4)

#define LB_SCOPE_EXTERNAL 0
#define LB_SCOPE_INTERNAL 1
