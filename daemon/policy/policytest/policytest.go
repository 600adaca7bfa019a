// Package policytest holds in-memory stand-ins for the policy
// reconciler's inputs and outputs, for pure-logic tests of what reads the
// reconciler's results (the API server, anetctl). The datapath tests use
// the real maps.
package policytest

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/anet-dev/anet/daemon/policy"
)

// Cluster is a policy.Source holding fixed objects (no nodes).
type Cluster struct {
	Policies []*networkingv1.NetworkPolicy
	NSs      []*corev1.Namespace
	Pods     []*corev1.Pod
}

func (c *Cluster) NetworkPolicies() ([]*networkingv1.NetworkPolicy, error) { return c.Policies, nil }
func (c *Cluster) Namespaces() ([]*corev1.Namespace, error)                { return c.NSs, nil }
func (c *Cluster) Nodes() ([]*corev1.Node, error)                          { return nil, nil }
func (c *Cluster) AllPods() ([]*corev1.Pod, error)                         { return c.Pods, nil }

// NullDatapath is a policy.Datapath that accepts every write and holds
// nothing.
type NullDatapath struct{}

func (NullDatapath) SetEndpointPolicy(uint32, bool, bool, []policy.Rule, []policy.Rule) error {
	return nil
}
func (NullDatapath) DeleteEndpointPolicy(uint32) error         { return nil }
func (NullDatapath) SetIPCache(netip.Prefix, uint32) error     { return nil }
func (NullDatapath) DeleteIPCache(netip.Prefix) error          { return nil }
func (NullDatapath) IPCache() (map[netip.Prefix]uint32, error) { return map[netip.Prefix]uint32{}, nil }
func (NullDatapath) PolicyEndpoints() ([]uint32, error)        { return nil, nil }

var (
	_ policy.Source   = (*Cluster)(nil)
	_ policy.Datapath = NullDatapath{}
)
