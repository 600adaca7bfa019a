//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Programs on the host side of a pod's veth pair.
 *
 *   anet_from_container  tc ingress: every packet the pod sends.
 *   anet_to_container    tc egress: packets the host stack sends to the pod.
 *
 * Entry points dispatch; helpers return a negative anet_reason to drop, and
 * the entry point turns it into one counted drop (one drop path).
 *
 * NetworkPolicy (lib/policy.h): the pod's egress is judged here on every
 * packet it sends, on the destination address as the packet has it (the
 * socket hooks already put a Service's backend there); a destination pod
 * of this node has its ingress judged before the redirect; what the host
 * stack delivers to a pod has its ingress judged in anet_to_container.
 */
#include "lib/common.h"
#include "lib/eth.h"
#include "lib/fwd.h"
#include "lib/geneve.h"
#include "lib/policy.h"

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <stdbool.h>
#include <stddef.h>

char __license[] __section("license") = "Dual BSD/GPL";

/* Set by the loader (datapath.Options.HostNAT) when a kube-proxy, or any
 * netfilter NAT, may translate pod traffic in the host stack: anetd with its
 * own service handling off, beside a kube-proxy. A reply between two pods
 * of this node then goes through the host stack whenever netfilter
 * translated its connection, so that the reverse NAT happens; otherwise it
 * would reach the client straight from the backend's address and be
 * dropped. Off, the check costs nothing: the verifier removes it. */
volatile const __u32 ANET_HOST_NAT = 0;

/* The netfilter conntrack lookup from tc (kfuncs, Linux 6.0+). Weak: a
 * kernel without nf_conntrack loads the programs all the same, and the
 * check then finds nothing. The kernel's types, reduced to the fields read
 * here: CO-RE relocates each access against the running kernel's BTF. */
struct ip_ct_tcp {
	__u8 state; /* enum tcp_conntrack (UAPI, linux/netfilter/nf_conntrack_tcp.h) */
} __attribute__((preserve_access_index));

union nf_conntrack_proto {
	struct ip_ct_tcp tcp;
} __attribute__((preserve_access_index));

struct nf_conn {
	unsigned long status;
	union nf_conntrack_proto proto;
} __attribute__((preserve_access_index));

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#define IPS_SRC_NAT (1UL << 4)
#define IPS_DST_NAT (1UL << 5)
#define BPF_F_CURRENT_NETNS (-1)

/* <linux/if_arp.h> pulls in libc headers; the few ARP definitions we need. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* Answer an ARP request from the pod for any address other than its own with
 * the host-side MAC: the pod's gateway resolves without a bridge. */
static __always_inline int handle_arp(struct __sk_buff *skb, const struct endpoint_info *src)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return -DROP_MALFORMED_ARP;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return -DROP_MALFORMED_ARP;
	if (body->sip != src->ip && body->sip != 0)
		return -DROP_INVALID_SOURCE;
	/* Replies, and probes or announcements of the pod's own address, go to
	 * the host stack as they would on any link. */
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || body->tip == src->ip || body->sip == 0)
		return TC_ACT_OK;

	__be32 target = body->tip;

	arp->ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(body->tha, body->sha);
	body->tip = body->sip;
	mac_copy(body->sha, src->host_mac);
	body->sip = target;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, src->host_mac);

	int ret = bpf_redirect(skb->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	return ret;
}

