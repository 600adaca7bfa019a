package service

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Labels and defaults the builder reads, as kube-proxy does.
const (
	// ProxyNameLabel, when present with any value, hands a Service to
	// another proxy: kube-proxy (and anet) leave it alone.
	ProxyNameLabel = "service.kubernetes.io/service-proxy-name"
	// DefaultAffinityTimeout is sessionAffinity ClientIP's timeout when
	// the Service gives none (the API server's default).
	DefaultAffinityTimeout = 10800 * time.Second
	maxAffinityTimeout     = 86400 // seconds, the API's bound
)

// Node is this node's view for the builder: its name (which endpoints are
// local) and its addresses (the InternalIPs, where NodePorts answer).
type Node struct {
	Name  string
	Addrs []netip.Addr
}

// Desired is what one Service asks of this node.
type Desired struct {
	// Frontends sorted by key; empty when the Service is skipped.
	Frontends []Frontend
	// Skip says why the whole Service is left alone ("" when it is not):
	// headless, ExternalName, handed to another proxy, no ClusterIP.
	Skip string
	// HealthCheck is the healthCheckNodePort to serve (type LoadBalancer
	// with externalTrafficPolicy Local), 0 for none.
	HealthCheck uint16
	// LocalReady is how many distinct addresses of this node's endpoints
	// are ready: what the healthCheckNodePort reports, as kube-proxy
	// counts it (serving-terminating endpoints do not count).
	LocalReady int
}

