package api

import "net/netip"

// ServiceFrontend is one frontend of a Service as anetd programs it: an
// address, port and protocol with the backends it balances to (GET
// /v1/services returns every one, sorted by Service, then address).
type ServiceFrontend struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`           // the Service
	Port      string `json:"port,omitempty"` // the ServicePort's name
	// Kind is ClusterIP, NodePort, ExternalIP or LoadBalancer.
	Kind string `json:"kind"`
	// Scope is "external", or "internal" for what in-cluster clients of
	// an externalTrafficPolicy Local frontend see (every endpoint).
	Scope    string         `json:"scope"`
	Address  netip.AddrPort `json:"address"`
	Protocol string         `json:"protocol"`
	// RevNat is the frontend's reverse-NAT index in the maps (0 until
	// it is written).
	RevNat              uint32 `json:"revNat,omitempty"`
	AffinitySeconds     int    `json:"affinitySeconds,omitempty"` // sessionAffinity ClientIP
	ExternalLocal       bool   `json:"externalLocal,omitempty"`   // externalTrafficPolicy Local: this node's endpoints only
	InternalLocal       bool   `json:"internalLocal,omitempty"`   // internalTrafficPolicy Local
	HealthCheckNodePort uint16 `json:"healthCheckNodePort,omitempty"`
	// Active is how many backends, from the first, take new
	// connections; 0 refuses them.
	Active int `json:"active"`
	// Programmed says the maps hold what anetd wants; when not, Error
	// is the last failed write (retried).
	Programmed bool             `json:"programmed"`
	Error      string           `json:"error,omitempty"`
	Backends   []ServiceBackend `json:"backends"`
}

// ServiceBackend is one backend of a frontend, in the maps' order.
type ServiceBackend struct {
	Address netip.AddrPort `json:"address"`
	// State is ready, serving (terminating but serving), terminating or
	// not-ready, from the EndpointSlice's conditions.
	State  string `json:"state"`
	Active bool   `json:"active"`       // takes new connections
	ID     uint32 `json:"id,omitempty"` // backend ID in the maps
	Node   string `json:"node,omitempty"`
	Zone   string `json:"zone,omitempty"`
}
