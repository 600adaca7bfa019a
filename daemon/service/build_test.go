package service

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Helpers to write Services and EndpointSlices as the API holds them.

type svcOpt func(*corev1.Service)

func svc(name string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func ports(ps ...corev1.ServicePort) svcOpt {
	return func(s *corev1.Service) { s.Spec.Ports = ps }
}

func sport(name string, proto corev1.Protocol, port, nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, NodePort: nodePort}
}

func typ(t corev1.ServiceType) svcOpt { return func(s *corev1.Service) { s.Spec.Type = t } }

func clusterIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIPs = ips
		if len(ips) > 0 {
			s.Spec.ClusterIP = ips[0]
		} else {
			s.Spec.ClusterIP = ""
		}
	}
}

func extLocal(hc int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = hc
	}
}

func intLocal(s *corev1.Service) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}

type epOpt func(*discoveryv1.Endpoint)

func ep(addr, node string, opts ...epOpt) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	if node != "" {
		e.NodeName = &node
	}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func conds(ready, serving, terminating *bool) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

var yes, no = new(true), new(false)

func slice(svcName, name string, sp []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       sp,
		Endpoints:   eps,
	}
}

func eport(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

var thisNode = Node{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.77.1.1")}}

// show renders frontends compactly: "kind addr/proto[/int] [flags] -> backends".
func show(fs []Frontend) []string {
	var out []string
	for _, f := range fs {
		s := fmt.Sprintf("%s %s/%s", f.Kind, f.Key.Addr, f.Key.Proto)
		if f.Key.Scope == ScopeInternal {
			s += "/int"
		}
		if f.ExtLocal {
			s += " extlocal"
		}
		if f.IntLocal {
			s += " intlocal"
		}
		if f.Affinity != 0 {
			s += " affinity=" + f.Affinity.String()
		}
		var bs []string
		for _, b := range f.Backends {
			bs = append(bs, fmt.Sprintf("%s(%s)", b.Addr, b.State))
		}
		s += " -> " + strings.Join(bs, ",")
		out = append(out, s)
	}
	return out
}

func TestBuild(t *testing.T) {
	web := []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080)}
	two := slice("web", "web-a", web,
		ep("10.244.1.5", "n1"),
		ep("10.244.2.7", "n2"))
	cases := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     []string
		skip     string
		problems []string
		hc       uint16
		local    int
	}{
		{
			name:   "clusterIP",
			svc:    svc("web"),
			slices: []*discoveryv1.EndpointSlice{two},
			want:   []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)"},
		},
		{
			name: "endpoints over several slices, deduplicated, sorted",
			svc:  svc("web"),
			slices: []*discoveryv1.EndpointSlice{
				slice("web", "web-b", web, ep("10.244.2.7", "n2"), ep("10.244.0.3", "n3")),
				slice("web", "web-a", web, ep("10.244.1.5", "n1"), ep("10.244.2.7", "n2", conds(no, no, yes))),
			},
			want: []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.0.3:8080(ready),10.244.1.5:8080(ready),10.244.2.7:8080(ready)"},
		},
		{
			name: "named targetPort resolved per slice",
			svc:  svc("web"),
			slices: []*discoveryv1.EndpointSlice{
				slice("web", "web-a", web, ep("10.244.1.5", "n1")),
				slice("web", "web-b", []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 9090)}, ep("10.244.2.7", "n2")),
			},
			want: []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:9090(ready)"},
		},
		{
			name: "states as kube-proxy reads them",
			svc:  svc("web"),
			slices: []*discoveryv1.EndpointSlice{slice("web", "web-a", web,
				ep("10.244.1.1", "n1", conds(nil, nil, nil)), // nil ready: ready
				ep("10.244.1.2", "n1", conds(no, yes, yes)),  // serving, terminating
				ep("10.244.1.3", "n1", conds(no, no, yes)),   // terminating
				ep("10.244.1.4", "n1", conds(no, nil, nil)),  // not ready: serving nil means not serving
				ep("10.244.1.5", "n1", conds(yes, nil, yes)), // ready wins
				ep("10.244.1.6", "n1", conds(no, nil, yes)),  // terminating, serving nil (= ready = false)
				ep("10.244.1.7", "n1", conds(no, yes, nil)),  // serving but not terminating: not usable
				ep("fd00::7", "n1"),                          // not IPv4 in an IPv4 slice: a problem
				discoveryv1.Endpoint{Addresses: []string{}},  // no address: ignored
				ep("10.244.1.256", "n1"),                     // malformed: a problem
			)},
			want:     []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.1:8080(ready),10.244.1.2:8080(serving),10.244.1.3:8080(terminating),10.244.1.4:8080(not-ready),10.244.1.5:8080(ready),10.244.1.6:8080(terminating),10.244.1.7:8080(not-ready)"},
			problems: []string{`"fd00::7" is not an IPv4 address`, `"10.244.1.256" is not an IPv4 address`},
		},
		{
			name: "multi-port, UDP, ports matched by name and protocol",
			svc: svc("dns", ports(sport("dns", corev1.ProtocolUDP, 53, 0), sport("dns-tcp", corev1.ProtocolTCP, 53, 0),
				sport("metrics", corev1.ProtocolTCP, 9153, 0))),
			slices: []*discoveryv1.EndpointSlice{slice("dns", "dns-a", []discoveryv1.EndpointPort{
				eport("dns", corev1.ProtocolUDP, 5353), eport("dns-tcp", corev1.ProtocolTCP, 5353),
				eport("metrics", corev1.ProtocolUDP, 9153), // wrong protocol: no backend
			}, ep("10.244.1.5", "n1"))},
			want: []string{
				"ClusterIP 10.96.0.10:53/TCP -> 10.244.1.5:5353(ready)",
				"ClusterIP 10.96.0.10:53/UDP -> 10.244.1.5:5353(ready)",
				"ClusterIP 10.96.0.10:9153/TCP -> ",
			},
		},
		{
			name: "unnamed single port",
			svc:  svc("web", ports(sport("", corev1.ProtocolTCP, 80, 0))),
			slices: []*discoveryv1.EndpointSlice{slice("web", "web-a", []discoveryv1.EndpointPort{eport("", corev1.ProtocolTCP, 8080)},
				ep("10.244.1.5", "n1"))},
			want: []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready)"},
		},
		{
			name:   "no endpoints: a frontend without backends (refused)",
			svc:    svc("web"),
			want:   []string{"ClusterIP 10.96.0.10:80/TCP -> "},
			slices: nil,
		},
		{
			name:   "NodePort on every IPv4 node address",
			svc:    svc("web", typ(corev1.ServiceTypeNodePort), ports(sport("http", corev1.ProtocolTCP, 80, 30080))),
			slices: []*discoveryv1.EndpointSlice{two},
			want: []string{
				"NodePort 10.77.0.1:30080/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"NodePort 10.77.1.1:30080/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
			},
		},
		{
			name: "LoadBalancer with externalTrafficPolicy Local: two scopes, health check",
			svc: svc("web", typ(corev1.ServiceTypeLoadBalancer), ports(sport("http", corev1.ProtocolTCP, 80, 30080)), extLocal(32000),
				func(s *corev1.Service) {
					proxy := corev1.LoadBalancerIPModeProxy
					s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
						{IP: "192.0.2.10"}, {Hostname: "lb.example"}, {IP: "192.0.2.11", IPMode: &proxy}, {IP: "2001:db8::1"}}
				}),
			slices: []*discoveryv1.EndpointSlice{two},
			want: []string{
				"NodePort 10.77.0.1:30080/TCP extlocal -> 10.244.1.5:8080(ready)",
				"NodePort 10.77.0.1:30080/TCP/int -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"NodePort 10.77.1.1:30080/TCP extlocal -> 10.244.1.5:8080(ready)",
				"NodePort 10.77.1.1:30080/TCP/int -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"LoadBalancer 192.0.2.10:80/TCP extlocal -> 10.244.1.5:8080(ready)",
				"LoadBalancer 192.0.2.10:80/TCP/int -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
			},
			hc: 32000, local: 1,
		},
		{
			name: "externalIPs, one malformed, one also a load balancer's",
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2.20", "not-an-ip", "192.0.2.21"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.21"}}
			}),
			slices: []*discoveryv1.EndpointSlice{two},
			want: []string{
				"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ExternalIP 192.0.2.20:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ExternalIP 192.0.2.21:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
			},
			problems: []string{`externalIP "not-an-ip" is not an IP address`},
		},
		{
			name:   "externalTrafficPolicy Local on a plain ClusterIP Service changes nothing",
			svc:    svc("web", extLocal(0)),
			slices: []*discoveryv1.EndpointSlice{two},
			want:   []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)"},
		},
		{
			name:   "externalTrafficPolicy Local with an ExternalIP",
			svc:    svc("web", extLocal(0), func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.20"} }),
			slices: []*discoveryv1.EndpointSlice{two},
			want: []string{
				"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ExternalIP 192.0.2.20:80/TCP extlocal -> 10.244.1.5:8080(ready)",
				"ExternalIP 192.0.2.20:80/TCP/int -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
			},
		},
		{
			name:   "internalTrafficPolicy Local",
			svc:    svc("web", intLocal, typ(corev1.ServiceTypeNodePort), ports(sport("http", corev1.ProtocolTCP, 80, 30080))),
			slices: []*discoveryv1.EndpointSlice{two},
			want: []string{
				"NodePort 10.77.0.1:30080/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"NodePort 10.77.1.1:30080/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)",
				"ClusterIP 10.96.0.10:80/TCP intlocal -> 10.244.1.5:8080(ready)",
			},
		},
		{
			name: "session affinity, default and given timeouts",
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: new(int32(30))}}
			}),
			want: []string{"ClusterIP 10.96.0.10:80/TCP affinity=30s -> "},
		},
		{
			name: "session affinity without a config",
			svc:  svc("web", func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
			want: []string{"ClusterIP 10.96.0.10:80/TCP affinity=3h0m0s -> "},
		},
		{
			name: "session affinity timeout out of range",
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: new(int32(-4))}}
			}),
			want:     []string{"ClusterIP 10.96.0.10:80/TCP affinity=3h0m0s -> "},
			problems: []string{"timeoutSeconds -4 out of range"},
		},
		{
			name: "bad ports are problems of their own port only",
			svc: svc("web", typ(corev1.ServiceTypeNodePort), ports(
				sport("sctp", corev1.ProtocolSCTP, 80, 0),
				sport("big", corev1.ProtocolTCP, 70000, 0),
				sport("weird", "ICMP", 81, 0),
				sport("badnp", corev1.ProtocolTCP, 82, 99999),
				sport("http", corev1.ProtocolTCP, 80, 0))),
			slices: []*discoveryv1.EndpointSlice{slice("web", "web-a", []discoveryv1.EndpointPort{
				eport("http", corev1.ProtocolTCP, 0),
				eport("badnp", corev1.ProtocolTCP, 8082),
			}, ep("10.244.1.5", "n1"))},
			want: []string{
				"ClusterIP 10.96.0.10:80/TCP -> ",
				"ClusterIP 10.96.0.10:82/TCP -> 10.244.1.5:8082(ready)",
			},
			problems: []string{
				"service default/web: port sctp: protocol SCTP not supported",
				"port big: port 70000 out of range",
				"port weird: protocol ICMP not supported",
				"port badnp: nodePort 99999 out of range",
				`endpointslice web-a: port "http" number 0 out of range`,
			},
		},
		{
			name: "IPv6 slices and cluster IPs are skipped quietly (dual-stack)",
			svc:  svc("web", clusterIPs("fd00:96::10", "10.96.0.10")),
			slices: []*discoveryv1.EndpointSlice{two, func() *discoveryv1.EndpointSlice {
				s := slice("web", "web-v6", web, ep("fd00:244::5", "n1"))
				s.AddressType = discoveryv1.AddressTypeIPv6
				return s
			}()},
			want: []string{"ClusterIP 10.96.0.10:80/TCP -> 10.244.1.5:8080(ready),10.244.2.7:8080(ready)"},
		},
		{
			name:     "a malformed clusterIP",
			svc:      svc("web", clusterIPs("10.96.0.300")),
			problems: []string{`clusterIP "10.96.0.300" is not an IP address`},
		},
		{name: "headless", svc: svc("web", clusterIPs("None")), skip: "headless"},
		{name: "ExternalName", svc: svc("web", typ(corev1.ServiceTypeExternalName), clusterIPs()), skip: "type ExternalName"},
		{name: "no clusterIP", svc: svc("web", typ(corev1.ServiceTypeNodePort), clusterIPs()), skip: "no clusterIP"},
		{
			name: "another proxy's",
			svc:  svc("web", func(s *corev1.Service) { s.Labels = map[string]string{ProxyNameLabel: ""} }),
			skip: "labelled " + ProxyNameLabel,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, problems := Build(c.svc, c.slices, thisNode)
			if got := show(d.Frontends); !slices.Equal(got, c.want) {
				t.Errorf("frontends:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
			if !strings.HasPrefix(d.Skip, c.skip) || (c.skip == "") != (d.Skip == "") {
				t.Errorf("skip %q, want %q", d.Skip, c.skip)
			}
			if len(problems) != len(c.problems) {
				t.Errorf("problems %v, want %d like %q", problems, len(c.problems), c.problems)
			}
			for i, p := range problems {
				if i < len(c.problems) && !strings.Contains(p.Error(), c.problems[i]) {
					t.Errorf("problem %d: %v; want it to say %q", i, p, c.problems[i])
				}
				if !strings.Contains(p.Error(), "service default/"+c.svc.Name) {
					t.Errorf("problem %v does not name the Service", p)
				}
			}
			if d.HealthCheck != c.hc || c.hc != 0 && d.LocalReady != c.local {
				t.Errorf("health check %d with %d local, want %d with %d", d.HealthCheck, d.LocalReady, c.hc, c.local)
			}
		})
	}
}