// Build computes what svc asks of this node from the Service and its
// EndpointSlices (those labelled kubernetes.io/service-name=<svc>, any
// number). It never fails as a whole: what cannot be served (SCTP, a port
// out of range, a malformed address) is left out, and problems says what
// and why, each naming the Service. IPv6 addresses are skipped quietly
// (the datapath serves IPv4 today).
func Build(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node Node) (d Desired, problems []error) {
	name := svc.Namespace + "/" + svc.Name
	problem := func(format string, a ...any) {
		problems = append(problems, fmt.Errorf("service %s: %s", name, fmt.Sprintf(format, a...)))
	}
	if why := skip(svc); why != "" {
		d.Skip = why
		return d, nil
	}
	clusterIPs := parseIPs(svc.Spec.ClusterIPs, "clusterIP", problem)
	if len(svc.Spec.ClusterIPs) == 0 {
		clusterIPs = parseIPs([]string{svc.Spec.ClusterIP}, "clusterIP", problem)
	}
	externalIPs := parseIPs(svc.Spec.ExternalIPs, "externalIP", problem)
	var lbIPs []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		// Only VIP-style load balancers send traffic to the ingress IP;
		// with ipMode Proxy the load balancer itself reaches the node.
		if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == corev1.LoadBalancerIPModeVIP) {
			lbIPs = append(lbIPs, ing.IP)
		}
	}
	lbVIPs := parseIPs(lbIPs, "loadBalancer ingress IP", problem)
	var nodeAddrs []netip.Addr
	for _, a := range node.Addrs {
		if a = a.Unmap(); a.Is4() {
			nodeAddrs = append(nodeAddrs, a)
		}
	}

	extLocal := externallyAccessible(svc) && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	intLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > 0 && t <= maxAffinityTimeout {
				affinity = time.Duration(t) * time.Second
			} else {
				problem("sessionAffinityConfig.clientIP.timeoutSeconds %d out of range (1-%d); using %d", t, maxAffinityTimeout, int(DefaultAffinityTimeout.Seconds()))
			}
		}
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && extLocal {
		if p := svc.Spec.HealthCheckNodePort; p > 0 && p <= 65535 {
			d.HealthCheck = uint16(p)
		} else {
			problem("healthCheckNodePort %d out of range (1-65535): no health check served", p)
		}
	}

	// Sorted by name, so that which of two copies of an endpoint wins
	// does not depend on the informer's order.
	eps = slices.DeleteFunc(slices.Clone(eps), func(s *discoveryv1.EndpointSlice) bool { return s == nil })
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	localReady := map[netip.Addr]bool{}
	seen := map[FrontendKey]bool{}
	add := func(f Frontend) {
		if seen[f.Key] {
			return // the same address twice (an ExternalIP that is also a load balancer's)
		}
		seen[f.Key] = true
		d.Frontends = append(d.Frontends, f)
	}
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		portName := sp.Name
		if portName == "" {
			portName = fmt.Sprint(sp.Port)
		}
		proto, ok := protoOf(sp.Protocol)
		if !ok {
			problem("port %s: protocol %s not supported (TCP and UDP are); port skipped", portName, sp.Protocol)
			continue
		}
		if sp.Port <= 0 || sp.Port > 65535 {
			problem("port %s: port %d out of range (1-65535); port skipped", portName, sp.Port)
			continue
		}
		all := backends(sp.Name, proto, eps, node.Name, problem)
		var local []Backend
		for _, b := range all {
			if node.Name != "" && b.NodeName == node.Name {
				local = append(local, b)
				if b.State == Ready {
					localReady[b.Addr.Addr()] = true
				}
			}
		}
		base := Frontend{
			Namespace: svc.Namespace, Name: svc.Name, PortName: sp.Name,
			Affinity: affinity, HealthCheck: d.HealthCheck,
		}
		for _, ip := range clusterIPs {
			f := base
			f.Kind = ClusterIP
			f.Key = FrontendKey{Addr: netip.AddrPortFrom(ip, uint16(sp.Port)), Proto: proto}
			f.Backends = all
			if intLocal {
				f.Backends, f.IntLocal = local, true
			}
			add(f)
		}
		external := func(kind Kind, ap netip.AddrPort) {
			f := base
			f.Kind = kind
			f.Key = FrontendKey{Addr: ap, Proto: proto, Scope: ScopeExternal}
			f.Backends = all
			if extLocal {
				// Outside clients reach only this node's endpoints (and
				// keep their address); in-cluster clients and the node
				// itself see every endpoint, as kube-proxy's
				// short-circuit to the cluster chain does.
				f.Backends, f.ExtLocal = local, true
				in := base
				in.Kind = kind
				in.Key = FrontendKey{Addr: ap, Proto: proto, Scope: ScopeInternal}
				in.Backends = all
				add(f)
				add(in)
				return
			}
			add(f)
		}
		if sp.NodePort != 0 {
			if sp.NodePort < 0 || sp.NodePort > 65535 {
				problem("port %s: nodePort %d out of range (1-65535); NodePort skipped", portName, sp.NodePort)
			} else {
				for _, a := range nodeAddrs {
					external(NodePort, netip.AddrPortFrom(a, uint16(sp.NodePort)))
				}
			}
		}
		for _, ip := range externalIPs {
			external(ExternalIP, netip.AddrPortFrom(ip, uint16(sp.Port)))
		}
		for _, ip := range lbVIPs {
			external(LoadBalancer, netip.AddrPortFrom(ip, uint16(sp.Port)))
		}
	}
	slices.SortFunc(d.Frontends, func(a, b Frontend) int { return compareKeys(a.Key, b.Key) })
	d.LocalReady = len(localReady)
	return d, problems
}

// skip says why a Service is not proxied at all, "" when it is.
func skip(svc *corev1.Service) string {
	if _, ok := svc.Labels[ProxyNameLabel]; ok {
		return "labelled " + ProxyNameLabel + " (another proxy serves it)"
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return "type ExternalName"
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return "headless"
	}
	if svc.Spec.ClusterIP == "" {
		return "no clusterIP"
	}
	return ""
}

// externallyAccessible is kube-proxy's test of whether a Service takes
// traffic from outside (pkg/api/v1/service.ExternallyAccessible).
func externallyAccessible(svc *corev1.Service) bool {
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeNodePort:
		return true
	case corev1.ServiceTypeClusterIP, "":
		return len(svc.Spec.ExternalIPs) > 0
	}
	return false
}

