// Package lb is the model of the service load balancer that the control
// plane (package service) and the datapath (datapath.ServiceMaps) share:
// frontends, backends, their states and the Map contract between the
// reconciler and the maps. It imports nothing of Kubernetes, so that the
// datapath, and what links it, stays free of client libraries.
//
// Addresses are net/netip values throughout, so that IPv6 is an addition,
// not a rewrite; the datapath serves IPv4 today.
package lb

import (
	"net/netip"
	"strconv"
	"time"
)

// Proto is an IP protocol number, as in the maps.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return "proto(" + itoa(int(p)) + ")"
}

// Kind is what kind of address a frontend is.
type Kind uint8

const (
	ClusterIP Kind = iota + 1
	NodePort
	ExternalIP
	LoadBalancer
)

func (k Kind) String() string {
	switch k {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case ExternalIP:
		return "ExternalIP"
	case LoadBalancer:
		return "LoadBalancer"
	}
	return "kind(" + itoa(int(k)) + ")"
}

// BackendState is an endpoint's condition, as kube-proxy reads an
// EndpointSlice: Ready endpoints take new connections; Serving ones
// (serving but terminating) only when no endpoint of the frontend is ready;
// Terminating ones (neither ready nor serving) take none, and connections
// already open to any of them go on.
//
// NotReady (not ready and not terminating: starting, or failing its
// readiness probe) takes no new connections either. It exists only in the
// desired state and the API, so that users are not told such a pod is
// terminating; the maps never hold it: the map view writes it as
// Terminating, which means the same to the datapath.
type BackendState uint8

const (
	Ready BackendState = iota + 1
	Serving
	Terminating
	NotReady
)

func (s BackendState) String() string {
	switch s {
	case Ready:
		return "ready"
	case Serving:
		return "serving"
	case Terminating:
		return "terminating"
	case NotReady:
		return "not-ready"
	}
	return "state(" + itoa(int(s)) + ")"
}

// Scope says which clients a frontend's entry serves, for the traffic
// policies: ScopeExternal is what traffic from outside the cluster (and,
// for ClusterIP, everything) sees; ScopeInternal, present only when the
// two differ, is what in-cluster clients see.
type Scope uint8

const (
	ScopeExternal Scope = 0
	ScopeInternal Scope = 1
)

// FrontendKey is what the datapath matches a packet or a connect() on.
type FrontendKey struct {
	Addr  netip.AddrPort
	Proto Proto
	Scope Scope
}

// Backend is one endpoint address and port of a frontend.
type Backend struct {
	Addr     netip.AddrPort
	State    BackendState
	NodeName string // the endpoint's node ("" when the slice does not say)
	Zone     string
}

// Frontend is one address, port and protocol of a Service with the
// backends it balances to, in a stable order (sorted by address).
type Frontend struct {
	Key         FrontendKey
	Kind        Kind
	Namespace   string
	Name        string // the Service
	PortName    string // the ServicePort's name ("" for a single unnamed port)
	Backends    []Backend
	Affinity    time.Duration // sessionAffinity ClientIP timeout; 0 = none
	ExtLocal    bool          // externalTrafficPolicy Local
	IntLocal    bool          // internalTrafficPolicy Local
	HealthCheck uint16        // healthCheckNodePort, 0 = none
}

// MapBackend is a backend as the maps hold it: an ID that the reconciler
// assigns (stable while the frontend keeps that backend, so that session
// affinity and conntrack entries stay valid) and what the datapath needs.
type MapBackend struct {
	ID    uint32
	Addr  netip.AddrPort
	State BackendState
}

// MapFrontend is a frontend as the maps hold it.
type MapFrontend struct {
	Key FrontendKey
	// RevNat is the frontend's reverse-NAT index: stable for the life of
	// the frontend (conntrack and socket reverse-NAT entries refer to it),
	// never 0.
	RevNat   uint32
	Affinity time.Duration
	Flags    Flags
	// Active is how many of Backends, from the first, take new
	// connections: the ready ones, or the serving ones when none is
	// ready; 0 refuses new connections (ECONNREFUSED). The others (in
	// Backends after the active ones) are kept so that open connections
	// and lookups by ID still find them.
	Active   int
	Backends []MapBackend
}

// Flags are per-frontend datapath flags.
type Flags uint32

const (
	FlagNodePort  Flags = 1 << 0 // a NodePort frontend (matched on node addresses)
	FlagExternal  Flags = 1 << 1 // ExternalIP or LoadBalancer
	FlagExtLocal  Flags = 1 << 2 // externalTrafficPolicy Local
	FlagIntLocal  Flags = 1 << 3 // internalTrafficPolicy Local
	FlagTwoScopes Flags = 1 << 4 // an internal-scope entry exists beside this one
	FlagLoopback  Flags = 1 << 5 // reserved
)

// Map is the datapath's service tables as the reconciler sees them. The
// Linux implementation is datapath.ServiceMaps.
type Map interface {
	// Put programs f, replacing what f.Key had, so that a live frontend
	// never has zero backends during the update: backends are written
	// before the frontend's count grows, and removed after it shrank.
	Put(f MapFrontend) error
	// Delete removes a frontend and its backend slots. Backends no other
	// frontend uses are removed with it. Deleting what is absent is no
	// error.
	Delete(k FrontendKey) error
	// Dump returns every frontend programmed now (after a restart: what
	// the last run left), for the reconciler to adopt their RevNat and
	// backend IDs and to prune what no longer belongs.
	Dump() ([]MapFrontend, error)
}

func itoa(i int) string { return strconv.Itoa(i) }

// GoneBackend is a UDP backend that left a frontend: removed from its
// map entry (the endpoint went, or the frontend did), or kept there but
// no longer serving (Terminating). A UDP socket that the socket hooks
// connected to it through that frontend keeps sending to it for ever; the
// datapath destroys such sockets so that their applications reconnect.
type GoneBackend struct {
	RevNat uint32 // the frontend's reverse-NAT index
	Addr   netip.AddrPort
}

// SocketTerminator destroys the connected UDP sockets of gone backends
// (datapath.SocketTerminator). TerminateUDP must not block: the
// reconciler calls it while it writes the maps.
type SocketTerminator interface {
	TerminateUDP(gone []GoneBackend)
}
