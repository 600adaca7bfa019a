// Package identity defines anet's security identities: the numbers that
// the datapath's policy maps are keyed by, and the canonical key from which
// a pod's identity number is allocated.
//
// A pod's identity is determined by its namespace's labels and its own
// labels, nothing else: two pods with the same labels in namespaces with
// the same labels (which, since the API sets kubernetes.io/metadata.name on
// every namespace, means the same namespace) share one identity on every
// node. Numbers are 24 bits wide, because the Geneve VNI carries them.
//
// # Allocation
//
// An Allocator turns a Key into a number. Local is an in-memory allocator
// (tests, and a single node). CRD is the cluster-wide one, as Cilium's CRD
// mode does it: a cluster-scoped custom resource (anet.dev/v1alpha1
// SecurityIdentity, installer/manifests/crds) whose object name is the
// number in decimal and whose spec holds the key and its labels, with a
// label carrying the key's hash. Allocating a key first looks it up
// through an informer indexed by key, then in the API by the hash label;
// if absent, the node picks a free number and creates the object:
// creation fails with AlreadyExists when another node took that number
// first, and the node retries with another (the API server is the
// arbiter, no leader needed). Two nodes creating objects for one key at
// once settle on the earliest created (resource versions are comparable);
// the other is deleted by its creator. A Collector, runnable in every
// anetd, deletes objects whose key no pod in the cluster has had for a
// grace period, with preconditions on the UID and resource version; a
// node still holding a deleted identity re-creates it. Numbers survive
// anetd restarts because they live in the API server.
package identity

import (
	"maps"
	"slices"
	"strings"
)

// Reserved identity numbers (see the policy contract).
const (
	// None is the wildcard in rules ("any peer"); never an endpoint's.
	None uint32 = 0
	// Host is this node itself (kubelet probes, host-network pods).
	Host uint32 = 1
	// World is any address that no ipcache entry names.
	World uint32 = 2
	// RemoteNode is another node's own address.
	RemoteNode uint32 = 3
	// MinPod and MaxPod bound the cluster-wide pod identities.
	MinPod uint32 = 256
	MaxPod uint32 = 0x7fffff
	// CIDRFlag marks node-local CIDR identities: CIDRFlag|n, n >= 1.
	CIDRFlag uint32 = 0x800000
	// MaxCIDR is the largest n of a CIDR identity CIDRFlag|n.
	MaxCIDR uint32 = 0x7fffff
	// Max is the largest identity number (24 bits).
	Max uint32 = 0xffffff
)

// IsCIDR reports whether id is a node-local CIDR identity.
func IsCIDR(id uint32) bool { return id&CIDRFlag != 0 && id&^CIDRFlag != 0 && id <= Max }

// IsPod reports whether id is a cluster-wide pod identity.
func IsPod(id uint32) bool { return id >= MinPod && id <= MaxPod }

// NamespaceNameLabel is the label the API server sets on every Namespace
// to its name; a key always carries it, so the namespace name is part of
// every pod identity even when the Namespace object is not known yet.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Prefixes of the two label sources inside a key. Neither ':' nor ';' nor
// '=' can appear in a valid label key, and ';' cannot appear in a valid
// label value, so "ns:" entries cannot be confused with "pod:" entries and
// entries cannot run into each other.
const (
	nsPrefix  = "ns:"
	podPrefix = "pod:"
)

// Key is the canonical text of an identity's labels:
// "ns:k=v;...;pod:k=v;..." with each group sorted by label key and the
// namespace's name always present as ns:kubernetes.io/metadata.name.
// Equal label sets give equal keys on every node.
type Key string

// KeyOf builds the key of a pod in namespace nsName whose namespace has
// labels nsLabels (nil when the Namespace is not known yet) and whose own
// labels are podLabels.
func KeyOf(nsName string, nsLabels, podLabels map[string]string) Key {
	ns := make(map[string]string, len(nsLabels)+1)
	maps.Copy(ns, nsLabels)
	ns[NamespaceNameLabel] = nsName
	var b strings.Builder
	write := func(prefix string, m map[string]string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			b.WriteString(prefix)
			b.WriteString(k)
			b.WriteByte('=')
			b.WriteString(m[k])
			b.WriteByte(';')
		}
	}
	write(nsPrefix, ns)
	write(podPrefix, podLabels)
	return Key(b.String())
}

// Labels splits a key back into its namespace and pod labels (for
// anetctl and for the CRD object's body). It assumes a key made by KeyOf
// from valid labels.
func (k Key) Labels() (nsLabels, podLabels map[string]string) {
	nsLabels, podLabels = map[string]string{}, map[string]string{}
	for e := range strings.SplitSeq(string(k), ";") {
		var m map[string]string
		switch {
		case strings.HasPrefix(e, nsPrefix):
			m, e = nsLabels, e[len(nsPrefix):]
		case strings.HasPrefix(e, podPrefix):
			m, e = podLabels, e[len(podPrefix):]
		default:
			continue
		}
		name, value, _ := strings.Cut(e, "=")
		m[name] = value
	}
	return nsLabels, podLabels
}