func protoOf(p corev1.Protocol) (Proto, bool) {
	switch p {
	case corev1.ProtocolTCP, "": // the API defaults an empty protocol to TCP
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	}
	return 0, false
}

// parseIPs parses addresses, keeping the IPv4 ones; a malformed one is a
// problem, an IPv6 one is skipped quietly.
func parseIPs(ss []string, what string, problem func(string, ...any)) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			problem("%s %q is not an IP address; skipped", what, s)
			continue
		}
		if a = a.Unmap(); a.Is4() && !a.IsUnspecified() {
			out = append(out, a)
		}
	}
	return out
}

// stateOf reads an endpoint's conditions as kube-proxy does: ready nil
// means ready, serving nil means what ready says, terminating nil false.
func stateOf(c discoveryv1.EndpointConditions) BackendState {
	ready := c.Ready == nil || *c.Ready
	serving := ready
	if c.Serving != nil {
		serving = *c.Serving
	}
	terminating := c.Terminating != nil && *c.Terminating
	switch {
	case ready:
		return Ready
	case serving && terminating:
		return Serving
	case terminating:
		return Terminating
	}
	return NotReady
}

// stateRank orders states from the most usable, to pick between two
// copies of one endpoint.
func stateRank(s BackendState) int {
	switch s {
	case Ready:
		return 0
	case Serving:
		return 1
	case Terminating:
		return 2
	}
	return 3
}

// backends collects the endpoints of one ServicePort from the slices: the
// slice port of the same name and protocol (the EndpointSlice controller
// resolves a named targetPort per slice, so the number may differ between
// slices), IPv4 slices only, each address and port once (the local copy,
// then the most usable state, wins), sorted by address.
func backends(portName string, proto Proto, eps []*discoveryv1.EndpointSlice, nodeName string, problem func(string, ...any)) []Backend {
	byAddr := map[netip.AddrPort]int{}
	var out []Backend
	for _, s := range eps {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue // IPv6 and FQDN slices: not served (yet)
		}
		port := -1
		for _, p := range s.Ports {
			pname := ""
			if p.Name != nil {
				pname = *p.Name
			}
			pproto := corev1.ProtocolTCP // the API's default
			if p.Protocol != nil {
				pproto = *p.Protocol
			}
			if pp, ok := protoOf(pproto); pname != portName || !ok || pp != proto {
				continue
			}
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				n := int32(0)
				if p.Port != nil {
					n = *p.Port
				}
				problem("endpointslice %s: port %q number %d out of range (1-65535); its endpoints skipped", s.Name, pname, n)
				break
			}
			port = int(*p.Port)
			break
		}
		if port < 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || a.Zone() != "" || !a.Unmap().Is4() || a.Unmap().IsUnspecified() {
				problem("endpointslice %s: endpoint address %q is not an IPv4 address; skipped", s.Name, ep.Addresses[0])
				continue
			}
			b := Backend{Addr: netip.AddrPortFrom(a.Unmap(), uint16(port)), State: stateOf(ep.Conditions)}
			if ep.NodeName != nil {
				b.NodeName = *ep.NodeName
			}
			if ep.Zone != nil {
				b.Zone = *ep.Zone
			}
			if i, dup := byAddr[b.Addr]; dup {
				old := out[i]
				oldLocal, newLocal := nodeName != "" && old.NodeName == nodeName, nodeName != "" && b.NodeName == nodeName
				if newLocal && !oldLocal || newLocal == oldLocal && stateRank(b.State) < stateRank(old.State) {
					out[i] = b
				}
				continue
			}
			byAddr[b.Addr] = len(out)
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// compareKeys orders frontend keys: address and port, protocol, scope.
func compareKeys(a, b FrontendKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	return cmp.Compare(a.Scope, b.Scope)
}
