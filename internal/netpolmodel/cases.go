package netpolmodel

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cases of upstream's test/e2e/network/netpol/network_policy.go
// (Kubernetes v1.35.4), in its order, each named as upstream names it:
// the policies it creates and the reachability matrices it expects. The
// SCTP-only contexts are left out (the SCTP protocol cases of the TCP
// context, which check that SCTP rules do not open TCP, are in).

// nsLabel is the label the API server puts on every namespace.
const nsLabel = corev1.LabelMetadataName

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

// Policy builders, as upstream's policies.go.

// Sel is a selector of matchLabels l.
func Sel(l map[string]string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: l} }

// In is a selector of one matchExpression.
func In(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

// PortNum is a numbered port.
func PortNum(p int32, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{IntVal: p}, Protocol: proto}
}

// NamedPort is a named port.
func NamedPort(n string, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{Type: intstr.String, StrVal: n}, Protocol: proto}
}

// From is an ingress rule from peers.
func From(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers}
}

// To is an egress rule to peers.
func To(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers}
}

// Case is one case of upstream's network_policy.go, named as upstream
// names it.
type Case struct {
	Name string
	// IPBlock: the case has ipBlock peers holding pod addresses, which
	// anet's other reading of ipBlock (outside the cluster only) judges
	// differently.
	IPBlock bool
	Run     func(c Cluster)
}

