/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The node's own configuration, written by anetd (datapath.SetNodeConfig,
 * SetUnderlay): one entry, read by the underlay programs (SNAT, tunnel
 * decapsulation) and, in tunnel mode, by the pod programs (encapsulation). */
#pragma once

#include "common.h"

struct node_config {
	__be32 addr;     /* the node's address on the underlay (SNAT source, tunnel endpoint) */
	__u16 snat_min;  /* SNAT source ports, host byte order, inclusive */
	__u16 snat_max;
	__u32 flags;     /* reserved */
	__u32 tunnel_ifindex; /* the underlay device encapsulated packets leave by; 0: none */
	__u8 tunnel_mac[6];   /* its MAC: the outer source */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} anet_node_config __section(".maps");

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&anet_node_config, &zero);
}
