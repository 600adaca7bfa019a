/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types and maps shared by every anet eBPF program. Go sees these structs
 * only through bpf2go-generated types (see ../gen.go). */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __section
#define __section(x) __attribute__((section(x), used))
#endif

/* Why a packet was not forwarded. 0 is not a drop: it counts packets that
 * went on. The Go side names each value for users (datapath/reason.go); keep
 * both in step, and only append. */
enum anet_reason {
	REASON_FORWARDED = 0,
	DROP_UNKNOWN_ENDPOINT = 1,   /* device carries our program but is not a registered endpoint */
	DROP_MALFORMED_L2 = 2,       /* shorter than an Ethernet header */
	DROP_MALFORMED_IP = 3,       /* truncated IPv4 header, bad version, IHL or total length */
	DROP_UNSUPPORTED_L3 = 4,     /* neither IPv4 nor ARP */
	DROP_INVALID_SOURCE = 5,     /* source address is not the endpoint's own (spoofing) */
	DROP_MALFORMED_ARP = 6,      /* truncated or not an Ethernet/IPv4 ARP packet */
	DROP_TTL_EXCEEDED = 7,       /* would be forwarded with TTL 0 */
	DROP_REDIRECT_FAILED = 8,    /* the kernel refused the redirect */
	DROP_CSUM_FAILED = 9,       /* the kernel refused a checksum update */
	DROP_NO_SERVICE_BACKEND = 10, /* a frontend with no backend that may serve this client */
	DROP_NO_SNAT_PORT = 11,     /* no free SNAT port (or no node address) for a remote backend */
	DROP_FIB_FAILED = 12,       /* no route for a translated packet */
	DROP_MALFORMED_L4 = 13,     /* truncated TCP, UDP or SCTP header */
	DROP_CT_FULL = 14,          /* the conntrack table refused an entry */
	DROP_POLICY_EGRESS = 15,    /* a new connection the sending pod's egress policy does not allow */
	DROP_POLICY_INGRESS = 16,   /* a new connection the receiving pod's ingress policy does not allow */
	DROP_TUNNEL_TRUNCATED = 17, /* Geneve to this node shorter than its headers or inner frame */
	DROP_TUNNEL_BAD_VERSION = 18, /* Geneve version other than 0 */
	DROP_TUNNEL_BAD_OPTIONS = 19, /* Geneve options beyond the packet, critical options, or OAM */
	DROP_TUNNEL_BAD_PROTOCOL = 20, /* Geneve payload other than Ethernet (0x6558) with IPv4 */
	DROP_TUNNEL_BAD_SOURCE = 21, /* inner source not a pod (nor the address) of the node that sent it */
	DROP_TUNNEL_NO_ENDPOINT = 22, /* decapsulated packet to no endpoint of this node */
	DROP_TUNNEL_ENCAP_FAILED = 23, /* no underlay configured, or the kernel refused the room */
	__REASON_MAX,
};

/* Direction, seen from the endpoint (the pod). */
enum anet_dir {
	DIR_EGRESS = 0,  /* sent by the pod */
	DIR_INGRESS = 1, /* delivered to the pod */
};

/* An endpoint: a pod interface on this node. Keyed twice: by the pod's IPv4
 * address (to deliver to it) and by the ifindex of its host-side veth (to
 * know who sent a packet). */
struct endpoint_info {
	__u32 ip;          /* network byte order */
	__u32 ifindex;     /* host-side veth */
	__u8 pod_mac[6];
	__u8 host_mac[6];
	__u32 flags;       /* reserved */
	__u32 identity;    /* security identity; 0 until policy lands */
#ifdef ANET_TEST_MAP_VARIANT
	/* Test-only layout change (bpf/gen.go builds it into a separate object
	 * behind the anet_mapvariant build tag): proves that anetd migrates
	 * pinned maps whose value grew, and back. Never in a production build. */
	__u32 variant_pad;
#endif
};

/* Per-endpoint traffic counters, per CPU. Only registered endpoints get
 * counters of their own (keyed by their host-side ifindex); packets on a
 * device that carries our program but is no endpoint (one being deleted, a
 * leftover) are counted under ifindex 0, ANET_IFINDEX_NODE, so that the map
 * never grows per unknown device and nothing re-creates the counters of a
 * deleted endpoint. */
#define ANET_IFINDEX_NODE 0

struct metrics_key {
	__u32 ifindex;
	__u8 dir;
	__u8 reason;
	__u16 pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
#ifdef ANET_TEST_MAP_VARIANT
	__u64 variant_extra; /* test-only, see endpoint_info */
#endif
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_ep_by_ip __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_ep_by_if __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_metrics __section(".maps");

static __always_inline void account(__u32 ifindex, __u8 dir, __u8 reason, __u32 len)
{
	struct metrics_key key = { .ifindex = ifindex, .dir = dir, .reason = reason };
	struct metrics_value *v = bpf_map_lookup_elem(&anet_metrics, &key);

	if (v) {
		v->packets++;
		v->bytes += len;
		return;
	}
	struct metrics_value init = { .packets = 1, .bytes = len };
	if (bpf_map_update_elem(&anet_metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	/* Another CPU created the entry first; our slot of it is ours alone. */
	v = bpf_map_lookup_elem(&anet_metrics, &key);
	if (v) {
		v->packets++;
		v->bytes += len;
	}
}
