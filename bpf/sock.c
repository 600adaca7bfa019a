//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level service load balancing: cgroup v2 sock_addr hooks attached
 * at anetd's --cgroup-root, so that every process below it (the node's
 * pods, and host processes placed there) reaches a service's backend
 * directly. The socket is connected (or the datagram addressed) to the
 * backend itself: no packet ever carries the service address, and nothing
 * is translated per packet for these clients.
 *
 *   anet_sock4_connect      cgroup/connect4: TCP connect, UDP connect
 *   anet_sock4_sendmsg      cgroup/sendmsg4: UDP sendto/sendmsg with an address
 *   anet_sock4_recvmsg      cgroup/recvmsg4: UDP recvfrom/recvmsg: the source
 *                           address shown is the service's, not the backend's
 *   anet_sock4_getpeername  cgroup/getpeername4: the same for getpeername()
 *   anet_sock6_*            the same four for IPv6 sockets, for IPv4-mapped
 *                           addresses only (::ffff:a.b.c.d): a dual-stack
 *                           socket (Java's by default) reaching an IPv4
 *                           service must not bypass the balancing
 *
 * An address that is no frontend passes untouched. A frontend without an
 * active backend refuses at once: connect() and sendto() fail with
 * ECONNREFUSED (bpf_set_retval, so the caller sees that rather than EPERM)
 * and the refusal is counted node-wide as no-service-backend.
 *
 * Entry points dispatch; helpers return a negative anet_reason to refuse,
 * and one refusal path (sock4_refuse) counts it.
 */
#include "lib/common.h"
#include "lib/lb.h"

#include <linux/in.h>

char __license[] __section("license") = "Dual BSD/GPL";

#define SYS_REJECT 0
#define SYS_PROCEED 1

#define ECONNREFUSED 111

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

/* The L4 protocol of the socket as the service maps name it, or 0 for one
 * the hooks leave alone (raw sockets, ICMP "ping" sockets, ...). */
static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	switch (ctx->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_MPTCP: /* an MPTCP connection falls back to, and is served as, TCP */
		return IPPROTO_TCP;
	case IPPROTO_UDP:
		return IPPROTO_UDP;
	}
	return 0;
}

/* Translate a connect() or an addressed send to a frontend, *addr:*port,
 * into the same to one of its backends, and remember the backend for the
 * reverse direction. Returns 1 when *addr and *port were rewritten, 0 when
 * there is nothing to do, or a negative anet_reason to refuse. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port, bool addressed)
{
	__u8 proto = sock_proto(ctx);

	if (!proto)
		return 0;
	struct lb4_key key = {
		.addr = *addr,
		.port = *port,
		.proto = proto,
	};
	struct lb4_frontend fe;

	if (!lb4_lookup_service(&key, &fe))
		return 0;
	if (fe.count == 0)
		return -DROP_NO_SERVICE_BACKEND;

	struct lb4_affinity_key akey = {
		.rev_nat = fe.rev_nat,
		.scope = key.scope,
		.kind = ANET_AFFINITY_NETNS,
	};
	struct lb4_target t = {};
	bool found = false;
	__u64 now = 0;
	/* An addressed send (sendmsg4: a UDP socket that did not connect)
	 * to a frontend without affinity keeps to the backend of its first
	 * datagram, as kube-proxy's conntrack keeps one flow on one
	 * backend: a protocol over an unconnected socket (QUIC) needs its
	 * datagrams to reach one server. The entry goes when its backend
	 * stops being active (the affinity match), or with the LRU. */
	bool sticky = fe.affinity_timeout || (addressed && proto == IPPROTO_UDP);
	if (sticky) {
		if (fe.affinity_timeout) {
			/* One network namespace is one pod: the socket
			 * layer's equivalent of kube-proxy's client address. */
			akey.client = bpf_get_netns_cookie(ctx);
		} else {
			akey.kind = ANET_AFFINITY_SOCKET;
			akey.client = bpf_get_socket_cookie(ctx);
		}
		now = bpf_ktime_get_ns();
		found = lb4_affinity_backend(&akey, &fe, now, &t);
	}
	if (!found && !lb4_select_backend(&key, &fe, &t))
		return 0; /* the frontend is being deleted right now */
	if (sticky && (!found || fe.affinity_timeout))
		lb4_affinity_update(&akey, t.backend_id, now);

	struct sock4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = t.addr,
		.port = t.port,
	};
	struct sock4_revnat rval = {
		.addr = key.addr,
		.port = key.port,
		.rev_nat = fe.rev_nat,
	};
	/* An LRU map: a full one evicts its oldest entry, never fails for
	 * room. Without the entry only getpeername()/recvmsg() would show
	 * the backend; the connection works either way. */
	bpf_map_update_elem(&anet_sock4_revnat, &rkey, &rval, BPF_ANY);

	*addr = t.addr;
	*port = t.port;
	return 1;
}

