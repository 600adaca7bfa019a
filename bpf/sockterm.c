//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Terminating connected UDP sockets whose backend left its Service.
 *
 * The socket hooks (sock.c) rewrite a UDP connect() to a frontend into a
 * connect() to one backend, once. When that backend leaves the frontend,
 * nothing about the socket changes: it goes on sending to the dead backend
 * for ever. anetd then reads this iterator in every network namespace the
 * hooks serve (each pod's, and the node's own), and it destroys the sockets
 * that the hooks connected to a backend listed in anet_sockterm: the
 * application's next recv() fails with ECONNABORTED, its next send()
 * without an address with EDESTADDRREQ (the socket is disconnected), and a
 * new connect() to the frontend picks a live backend.
 *
 *   anet_sockterm_udp  iter/udp: one call per UDP socket of the netns in
 *                      which the iterator is read
 *
 * A socket is destroyed only when all of these hold:
 *   - it is connected (TCP_ESTABLISHED, a destination address set), to
 *     address:port A;
 *   - the hooks connected it: anet_sock4_revnat has (its cookie, A), the
 *     entry connect4/sendmsg4 wrote when they chose A for it. A socket that
 *     connected to a pod address directly has no such entry and is left
 *     alone (it asked for that pod, not for the Service);
 *   - (A, the frontend's reverse-NAT index of that entry) is in
 *     anet_sockterm: the backend left that frontend. A socket connected
 *     through another frontend that still has A is left alone.
 * Each destroyed socket's cookie is written to the iterator's output, so
 * that anetd counts them, and its reverse-NAT entry goes.
 *
 * TCP sockets are never walked: a TCP connection to a removed backend ends
 * on its own (a reset, or the application's timeouts), and an established
 * one to a terminating pod must be left to finish.
 */
#include "lib/common.h"
#include "lib/lb.h"

char __license[] __section("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1

/* The kernel's types, as much of them as is read here; CO-RE relocates
 * each field against the running kernel's BTF. */
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct udp_sock;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* A backend that left a frontend: sockets connected to it through that
 * frontend are destroyed. anetd fills the map before it reads the
 * iterator and empties it after. */
struct sockterm_key {
	__be32 addr; /* backend */
	__be16 port;
	__u16 pad;
	__u32 rev_nat; /* the frontend's */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sockterm_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} anet_sockterm __section(".maps");

__section("iter/udp")
int anet_sockterm_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (!sk)
		return 0;
	struct sock_common *skc = &sk->__sk_common;

	/* IPv4 sockets, and IPv6 ones connected to an IPv4-mapped address
	 * (the kernel keeps the IPv4 destination in skc_daddr for those). */
	if (skc->skc_family != AF_INET && skc->skc_family != AF_INET6)
		return 0;
	if (skc->skc_state != TCP_ESTABLISHED || skc->skc_daddr == 0)
		return 0;

	__u64 cookie = bpf_get_socket_cookie(sk);
	struct sock4_revnat_key rkey = {
		.cookie = cookie,
		.addr = skc->skc_daddr,
		.port = skc->skc_dport,
	};
	struct sock4_revnat *rv = bpf_map_lookup_elem(&anet_sock4_revnat, &rkey);
	if (!rv)
		return 0; /* not connected through a frontend */
	struct sockterm_key tkey = {
		.addr = rkey.addr,
		.port = rkey.port,
		.rev_nat = rv->rev_nat,
	};
	if (!bpf_map_lookup_elem(&anet_sockterm, &tkey))
		return 0;
	if (bpf_sock_destroy(skc) != 0)
		return 0;
	bpf_map_delete_elem(&anet_sock4_revnat, &rkey);
	bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	return 0;
}
