package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// FuzzCompile feeds Compile policies with random selectors, operators,
// CIDRs, excepts, protocols, ports, endPorts, named ports and policy types
// over pods with random labels and addresses: it must never panic, and
// its result must be well formed (endpoint rules minimal and sorted, port
// blocks aligned, identities known or reserved, every problem naming a
// policy).
func FuzzCompile(f *testing.F) {
	f.Add("pod", "a", "In", "10.0.0.0/8", "10.1.0.0/16", "TCP", int32(80), int32(0), "serve-80-tcp", "Ingress", uint8(0), "10.244.1.5", "a")
	f.Add("", "", "Exists", "::/0", "::1/128", "SCTP", int32(1), int32(65535), "", "Egress", uint8(0xff), "fd00::1", "b")
	f.Add("k", "v", "Bogus", "garbage", "10.0.0.0/33", "ICMP", int32(-1), int32(70000), "x", "Weird", uint8(0x5a), "nope", "")
	f.Fuzz(func(t *testing.T, key, val, op, cidr, except, proto string, port, endPort int32, name, ptype string, flags uint8, podIP, podLabel string) {
		pr := corev1.Protocol(proto)
		selector := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOperator(op), Values: []string{val}}}}
		np := networkingv1.NetworkPolicyPort{}
		if flags&1 != 0 {
			np.Protocol = &pr
		}
		if flags&2 != 0 {
			p := intstr.FromInt32(port)
			np.Port = &p
		} else if flags&4 != 0 {
			p := intstr.FromString(name)
			np.Port = &p
		}
		if flags&8 != 0 {
			np.EndPort = &endPort
		}
		peers := []networkingv1.NetworkPolicyPeer{{PodSelector: selector}, {NamespaceSelector: selector, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{key: val}}}}
		if flags&16 != 0 {
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: []string{except}}})
		}
		if flags&32 != 0 {
			peers = append(peers, networkingv1.NetworkPolicyPeer{})
		}
		pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "x"}}
		pol.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"pod": podLabel}}
		if flags&64 != 0 {
			pol.Spec.PodSelector = *selector
		}
		pol.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: []networkingv1.NetworkPolicyPort{np}}}
		pol.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: []networkingv1.NetworkPolicyPort{np}}, {}}
		if flags&128 != 0 {
			pol.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyType(ptype)}
		}
		var pods []*corev1.Pod
		for i, l := range []string{podLabel, "a", val} {
			pods = append(pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("p", i), Namespace: []string{"x", "y", "x"}[i], Labels: map[string]string{"pod": l, key: val}},
				Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
					{Name: name, ContainerPort: port, Protocol: pr}, {Name: "serve-80-tcp", ContainerPort: 80}}}}},
				Status: corev1.PodStatus{PodIP: []string{podIP, "10.1.2.3", podIP}[i], PodIPs: []corev1.PodIP{{IP: cidr}}},
			})
		}
		alloc := identity.NewLocal()
		in := Input{
			Policies:   []*networkingv1.NetworkPolicy{pol, nil, pol},
			Pods:       append(pods, nil),
			Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{key: val}}}, nil},
			Nodes:      []Node{{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("10.1.2.3"), {}}}, {Name: "n2", Addrs: []netip.Addr{netip.MustParseAddr("10.1.2.4")}}},
			LocalNode:  "n1",
			Identity:   func(k identity.Key) (uint32, bool) { id, err := alloc.Allocate(k); return id, err == nil },
		}
		c := NewCompiler(Options{IPBlockExcludesCluster: flags&0x20 != 0 && flags&0x40 != 0})
		for range 2 {
			res := c.Compile(in)
			checkResult(t, res)
		}
	})
}

func checkResult(t *testing.T, res Result) {
	t.Helper()
	known := map[uint32]bool{identity.None: true}
	for _, id := range res.IPCache {
		known[id] = true
		if id != identity.Host && id != identity.RemoteNode && !identity.IsPod(id) && !identity.IsCIDR(id) {
			t.Fatalf("ipcache identity %#x", id)
		}
	}
	for key, ep := range res.Endpoints {
		for _, rules := range [][]Rule{ep.Ingress, ep.Egress} {
			set := map[Rule]bool{}
			for i, r := range rules {
				if i > 0 && compareRules(rules[i-1], r) >= 0 {
					t.Fatalf("%s: rules not sorted/unique: %v", key, rules)
				}
				if r.PortPrefixLen > 16 || maskPort(r.Port, r.PortPrefixLen) != r.Port || (r.Proto == ProtoAny && (r.Port != 0 || r.PortPrefixLen != 0)) {
					t.Fatalf("%s: malformed rule %v", key, r)
				}
				if !known[r.Identity] && !identity.IsPod(r.Identity) {
					t.Fatalf("%s: rule for unknown identity %v", key, r)
				}
				set[r] = true
			}
			if m := minimize(set); len(m) != len(rules) {
				t.Fatalf("%s: rules not minimal", key)
			}
		}
		if (!ep.IngressEnforced && len(ep.Ingress) > 0) || (!ep.EgressEnforced && len(ep.Egress) > 0) {
			t.Fatalf("%s: rules for a direction not enforced", key)
		}
	}
	for _, p := range res.Problems {
		if p.Policy == "" || p.Field == "" || p.Why == "" {
			t.Fatalf("incomplete problem %+v", p)
		}
	}
}