var Cases = []Case{
	{Name: "should support a 'default-deny-ingress' policy", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-ingress", metav1.LabelSelector{}, IngressRules()))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should support a 'default-deny-all' policy", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-all", metav1.LabelSelector{}, IngressRules(), EgressRules()))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("x-a-allows-x-b", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{"pod": "b"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("x/b", "x/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy to allow ingress traffic for a target", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-all", metav1.LabelSelector{}, IngressRules()))
		c.Create("x", GenPolicyLabels("allow-all-to-a", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}, NamespaceSelector: &metav1.LabelSelector{}}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", true)
		r.ExpectAllIngress("x/b", false)
		r.ExpectAllIngress("x/c", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy to allow ingress traffic from pods in all namespaces", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-from-another-ns", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{})}))))
		c.Validate(80, tcp, NewReachability(true))
	}},
	{Name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on PodSelector with MatchExpressions", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("x-a-allows-x-b", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: In("pod", metav1.LabelSelectorOpIn, "b")}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("x/b", "x/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on NamespaceSelector with MatchExpressions", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-match-selector", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{NamespaceSelector: In(nsLabel, metav1.LabelSelectorOpIn, "y")}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on PodSelector or NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-match-selector", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: In(nsLabel, metav1.LabelSelectorOpNotIn, "x")},
			networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{"pod": "b"})}))))
		r := NewReachability(true)
		r.Expect("x/a", "x/a", false)
		r.Expect("x/c", "x/a", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on PodSelector and NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-podselector-and-nsselector", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: In(nsLabel, metav1.LabelSelectorOpNotIn, "x"), PodSelector: Sel(map[string]string{"pod": "b"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("y/b", "x/a", true)
		r.Expect("z/b", "x/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-z-pod-b-c", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: In(nsLabel, metav1.LabelSelectorOpNotIn, "x"), PodSelector: In("pod", metav1.LabelSelectorOpIn, "b", "c")}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.Expect("y/a", "x/a", false)
		r.Expect("z/a", "x/a", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on any PodSelectors", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-x-pod-b-c", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{"pod": "b"})},
			networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{"pod": "c"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("x/b", "x/a", true)
		r.Expect("x/c", "x/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-pod-a-via-namespace-pod-selector", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"}), PodSelector: Sel(map[string]string{"pod": "a"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("y/a", "x/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on Ports", Run: func(c Cluster) {
		rule := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{PortNum(81, &tcp)}
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, IngressRules(rule)))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "y"}, Peer{"x", "a"}, true)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should enforce multiple, stacked policies with overlapping podSelectors", Run: func(c Cluster) {
		rule := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{PortNum(81, &tcp)}
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, IngressRules(rule)))
		allow := NewReachability(true)
		allow.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		allow.ExpectPeer(Peer{NS: "y"}, Peer{"x", "a"}, true)
		allow.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(81, tcp, allow)
		deny := NewReachability(true)
		deny.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, deny)
		rule80 := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule80.Ports = []networkingv1.NetworkPolicyPort{PortNum(80, &tcp)}
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector-80", map[string]string{"pod": "a"}, IngressRules(rule80)))
		c.Validate(80, tcp, allow)
	}},
	{Name: "should support allow-all policy", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-all", map[string]string{}, IngressRules(networkingv1.NetworkPolicyIngressRule{})))
		c.Validate(80, tcp, NewReachability(true))
		c.Validate(81, tcp, NewReachability(true))
	}},
	{Name: "should allow ingress access on one named port", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-all", map[string]string{}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{NamedPort("serve-81-tcp", nil)}})))
		c.Validate(81, tcp, NewReachability(true))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should allow ingress access from namespace on one named port", Run: func(c Cluster) {
		rule := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{NamedPort("serve-80-tcp", &tcp)}
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector-80", map[string]string{"pod": "a"}, IngressRules(rule)))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(80, tcp, r)
		fail := NewReachability(true)
		fail.ExpectAllIngress("x/a", false)
		c.Validate(81, tcp, fail)
	}},
	{Name: "should allow egress access on one named port", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-egress", map[string]string{}, EgressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{NamedPort("serve-80-tcp", nil)}})))
		c.Validate(80, tcp, NewReachability(true))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should enforce updated policy", Run: func(c Cluster) {
		p := GenPolicyLabels("allow-all-mutate-to-deny-all", map[string]string{}, IngressRules(networkingv1.NetworkPolicyIngressRule{}))
		c.Create("x", p)
		c.Validate(81, tcp, NewReachability(true))
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		c.Update("x", p)
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should allow ingress access from updated namespace", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{"ns2": "updated"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, r)
		c.AddNamespaceLabel("y", "ns2", "updated")
		r2 := NewReachability(true)
		r2.ExpectAllIngress("x/a", false)
		r2.ExpectPeer(Peer{NS: "y"}, Peer{}, true)
		c.Validate(80, tcp, r2)
	}},
	{Name: "should allow ingress access from updated pod", Run: func(c Cluster) {
		labels := map[string]string{"pod": "b", "pod2": "updated"}
		c.Create("x", GenPolicyLabels("allow-client-a-via-pod-selector", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: Sel(labels)}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, r)
		c.SetPodLabels("x/b", labels)
		r2 := NewReachability(true)
		r2.ExpectAllIngress("x/a", false)
		r2.Expect("x/b", "x/a", true)
		c.Validate(80, tcp, r2)
	}},
	{Name: "should deny ingress from pods on other namespaces", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-empty-policy", metav1.LabelSelector{}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{})}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "y"}, Peer{NS: "x"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{NS: "x"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should deny ingress access to updated pod", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-ingress-via-label-selector", *Sel(map[string]string{"target": "isolated"}), IngressRules()))
		c.Validate(80, tcp, NewReachability(true))
		c.SetPodLabels("x/a", map[string]string{"pod": "a", "target": "isolated"})
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should deny egress from pods based on PodSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-egress-pod-a", *Sel(map[string]string{"pod": "a"}), EgressRules()))
		r := NewReachability(true)
		r.ExpectAllEgress("x/a", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should deny egress from all pods in a namespace", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-egress-ns-x", metav1.LabelSelector{}, EgressRules()))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should work with Ingress, Egress specified together", Run: func(c Cluster) {
		p := GenPolicyLabels("allow-client-a-via-pod-selector", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{PodSelector: Sel(map[string]string{"pod": "b"})})))
		p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}}}
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress, networkingv1.PolicyTypeIngress}
		c.Create("x", p)
		r80 := NewReachability(true)
		r80.ExpectAllIngress("x/a", false)
		r80.Expect("x/b", "x/a", true)
		c.Validate(80, tcp, r80)
		r81 := NewReachability(true)
		r81.ExpectAllIngress("x/a", false)
		r81.ExpectAllEgress("x/a", false)
		r81.Expect("x/b", "x/a", true)
		c.Validate(81, tcp, r81)
	}},
	{Name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-to-ns-y-pod-a", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"}), PodSelector: Sel(map[string]string{"pod": "a"})}))))
		ing := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "x"}), PodSelector: Sel(map[string]string{"pod": "a"})})
		c.Create("y", GenPolicyLabels("allow-from-xa-on-ya-match-selector", map[string]string{"pod": "a"}, IngressRules(ing)))
		c.Create("y", GenPolicyLabels("allow-from-xa-on-yb-match-selector", map[string]string{"pod": "b"}, IngressRules(ing)))
		r := NewReachability(true)
		r.ExpectPeer(Peer{"x", "a"}, Peer{}, false)
		r.ExpectPeer(Peer{}, Peer{"y", "a"}, false)
		r.ExpectPeer(Peer{"x", "a"}, Peer{"y", "a"}, true)
		r.ExpectPeer(Peer{}, Peer{"y", "b"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-to-ns-y-pod-a", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"}), PodSelector: Sel(map[string]string{"pod": "a"})}))))
		r := NewReachability(true)
		r.ExpectAllEgress("x/a", false)
		r.Expect("x/a", "y/a", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ingress-by-proto", map[string]string{"pod": "a"}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}})))
		c.Validate(80, tcp, NewReachability(true))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{"x", "a"}, false)
		c.Validate(80, udp, r)
	}},
	{Name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ingress-port-80", map[string]string{}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}})))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(81, tcp, r)
		c.Create("x", GenPolicyLabels("allow-ingress", map[string]string{}, IngressRules(networkingv1.NetworkPolicyIngressRule{})))
		c.Validate(81, tcp, NewReachability(true))
	}},
	{Name: "should enforce multiple egress policies with egress allow-all policy taking precedence", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-egress-port-80", map[string]string{}, EgressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}})))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
		c.Validate(81, tcp, r)
		c.Create("x", GenPolicyLabels("allow-egress", map[string]string{}, EgressRules(networkingv1.NetworkPolicyEgressRule{})))
		c.Validate(81, tcp, NewReachability(true))
	}},
	{Name: "should stop enforcing policies after they are deleted", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-all", metav1.LabelSelector{}, IngressRules(), EgressRules()))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(80, tcp, r)
		c.DeleteAllPolicies()
		c.Validate(80, tcp, NewReachability(true))
	}},
	{Name: "should allow egress access to server in CIDR block", IPBlock: true, Run: func(c Cluster) {
		cidr := fmt.Sprintf("%s/32", c.IP("y/b"))
		c.Create("x", GenPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}))))
		r := NewReachability(true)
		r.ExpectAllEgress("x/a", false)
		r.Expect("x/a", "y/b", true)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce except clause while egress access to server in CIDR block", IPBlock: true, Run: func(c Cluster) {
		large := LargeCIDR(c.IP("x/b"))
		c.Create("x", GenPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large, Except: []string{c.IP("x/b").String() + "/32"}}}))))
		r := NewReachability(true)
		r.Expect("x/a", "x/b", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", IPBlock: true, Run: func(c Cluster) {
		large := LargeCIDR(c.IP("x/b"))
		podB := c.IP("x/b").String() + "/32"
		c.Create("x", GenPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large, Except: []string{podB}}}))))
		r := NewReachability(true)
		r.Expect("x/a", "x/b", false)
		c.Validate(80, tcp, r)
		c.Update("x", GenPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: podB}}))))
		r2 := NewReachability(true)
		r2.ExpectAllEgress("x/a", false)
		r2.Expect("x/a", "x/b", true)
		c.Validate(80, tcp, r2)
	}},
	{Name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", Run: func(c Cluster) {
		target := map[string]string{"pod": "a"}
		c.Create("x", GenPolicy("allow-egress-for-target", *Sel(target), EgressRules(networkingv1.NetworkPolicyEgressRule{})))
		c.Validate(80, tcp, NewReachability(true))
		c.Create("x", GenPolicy("deny-ingress-via-label-selector", *Sel(target), IngressRules()))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-ingress", metav1.LabelSelector{}, IngressRules()))
		c.Create("x", GenPolicyLabels("allow-only-sctp-ingress-on-port-81", map[string]string{"pod": "a"}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{PortNum(81, &sctp)}})))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-only-sctp-ingress-on-port-80", map[string]string{"pod": "a"}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{PortNum(80, &sctp)}})))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should not allow access by TCP when a policy specifies only UDP", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-only-udp-ingress-on-port-81", map[string]string{"pod": "a"}, IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{PortNum(81, &udp)}})))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		c.Validate(81, tcp, r)
	}},
	{Name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-client-a-via-ns-selector-for-immutable-ns-label", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{corev1.LabelMetadataName: "y"})}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(80, tcp, r)
	}},
	{Name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-match-selector-for-immutable-ns-label", map[string]string{"pod": "a"}, EgressRules(To(networkingv1.NetworkPolicyPeer{NamespaceSelector: In(corev1.LabelMetadataName, metav1.LabelSelectorOpNotIn, "y")}))))
		r := NewReachability(true)
		r.ExpectPeer(Peer{"x", "a"}, Peer{NS: "y"}, false)
		c.Validate(80, tcp, r)
	}},
	// "NetworkPolicy between server and client using UDP"
	{Name: "UDP: should support a 'default-deny-ingress' policy", Run: func(c Cluster) {
		c.Create("x", GenPolicy("deny-all", metav1.LabelSelector{}, IngressRules()))
		r := NewReachability(true)
		r.ExpectPeer(Peer{}, Peer{NS: "x"}, false)
		c.Validate(80, udp, r)
	}},
	{Name: "UDP: should enforce policy based on Ports", Run: func(c Cluster) {
		rule := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{PortNum(81, &udp)}
		c.Create("x", GenPolicyLabels("allow-ingress-on-port-81-ns-x", map[string]string{"pod": "a"}, IngressRules(rule)))
		r := NewReachability(true)
		r.ExpectPeer(Peer{NS: "x"}, Peer{"x", "a"}, false)
		r.ExpectPeer(Peer{NS: "z"}, Peer{"x", "a"}, false)
		c.Validate(81, udp, r)
	}},
	{Name: "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-ns-y-pod-a-via-namespace-pod-selector", map[string]string{"pod": "a"}, IngressRules(From(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"}), PodSelector: Sel(map[string]string{"pod": "a"})}))))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.Expect("y/a", "x/a", true)
		c.Validate(80, udp, r)
	}},
}

