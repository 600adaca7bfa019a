/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the two conntrack tables share: the IPv4 5-tuple key, the state
 * flags and the lifetimes. anet_ct4 (ct.h) serves the per-packet service
 * translation on the underlay device; anet_pol_ct4 (policy.h) remembers
 * the connections that policy allowed on the pod devices. */
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

/* ct_state_touch records a packet of one direction in an entry's expiry
 * and flags: established by anything but a bare SYN, closing by a FIN or
 * RST, and the lifetime that follows. */
static __always_inline void ct_state_touch(__u64 *expires, __u16 *flags_p, __u8 proto, bool syn_only, bool closing,
					   __u64 now)
{
	__u16 flags = *flags_p;

	if (!syn_only)
		flags |= CT_F_ESTABLISHED;
	if (closing)
		flags |= CT_F_CLOSING;
	__u64 exp = now + ct_lifetime(proto, flags);
	/* Writing every packet would bounce the cache line between CPUs;
	 * a second's precision is plenty, unless the state changed. */
	if (flags != *flags_p || exp > *expires + 1000000000ULL) {
		*flags_p = flags;
		*expires = exp;
	}
}