// TestBuildLocal: which endpoint is local decides the Local policies and
// the health check's count (distinct ready addresses across ports), and a
// local copy of an endpoint wins over a remote one.
func TestBuildLocal(t *testing.T) {
	s := svc("web", typ(corev1.ServiceTypeLoadBalancer), extLocal(32000),
		ports(sport("http", corev1.ProtocolTCP, 80, 30080), sport("https", corev1.ProtocolTCP, 443, 30443)))
	sp := []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080), eport("https", corev1.ProtocolTCP, 8443)}
	d, problems := Build(s, []*discoveryv1.EndpointSlice{
		slice("web", "a", sp, ep("10.244.1.5", "n2"), ep("10.244.1.6", "n1", conds(no, yes, yes)), ep("10.244.1.7", "")),
		slice("web", "b", sp, ep("10.244.1.5", "n1"), ep("10.244.1.8", "n1")),
	}, Node{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.1")}})
	if len(problems) != 0 {
		t.Fatal(problems)
	}
	if d.LocalReady != 2 { // .5 (its local copy) and .8; .6 is terminating
		t.Errorf("local ready = %d, want 2", d.LocalReady)
	}
	for _, f := range d.Frontends {
		if f.Kind != NodePort || f.Key.Scope != ScopeExternal {
			continue
		}
		var got []string
		for _, b := range f.Backends {
			got = append(got, b.Addr.Addr().String()+"@"+b.NodeName)
		}
		if want := []string{"10.244.1.5@n1", "10.244.1.6@n1", "10.244.1.8@n1"}; !slices.Equal(got, want) {
			t.Errorf("%s: local backends %v, want %v", f.Key.Addr, got, want)
		}
	}
	// Without a node name nothing is local.
	d, _ = Build(s, []*discoveryv1.EndpointSlice{slice("web", "a", sp, ep("10.244.1.7", ""))}, Node{})
	if d.LocalReady != 0 {
		t.Errorf("local ready without a node name = %d", d.LocalReady)
	}
}

func TestOrderAndFlags(t *testing.T) {
	b := func(a string, s BackendState) Backend { return Backend{Addr: netip.MustParseAddrPort(a), State: s} }
	for _, c := range []struct {
		name   string
		in     []Backend
		want   []string
		active int
	}{
		{"ready first", []Backend{b("10.0.0.1:80", Terminating), b("10.0.0.2:80", Ready), b("10.0.0.3:80", Serving), b("10.0.0.4:80", Ready)},
			[]string{"10.0.0.2:80", "10.0.0.4:80", "10.0.0.1:80", "10.0.0.3:80"}, 2},
		{"serving when none is ready", []Backend{b("10.0.0.1:80", Terminating), b("10.0.0.3:80", Serving), b("10.0.0.4:80", NotReady)},
			[]string{"10.0.0.3:80", "10.0.0.1:80", "10.0.0.4:80"}, 1},
		{"none usable", []Backend{b("10.0.0.1:80", Terminating), b("10.0.0.4:80", NotReady)},
			[]string{"10.0.0.1:80", "10.0.0.4:80"}, 0},
		{"none", nil, nil, 0},
	} {
		order, active := Order(Frontend{Backends: c.in})
		var got []string
		for _, x := range order {
			got = append(got, x.Addr.String())
		}
		if !slices.Equal(got, c.want) || active != c.active {
			t.Errorf("%s: %v active %d, want %v active %d", c.name, got, active, c.want, c.active)
		}
	}
	for _, c := range []struct {
		f    Frontend
		want Flags
	}{
		{Frontend{Kind: ClusterIP}, 0},
		{Frontend{Kind: ClusterIP, IntLocal: true}, FlagIntLocal},
		{Frontend{Kind: NodePort}, FlagNodePort},
		{Frontend{Kind: NodePort, ExtLocal: true}, FlagNodePort | FlagExtLocal | FlagTwoScopes},
		{Frontend{Kind: NodePort, Key: FrontendKey{Scope: ScopeInternal}}, FlagNodePort},
		{Frontend{Kind: LoadBalancer, ExtLocal: true}, FlagExternal | FlagExtLocal | FlagTwoScopes},
		{Frontend{Kind: ExternalIP}, FlagExternal},
	} {
		if got := FlagsOf(c.f); got != c.want {
			t.Errorf("%s ext=%v int=%v scope=%d: flags %b, want %b", c.f.Kind, c.f.ExtLocal, c.f.IntLocal, c.f.Key.Scope, got, c.want)
		}
	}
	if mapState(NotReady) != Terminating || mapState(Serving) != Serving {
		t.Error("map states")
	}
}