// LargeCIDR is upstream's makeLargeCIDRForIP: the /4 holding ip.
func LargeCIDR(ip netip.Addr) string {
	p, _ := ip.Prefix(4)
	return p.String()
}

// SetFunc changes a policy being built.
type SetFunc func(*networkingv1.NetworkPolicy)

// GenPolicy is a policy named name on the pods sel selects.
func GenPolicy(name string, sel metav1.LabelSelector, fns ...SetFunc) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.PodSelector = sel
	for _, f := range fns {
		f(p)
	}
	return p
}

// GenPolicyLabels is GenPolicy on the pods with labels l.
func GenPolicyLabels(name string, l map[string]string, fns ...SetFunc) *networkingv1.NetworkPolicy {
	return GenPolicy(name, metav1.LabelSelector{MatchLabels: l}, fns...)
}

// IngressRules adds ingress rules (none: the pods are isolated for
// ingress) and the Ingress policy type.
func IngressRules(rules ...networkingv1.NetworkPolicyIngressRule) SetFunc {
	return func(p *networkingv1.NetworkPolicy) {
		if p.Spec.Ingress == nil {
			p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		}
		p.Spec.Ingress = append(p.Spec.Ingress, rules...)
	}
}

// EgressRules adds egress rules (none: the pods are isolated for egress)
// and the Egress policy type.
func EgressRules(rules ...networkingv1.NetworkPolicyEgressRule) SetFunc {
	return func(p *networkingv1.NetworkPolicy) {
		if p.Spec.Egress == nil {
			p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
		p.Spec.Egress = append(p.Spec.Egress, rules...)
	}
}

// Extra are anet's cases in the same model for what upstream's file does
// not cover: endPort ranges on TCP and UDP, and an ingress ipBlock with
// an except.
var Extra = []Case{
	{Name: "anet: should enforce an ingress port range (endPort), and its update", Run: func(c Cluster) {
		end := int32(81)
		rule := From(networkingv1.NetworkPolicyPeer{NamespaceSelector: Sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &intstr.IntOrString{IntVal: 80}, EndPort: &end}}
		c.Create("x", GenPolicyLabels("allow-y-80-81", map[string]string{"pod": "a"}, IngressRules(rule)))
		r := NewReachability(true)
		r.ExpectAllIngress("x/a", false)
		r.ExpectPeer(Peer{NS: "y"}, Peer{"x", "a"}, true)
		c.Validate(80, tcp, r)
		c.Validate(81, tcp, r)
		end = 1000
		rule.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &intstr.IntOrString{IntVal: 81}, EndPort: &end}}
		c.Update("x", GenPolicyLabels("allow-y-80-81", map[string]string{"pod": "a"}, IngressRules(rule)))
		c.Validate(81, tcp, r)
		deny := NewReachability(true)
		deny.ExpectAllIngress("x/a", false)
		c.Validate(80, tcp, deny)
	}},
	{Name: "anet: should enforce an egress port range (endPort) on UDP", Run: func(c Cluster) {
		end := int32(90)
		c.Create("x", GenPolicyLabels("egress-udp-81-90", map[string]string{"pod": "a"}, EgressRules(networkingv1.NetworkPolicyEgressRule{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &intstr.IntOrString{IntVal: 81}, EndPort: &end}}})))
		c.Validate(81, udp, NewReachability(true))
		r := NewReachability(true)
		r.ExpectAllEgress("x/a", false)
		c.Validate(80, udp, r)
		c.Validate(81, tcp, r)
	}},
	{Name: "anet: should enforce an ingress ipBlock with except", IPBlock: true, Run: func(c Cluster) {
		c.Create("x", GenPolicyLabels("allow-from-block", map[string]string{"pod": "a"}, IngressRules(From(networkingv1.NetworkPolicyPeer{
			IPBlock: &networkingv1.IPBlock{CIDR: LargeCIDR(c.IP("y/b")), Except: []string{c.IP("y/b").String() + "/32"}}}))))
		r := NewReachability(true)
		r.Expect("y/b", "x/a", false)
		c.Validate(80, tcp, r)
	}},
}

// All is Cases and Extra.
func All() []Case { return append(append([]Case{}, Cases...), Extra...) }