/* Show the frontend instead of the backend *addr:*port this socket was sent
 * to, when the frontend still has that address (its reverse-NAT entry says
 * so). Returns whether it rewrote them. */
static __always_inline bool sock4_xlate_rev(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port)
{
	if (!sock_proto(ctx))
		return false;
	struct sock4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = *addr,
		.port = *port,
	};
	struct sock4_revnat *r = bpf_map_lookup_elem(&anet_sock4_revnat, &rkey);
	if (!r)
		return false;
	__u32 rev_nat = r->rev_nat;
	__be32 fe_addr = r->addr;
	__be16 fe_port = r->port;
	struct lb4_revnat *fe = bpf_map_lookup_elem(&anet_lb4_revnat, &rev_nat);
	if (!fe || fe->addr != fe_addr || fe->port != fe_port)
		return false; /* the frontend is gone or moved: show what is true */
	*addr = fe_addr;
	*port = fe_port;
	return true;
}

/* One refusal path: count it, and make the syscall fail with ECONNREFUSED. */
static __always_inline int sock4_refuse(int reason)
{
	account(ANET_IFINDEX_NODE, DIR_EGRESS, (__u8)-reason, 0);
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* The IPv4 address of an IPv4-mapped IPv6 address (::ffff:a.b.c.d). */
static __always_inline bool sock6_mapped(const struct bpf_sock_addr *ctx, __be32 *addr)
{
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
		return false;
	*addr = ctx->user_ip6[3];
	return true;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx, bool addressed)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	int ret = sock4_xlate_fwd(ctx, &addr, &port, addressed);

	if (ret < 0)
		return sock4_refuse(ret);
	if (ret > 0) {
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	if (sock4_xlate_rev(ctx, &addr, &port)) {
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx, bool addressed)
{
	__be32 addr;
	__be16 port = (__be16)ctx->user_port;

	if (!sock6_mapped(ctx, &addr))
		return SYS_PROCEED; /* IPv6 services come later */
	int ret = sock4_xlate_fwd(ctx, &addr, &port, addressed);
	if (ret < 0)
		return sock4_refuse(ret);
	if (ret > 0) {
		ctx->user_ip6[3] = addr;
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

static __always_inline int sock6_rev(struct bpf_sock_addr *ctx)
{
	__be32 addr;
	__be16 port = (__be16)ctx->user_port;

	if (sock6_mapped(ctx, &addr) && sock4_xlate_rev(ctx, &addr, &port)) {
		ctx->user_ip6[3] = addr;
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

__section("cgroup/connect4")
int anet_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx, false);
}

__section("cgroup/sendmsg4")
int anet_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx, true);
}

__section("cgroup/recvmsg4")
int anet_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

__section("cgroup/getpeername4")
int anet_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

__section("cgroup/connect6")
int anet_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx, false);
}

__section("cgroup/sendmsg6")
int anet_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx, true);
}

__section("cgroup/recvmsg6")
int anet_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

__section("cgroup/getpeername6")
int anet_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}