/* netfilter_translated says whether the host's conntrack holds a live NAT
 * for this packet's connection (a kube-proxy's DNAT of a Service address,
 * or a masquerade): the host stack must then see the packet, to undo or
 * apply the translation.
 *
 * Live, for TCP, means not TIME_WAIT or CLOSE (nor NONE): netfilter keeps a
 * closed connection's entry for minutes (TIME_WAIT 120 s, CLOSE 10 s after
 * an RST), and a new connection that reuses its addresses and ports is not
 * that connection. A pod that connected to a Service and then connects
 * straight to the backend from the same source port sends its SYN past
 * netfilter (nothing matches A:p -> B:q), but the backend's SYN-ACK,
 * B:q -> A:p, is the old entry's reply tuple: handed to the host stack, it
 * came back to the client from the Service address and the connect failed
 * (found by the services benchmark). Every packet of the direct connection
 * matches the old entry, not its SYN-ACK alone, so the state decides for
 * all of them. The price: a backend's FIN resent after a Service
 * connection reached TIME_WAIT (the client's last ACK lost) reaches the
 * client untranslated and gets an RST, for a connection that had ended for
 * the client. A live entry with the same reply tuple as a direct
 * connection would be a real clash of two connections, which netfilter
 * avoids only for what it sees; it is not looked for. UDP has no state to
 * tell an old flow from a new one on the same ports: its entries count
 * while netfilter keeps them (30 s, 120 s once answered). */
static __always_inline bool netfilter_translated(struct __sk_buff *skb, const struct iphdr *ip4, __u32 hdrlen)
{
	void *data_end = (void *)(long)skb->data_end;
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = ip4->protocol };

	if (!bpf_skb_ct_lookup || !bpf_ct_release)
		return false;
	if (ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP)
		return false;
	__be16 *ports = (void *)ip4 + hdrlen;
	if ((void *)(ports + 2) > data_end)
		return false;
	t.ipv4.saddr = ip4->saddr;
	t.ipv4.daddr = ip4->daddr;
	t.ipv4.sport = ports[0];
	t.ipv4.dport = ports[1];
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv4), &opts, sizeof(opts));
	if (!ct)
		return false;
	bool nat = ct->status & (IPS_SRC_NAT | IPS_DST_NAT);
	if (nat && ip4->protocol == IPPROTO_TCP) {
		__u8 state = ct->proto.tcp.state;

		nat = state != TCP_CONNTRACK_NONE && state != TCP_CONNTRACK_TIME_WAIT && state != TCP_CONNTRACK_CLOSE;
	}
	bpf_ct_release(ct);
	return nat;
}

/* to_tunnel sends a packet of the pod src to daddr, no endpoint of this
 * node, through the Geneve overlay when daddr is in another node's pod
 * CIDR (tunnel mode; policy has judged it). Anything else goes to the
 * host stack, as in native mode. */
static __always_inline int to_tunnel(struct __sk_buff *skb, const struct endpoint_info *src, __be32 daddr)
{
	struct tunnel_peer *peer = tunnel_lookup(daddr);

	if (!peer)
		return TC_ACT_OK;
	__be32 node = peer->node;
	struct node_config *cfg = node_config();
	if (!cfg || !cfg->tunnel_ifindex || !cfg->addr)
		return -DROP_TUNNEL_ENCAP_FAILED;
	if (node == cfg->addr)
		return TC_ACT_OK; /* this node's own CIDR: no endpoint has the address */
	/* The VNI carries the sender's identity: the endpoint's, else the
	 * ipcache's for its address (the reconciler writes every pod's);
	 * 0 when neither knows it yet, and the receiver looks it up itself. */
	__u32 id = src->identity;
	if (!id) {
		struct ipcache_key k = { .prefixlen = 32, .addr = src->ip };
		struct ipcache_entry *e = bpf_map_lookup_elem(&anet_ipcache4, &k);
		if (e)
			id = e->identity;
	}
	int ret = tunnel_encap(skb, cfg, node, id & 0xffffff);
	if (ret < 0)
		return ret;
	if (ret != TC_ACT_REDIRECT)
		return -DROP_REDIRECT_FAILED;
	return ret;
}

/* handle_ipv4 forwards a packet of the pod src. A drop that belongs to
 * another endpoint's counters (its ingress policy refused the packet) sets
 * *acct_if to that endpoint. */
