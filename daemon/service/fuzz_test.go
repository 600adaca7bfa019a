package service

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// FuzzBuild feeds the builder Services and EndpointSlices with random
// fields (types, addresses, ports, protocols, names, conditions, traffic
// policies): it must never panic, and what it returns must be servable:
// valid IPv4 frontends and backends, each once, sorted, states known,
// Local frontends with local backends only, every problem naming the
// Service.
func FuzzBuild(f *testing.F) {
	f.Add("ClusterIP", "10.96.0.10", "192.0.2.1", "192.0.2.2", "TCP", int32(80), int32(0), int32(0), "10.244.1.5", int32(8080), "http", "http", uint8(1), "IPv4", false, false, int32(0), "n1")
	f.Add("NodePort", "10.96.0.10", "", "", "UDP", int32(53), int32(30053), int32(0), "10.244.1.5", int32(53), "", "", uint8(0x3f), "IPv4", true, true, int32(10), "n2")
	f.Add("LoadBalancer", "10.96.0.10", "::1", "1.2.3.4", "SCTP", int32(70000), int32(-1), int32(32000), "fd00::1", int32(0), "a", "b", uint8(0x15), "IPv6", true, false, int32(-5), "")
	f.Add("ExternalName", "None", "x", "", "", int32(0), int32(0), int32(0), "", int32(-1), "", "", uint8(0), "FQDN", false, true, int32(99999), "n1")
	f.Fuzz(func(t *testing.T, svcType, clusterIP, extIP, lbIP, proto string, port, nodePort, hc int32, epAddr string, epPort int32,
		portName, slicePortName string, cond uint8, addrType string, etpLocal, itpLocal bool, affinity int32, epNode string) {
		s := svc("fuzz", typ(corev1.ServiceType(svcType)), clusterIPs(clusterIP, "10.96.0.11"))
		s.Spec.ExternalIPs = []string{extIP, "192.0.2.9"}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
		s.Spec.Ports = []corev1.ServicePort{
			{Name: portName, Protocol: corev1.Protocol(proto), Port: port, NodePort: nodePort},
			{Name: "other", Protocol: corev1.ProtocolUDP, Port: port ^ 1, NodePort: nodePort + 1},
		}
		if etpLocal {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = hc
		}
		if itpLocal {
			intLocal(s)
		}
		if affinity != 0 {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &affinity}}
		}
		tri := func(bits uint8) *bool {
			switch bits & 3 {
			case 1:
				return yes
			case 2:
				return no
			}
			return nil
		}
		pp := corev1.Protocol(proto)
		sl := slice("fuzz", "a", []discoveryv1.EndpointPort{
			{Name: &slicePortName, Protocol: &pp, Port: &epPort},
			eport("other", corev1.ProtocolUDP, epPort+1),
		},
			ep(epAddr, epNode, conds(tri(cond), tri(cond>>2), tri(cond>>4))),
			ep("10.244.9.9", "n1"),
			ep(epAddr, "n1"),
		)
		sl.AddressType = discoveryv1.AddressType(addrType)
		sl2 := slice("fuzz", "b", []discoveryv1.EndpointPort{{Name: &portName, Port: &epPort}}, ep(epAddr, epNode))
		d, problems := Build(s, []*discoveryv1.EndpointSlice{sl, sl2, nil}, thisNode)
		for _, p := range problems {
			if !strings.Contains(p.Error(), "service default/fuzz") {
				t.Fatalf("problem not naming the Service: %v", p)
			}
		}
		seen := map[FrontendKey]bool{}
		for i, fr := range d.Frontends {
			if !fr.Key.Addr.Addr().Is4() || fr.Key.Addr.Port() == 0 || (fr.Key.Proto != TCP && fr.Key.Proto != UDP) {
				t.Fatalf("unservable frontend %+v", fr.Key)
			}
			if seen[fr.Key] {
				t.Fatalf("frontend %+v twice", fr.Key)
			}
			seen[fr.Key] = true
			if i > 0 && compareKeys(d.Frontends[i-1].Key, fr.Key) >= 0 {
				t.Fatalf("frontends not sorted at %d", i)
			}
			if fr.Affinity < 0 {
				t.Fatalf("negative affinity %v", fr.Affinity)
			}
			for j, b := range fr.Backends {
				if !b.Addr.Addr().Is4() || b.Addr.Port() == 0 || b.State < Ready || b.State > NotReady {
					t.Fatalf("unservable backend %+v", b)
				}
				if j > 0 && fr.Backends[j-1].Addr.Compare(b.Addr) >= 0 {
					t.Fatalf("backends not sorted or repeated: %v", fr.Backends)
				}
				if (fr.ExtLocal || fr.IntLocal) && b.NodeName != thisNode.Name {
					t.Fatalf("a Local frontend with a remote backend %+v", b)
				}
			}
			order, active := Order(fr)
			if len(order) != len(fr.Backends) || active < 0 || active > len(order) {
				t.Fatalf("order %d of %d, active %d", len(order), len(fr.Backends), active)
			}
		}
		if d.Skip != "" && len(d.Frontends) > 0 {
			t.Fatal("a skipped Service with frontends")
		}
	})
}
