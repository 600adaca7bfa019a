// Package service is anetd's kube-proxy replacement, control-plane side:
// the desired state of every frontend (a Service's ClusterIP, NodePort,
// ExternalIP or LoadBalancer address with one port and protocol) and its
// backends, computed from Services and EndpointSlices as plain Go, and the
// reconciler that writes it into the datapath's service maps through Map.
//
// The model it shares with the datapath is package lb (no Kubernetes
// there); its names are aliased here so that the control plane reads as
// one package.
package service

import "github.com/anet-dev/anet/daemon/service/lb"

// The shared model (see package lb).
type (
	Proto        = lb.Proto
	Kind         = lb.Kind
	BackendState = lb.BackendState
	Scope        = lb.Scope
	FrontendKey  = lb.FrontendKey
	Backend      = lb.Backend
	Frontend     = lb.Frontend
	MapBackend   = lb.MapBackend
	MapFrontend  = lb.MapFrontend
	Flags        = lb.Flags
	Map          = lb.Map
)

const (
	TCP           = lb.TCP
	UDP           = lb.UDP
	ClusterIP     = lb.ClusterIP
	NodePort      = lb.NodePort
	ExternalIP    = lb.ExternalIP
	LoadBalancer  = lb.LoadBalancer
	Ready         = lb.Ready
	Serving       = lb.Serving
	Terminating   = lb.Terminating
	NotReady      = lb.NotReady
	ScopeExternal = lb.ScopeExternal
	ScopeInternal = lb.ScopeInternal
	FlagNodePort  = lb.FlagNodePort
	FlagExternal  = lb.FlagExternal
	FlagExtLocal  = lb.FlagExtLocal
	FlagIntLocal  = lb.FlagIntLocal
	FlagTwoScopes = lb.FlagTwoScopes
	FlagLoopback  = lb.FlagLoopback
)