static __always_inline int handle_ipv4(struct __sk_buff *skb, const struct endpoint_info *src, __u32 *acct_if)
{
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 hdrlen;
	int ret = ipv4_pull(skb, &eth, &ip4, &hdrlen);

	if (ret < 0)
		return ret;
	if (ip4->saddr != src->ip)
		return -DROP_INVALID_SOURCE;

	__u32 daddr = ip4->daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&anet_ep_by_ip, &daddr);
	/* A destination pod of this node is judged here whichever way the
	 * packet goes on (redirect, or the host stack when netfilter
	 * translated it): the connection's entry then covers both ends. */
	ret = policy_from_pod(skb, ip4, hdrlen, src->ifindex, dst);
	if (ret < 0) {
		if (ret == -DROP_POLICY_INGRESS && dst)
			*acct_if = dst->ifindex;
		return ret;
	}
	if (!dst) {
		if (ANET_ROUTING_MODE == ANET_ROUTING_TUNNEL)
			return to_tunnel(skb, src, daddr);
		return TC_ACT_OK; /* the node itself, or beyond it: the host stack decides */
	}
	if (ANET_HOST_NAT && netfilter_translated(skb, ip4, hdrlen))
		return TC_ACT_OK;

	/* Routed hop between two pods of this node: decrement TTL, rewrite
	 * L2 and hand the packet straight to the peer's netns. */
	return deliver_local(skb, eth, ip4, dst);
}

__section("tc")
int anet_from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 acct_if = ifindex;
	__u8 acct_dir = DIR_EGRESS;
	int ret;

	struct endpoint_info *src = bpf_map_lookup_elem(&anet_ep_by_if, &ifindex);
	if (!src) {
		/* Under the node-wide key: counters of an unknown device would
		 * outlive it (see struct metrics_key). */
		account(ANET_IFINDEX_NODE, DIR_EGRESS, DROP_UNKNOWN_ENDPOINT, len);
		return TC_ACT_SHOT;
	}
	if ((void *)(eth + 1) > data_end) {
		ret = -DROP_MALFORMED_L2;
		goto out;
	}
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		ret = handle_ipv4(skb, src, &acct_if);
		break;
	case bpf_htons(ETH_P_ARP):
		ret = handle_arp(skb, src);
		break;
	default:
		ret = -DROP_UNSUPPORTED_L3;
	}
out:
	if (ret < 0) {
		if (acct_if != ifindex)
			acct_dir = DIR_INGRESS;
		account(acct_if, acct_dir, (__u8)-ret, len);
		return TC_ACT_SHOT;
	}
	account(ifindex, DIR_EGRESS, REASON_FORWARDED, len);
	return ret;
}

/* to_container judges an IPv4 packet for the endpoint ifindex. */
static __always_inline int to_container(struct __sk_buff *skb, __u32 ifindex)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; /* ARP and the rest: the host stack's business */
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end) {
		if (skb->len < ETH_HLEN + sizeof(struct iphdr) ||
		    bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct iphdr)) < 0)
			return -DROP_MALFORMED_IP;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	struct iphdr *ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return -DROP_MALFORMED_IP;
	if (ip4->version != 4 || ip4->ihl < 5)
		return -DROP_MALFORMED_IP;
	int ret = policy_to_pod(skb, ip4, ip4->ihl * 4, ifindex, 0);
	return ret < 0 ? ret : TC_ACT_OK;
}

__section("tc")
int anet_to_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;

	/* Only a registered endpoint is delivered to and counted: a device
	 * whose endpoint was deleted (collected while the runtime keeps the
	 * veth) gets nothing and re-creates no counter of its own. */
	if (!bpf_map_lookup_elem(&anet_ep_by_if, &ifindex)) {
		account(ANET_IFINDEX_NODE, DIR_INGRESS, DROP_UNKNOWN_ENDPOINT, len);
		return TC_ACT_SHOT;
	}
	int ret = to_container(skb, ifindex);
	if (ret < 0) {
		account(ifindex, DIR_INGRESS, (__u8)-ret, len);
		return TC_ACT_SHOT;
	}
	account(ifindex, DIR_INGRESS, REASON_FORWARDED, len);
	return ret;
}
