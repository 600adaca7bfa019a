// Package policy computes what Kubernetes NetworkPolicies ask of one node:
// for each local pod an EndpointPolicy (per direction, whether the pod is
// isolated and the allow rules keyed by peer identity, protocol and port
// block), and the ipcache (address prefix -> identity). It is pure: API
// objects in, desired state out; the reconciler writes the difference
// (Diff, DiffIPCache) to the datapath.
//
// # Semantics (networking.k8s.io/v1)
//
//   - A pod is isolated for a direction when some policy of its namespace
//     selects it and has that policyType. policyTypes defaults to Ingress,
//     plus Egress when the spec has egress rules. Several policies union.
//   - A peer's podSelector alone matches pods of the policy's namespace;
//     namespaceSelector alone, every pod of the matching namespaces; both,
//     the pods matching both (AND). Selectors are evaluated against
//     identities (namespace labels, pod labels), not pods.
//   - An empty from/to matches every peer (identity 0); empty ports match
//     every protocol and port (Proto 0), ICMP included. With only port
//     entries (TCP, UDP, SCTP), everything else, ICMP included, is denied
//     to an isolated pod: NetworkPolicy has no way to name it.
//   - Protocol defaults to TCP. endPort ranges become aligned prefix
//     blocks (PortRanges).
//   - Named ports resolve, for ingress, against the selected pod's own
//     container ports (one rule may mean different numbers on different
//     pods), and for egress against each peer identity's pods (expanded per
//     peer identity; with an empty `to`, over every pod identity that has
//     the name). Name and protocol must both match. When pods of one
//     identity give one name different numbers, the identity gets all of
//     them (rules are per identity, as in Cilium). A peer that is no pod
//     (an ipBlock address) has no named ports.
//   - The host (identity 1: kubelet probes) is always allowed into local
//     pods; the datapath does this, not the rules.
//
// # ipBlock
//
// Every ipBlock CIDR and except gets a node-local CIDR identity
// (0x800000|n) and an ipcache entry; with the LPM trie every address takes
// its most specific entry. A rule for "cidr except E" therefore allows
// every CIDR identity whose prefix lies inside cidr and inside no except
// (prefixes of other policies nest, so this is more than the block's own
// identity); it never allows the except identities.
//
// The literal reading (default, as upstream's e2e suite and Calico):
// an ipBlock also matches pods and nodes whose addresses lie in it, even
// though their ipcache entries are their own identities (pod, Host,
// RemoteNode). The model adds the rule for such an identity when all of
// its addresses (of the block's family) lie in the block and outside the
// excepts. When an identity's addresses lie partly inside and partly
// outside (two replicas with the same labels, one named by a /32), no
// identity rule can say it: the identity is left out, so the addresses
// inside are denied (the safe side), and a Problem reports it. Splitting
// such identities would need an identity per (labels, ipBlock region),
// the same on every node because ingress takes the source identity from
// the Geneve VNI; that is left for later. The Cilium reading
// (Options.IPBlockExcludesCluster): an ipBlock matches only addresses that
// are no pod's and no node's, i.e. only CIDR identities.
//
// # Not enforced as written
//
// Compile never fails as a whole. What it cannot enforce as written (an
// unknown protocol, an unparseable CIDR, an invalid selector, endPort with
// a named port, a peer with nothing in it, an identity split by an
// ipBlock) is returned as a Problem naming the policy and the field, for
// anetd to log and emit as an Event; the part in question allows nothing,
// and an unreadable podSelector isolates every pod of the namespace: never
// wider than written.
package policy
