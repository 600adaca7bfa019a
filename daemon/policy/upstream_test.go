package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cases of upstream's test/e2e/network/netpol/network_policy.go
// (Kubernetes v1.35.4), in its order, each named as upstream names it:
// the policies it creates and the reachability matrices it expects,
// evaluated on the compiled state. The SCTP-only contexts are left out
// (the SCTP protocol cases of the TCP context, which check that SCTP
// rules do not open TCP, are in).

const nsLabel = "kubernetes.io/metadata.name"

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

func sel(l map[string]string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: l} }
func in(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}
func portNum(p int32, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{IntVal: p}, Protocol: proto}
}
func portName(n string, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{Type: intstr.String, StrVal: n}, Protocol: proto}
}
func from(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers}
}
func to(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers}
}

type upstreamCase struct {
	name string
	run  func(w *world)
}

var upstreamCases = []upstreamCase{
	{"should support a 'default-deny-ingress' policy", func(w *world) {
		w.create("x", genPolicy("deny-ingress", metav1.LabelSelector{}, ingressRules()))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(80, tcp, r)
	}},
	{"should support a 'default-deny-all' policy", func(w *world) {
		w.create("x", genPolicy("deny-all", metav1.LabelSelector{}, ingressRules(), egressRules()))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		r.expectPeer(peer{ns: "x"}, peer{}, false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy to allow traffic from pods within server namespace based on PodSelector", func(w *world) {
		w.create("x", genPolicyLabels("x-a-allows-x-b", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{"pod": "b"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("x/b", "x/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy to allow ingress traffic for a target", func(w *world) {
		w.create("x", genPolicy("deny-all", metav1.LabelSelector{}, ingressRules()))
		w.create("x", genPolicyLabels("allow-all-to-a", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}, NamespaceSelector: &metav1.LabelSelector{}}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", true)
		r.expectAllIngress("x/b", false)
		r.expectAllIngress("x/c", false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy to allow ingress traffic from pods in all namespaces", func(w *world) {
		w.create("x", genPolicyLabels("allow-from-another-ns", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{})}))))
		w.validate(80, tcp, w.newReach(true))
	}},
	{"should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})}))))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on PodSelector with MatchExpressions", func(w *world) {
		w.create("x", genPolicyLabels("x-a-allows-x-b", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: in("pod", metav1.LabelSelectorOpIn, "b")}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("x/b", "x/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on NamespaceSelector with MatchExpressions", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-match-selector", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{NamespaceSelector: in(nsLabel, metav1.LabelSelectorOpIn, "y")}))))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on PodSelector or NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-match-selector", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: in(nsLabel, metav1.LabelSelectorOpNotIn, "x")},
			networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{"pod": "b"})}))))
		r := w.newReach(true)
		r.expect("x/a", "x/a", false)
		r.expect("x/c", "x/a", false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on PodSelector and NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-podselector-and-nsselector", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: in(nsLabel, metav1.LabelSelectorOpNotIn, "x"), PodSelector: sel(map[string]string{"pod": "b"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("y/b", "x/a", true)
		r.expect("z/b", "x/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on Multiple PodSelectors and NamespaceSelectors", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-z-pod-b-c", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: in(nsLabel, metav1.LabelSelectorOpNotIn, "x"), PodSelector: in("pod", metav1.LabelSelectorOpIn, "b", "c")}))))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expect("y/a", "x/a", false)
		r.expect("z/a", "x/a", false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on any PodSelectors", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-x-pod-b-c", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{"pod": "b"})},
			networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{"pod": "c"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("x/b", "x/a", true)
		r.expect("x/c", "x/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-pod-a-via-namespace-pod-selector", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"}), PodSelector: sel(map[string]string{"pod": "a"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("y/a", "x/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on Ports", func(w *world) {
		rule := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{portNum(81, &tcp)}
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, ingressRules(rule)))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "y"}, peer{"x", "a"}, true)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(81, tcp, r)
	}},
	{"should enforce multiple, stacked policies with overlapping podSelectors", func(w *world) {
		rule := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{portNum(81, &tcp)}
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, ingressRules(rule)))
		allow := w.newReach(true)
		allow.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		allow.expectPeer(peer{ns: "y"}, peer{"x", "a"}, true)
		allow.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(81, tcp, allow)
		deny := w.newReach(true)
		deny.expectAllIngress("x/a", false)
		w.validate(80, tcp, deny)
		rule80 := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})})
		rule80.Ports = []networkingv1.NetworkPolicyPort{portNum(80, &tcp)}
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector-80", map[string]string{"pod": "a"}, ingressRules(rule80)))
		w.validate(80, tcp, allow)
	}},
	{"should support allow-all policy", func(w *world) {
		w.create("x", genPolicyLabels("allow-all", map[string]string{}, ingressRules(networkingv1.NetworkPolicyIngressRule{})))
		w.validate(80, tcp, w.newReach(true))
		w.validate(81, tcp, w.newReach(true))
	}},
	{"should allow ingress access on one named port", func(w *world) {
		w.create("x", genPolicyLabels("allow-all", map[string]string{}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{portName("serve-81-tcp", nil)}})))
		w.validate(81, tcp, w.newReach(true))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(80, tcp, r)
	}},
	{"should allow ingress access from namespace on one named port", func(w *world) {
		rule := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{portName("serve-80-tcp", &tcp)}
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector-80", map[string]string{"pod": "a"}, ingressRules(rule)))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(80, tcp, r)
		fail := w.newReach(true)
		fail.expectAllIngress("x/a", false)
		w.validate(81, tcp, fail)
	}},
	{"should allow egress access on one named port", func(w *world) {
		w.create("x", genPolicyLabels("allow-egress", map[string]string{}, egressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{portName("serve-80-tcp", nil)}})))
		w.validate(80, tcp, w.newReach(true))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{}, false)
		w.validate(81, tcp, r)
	}},
	{"should enforce updated policy", func(w *world) {
		p := genPolicyLabels("allow-all-mutate-to-deny-all", map[string]string{}, ingressRules(networkingv1.NetworkPolicyIngressRule{}))
		w.create("x", p)
		w.validate(81, tcp, w.newReach(true))
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		w.update("x", p)
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(81, tcp, r)
	}},
	{"should allow ingress access from updated namespace", func(w *world) {
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{"ns2": "updated"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(80, tcp, r)
		w.addNamespaceLabel("y", "ns2", "updated")
		r2 := w.newReach(true)
		r2.expectAllIngress("x/a", false)
		r2.expectPeer(peer{ns: "y"}, peer{}, true)
		w.validate(80, tcp, r2)
	}},
	{"should allow ingress access from updated pod", func(w *world) {
		labels := map[string]string{"pod": "b", "pod2": "updated"}
		w.create("x", genPolicyLabels("allow-client-a-via-pod-selector", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: sel(labels)}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(80, tcp, r)
		w.setPodLabels("x/b", labels)
		r2 := w.newReach(true)
		r2.expectAllIngress("x/a", false)
		r2.expect("x/b", "x/a", true)
		w.validate(80, tcp, r2)
	}},
	{"should deny ingress from pods on other namespaces", func(w *world) {
		w.create("x", genPolicy("deny-empty-policy", metav1.LabelSelector{}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{})}))))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "y"}, peer{ns: "x"}, false)
		r.expectPeer(peer{ns: "z"}, peer{ns: "x"}, false)
		w.validate(80, tcp, r)
	}},
	{"should deny ingress access to updated pod", func(w *world) {
		w.create("x", genPolicy("deny-ingress-via-label-selector", *sel(map[string]string{"target": "isolated"}), ingressRules()))
		w.validate(80, tcp, w.newReach(true))
		w.setPodLabels("x/a", map[string]string{"pod": "a", "target": "isolated"})
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(80, tcp, r)
	}},
	{"should deny egress from pods based on PodSelector", func(w *world) {
		w.create("x", genPolicy("deny-egress-pod-a", *sel(map[string]string{"pod": "a"}), egressRules()))
		r := w.newReach(true)
		r.expectAllEgress("x/a", false)
		w.validate(80, tcp, r)
	}},
	{"should deny egress from all pods in a namespace", func(w *world) {
		w.create("x", genPolicy("deny-egress-ns-x", metav1.LabelSelector{}, egressRules()))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{}, false)
		w.validate(80, tcp, r)
	}},
	{"should work with Ingress, Egress specified together", func(w *world) {
		p := genPolicyLabels("allow-client-a-via-pod-selector", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{PodSelector: sel(map[string]string{"pod": "b"})})))
		p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}}}
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress, networkingv1.PolicyTypeIngress}
		w.create("x", p)
		r80 := w.newReach(true)
		r80.expectAllIngress("x/a", false)
		r80.expect("x/b", "x/a", true)
		w.validate(80, tcp, r80)
		r81 := w.newReach(true)
		r81.expectAllIngress("x/a", false)
		r81.expectAllEgress("x/a", false)
		r81.expect("x/b", "x/a", true)
		w.validate(81, tcp, r81)
	}},
	{"should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", func(w *world) {
		w.create("x", genPolicyLabels("allow-to-ns-y-pod-a", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"}), PodSelector: sel(map[string]string{"pod": "a"})}))))
		ing := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "x"}), PodSelector: sel(map[string]string{"pod": "a"})})
		w.create("y", genPolicyLabels("allow-from-xa-on-ya-match-selector", map[string]string{"pod": "a"}, ingressRules(ing)))
		w.create("y", genPolicyLabels("allow-from-xa-on-yb-match-selector", map[string]string{"pod": "b"}, ingressRules(ing)))
		r := w.newReach(true)
		r.expectPeer(peer{"x", "a"}, peer{}, false)
		r.expectPeer(peer{}, peer{"y", "a"}, false)
		r.expectPeer(peer{"x", "a"}, peer{"y", "a"}, true)
		r.expectPeer(peer{}, peer{"y", "b"}, false)
		w.validate(80, tcp, r)
	}},
	{"should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-to-ns-y-pod-a", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"}), PodSelector: sel(map[string]string{"pod": "a"})}))))
		r := w.newReach(true)
		r.expectAllEgress("x/a", false)
		r.expect("x/a", "y/a", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce ingress policy allowing any port traffic to a server on a specific protocol", func(w *world) {
		w.create("x", genPolicyLabels("allow-ingress-by-proto", map[string]string{"pod": "a"}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}})))
		w.validate(80, tcp, w.newReach(true))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{"x", "a"}, false)
		w.validate(80, udp, r)
	}},
	{"should enforce multiple ingress policies with ingress allow-all policy taking precedence", func(w *world) {
		w.create("x", genPolicyLabels("allow-ingress-port-80", map[string]string{}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}})))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(81, tcp, r)
		w.create("x", genPolicyLabels("allow-ingress", map[string]string{}, ingressRules(networkingv1.NetworkPolicyIngressRule{})))
		w.validate(81, tcp, w.newReach(true))
	}},
	{"should enforce multiple egress policies with egress allow-all policy taking precedence", func(w *world) {
		w.create("x", genPolicyLabels("allow-egress-port-80", map[string]string{}, egressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{Type: intstr.Int, IntVal: 80}}}})))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{}, false)
		w.validate(81, tcp, r)
		w.create("x", genPolicyLabels("allow-egress", map[string]string{}, egressRules(networkingv1.NetworkPolicyEgressRule{})))
		w.validate(81, tcp, w.newReach(true))
	}},
	{"should stop enforcing policies after they are deleted", func(w *world) {
		w.create("x", genPolicy("deny-all", metav1.LabelSelector{}, ingressRules(), egressRules()))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{}, false)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(80, tcp, r)
		w.deleteAllPolicies()
		w.validate(80, tcp, w.newReach(true))
	}},
	{"should allow egress access to server in CIDR block", func(w *world) {
		cidr := fmt.Sprintf("%s/32", w.ip("y/b"))
		w.create("x", genPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}))))
		r := w.newReach(true)
		r.expectAllEgress("x/a", false)
		r.expect("x/a", "y/b", true)
		w.validate(80, tcp, r)
	}},
	{"should enforce except clause while egress access to server in CIDR block", func(w *world) {
		large := largeCIDR(w.ip("x/b"))
		w.create("x", genPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large, Except: []string{w.ip("x/b").String() + "/32"}}}))))
		r := w.newReach(true)
		r.expect("x/a", "x/b", false)
		w.validate(80, tcp, r)
	}},
	{"should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", func(w *world) {
		large := largeCIDR(w.ip("x/b"))
		podB := w.ip("x/b").String() + "/32"
		w.create("x", genPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large, Except: []string{podB}}}))))
		r := w.newReach(true)
		r.expect("x/a", "x/b", false)
		w.validate(80, tcp, r)
		w.update("x", genPolicyLabels("allow-client-a-via-cidr-egress-rule", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: podB}}))))
		r2 := w.newReach(true)
		r2.expectAllEgress("x/a", false)
		r2.expect("x/a", "x/b", true)
		w.validate(80, tcp, r2)
	}},
	{"should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", func(w *world) {
		target := map[string]string{"pod": "a"}
		w.create("x", genPolicy("allow-egress-for-target", *sel(target), egressRules(networkingv1.NetworkPolicyEgressRule{})))
		w.validate(80, tcp, w.newReach(true))
		w.create("x", genPolicy("deny-ingress-via-label-selector", *sel(target), ingressRules()))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(80, tcp, r)
	}},
	{"should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", func(w *world) {
		w.create("x", genPolicy("deny-ingress", metav1.LabelSelector{}, ingressRules()))
		w.create("x", genPolicyLabels("allow-only-sctp-ingress-on-port-81", map[string]string{"pod": "a"}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{portNum(81, &sctp)}})))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(81, tcp, r)
	}},
	{"should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", func(w *world) {
		w.create("x", genPolicyLabels("allow-only-sctp-ingress-on-port-80", map[string]string{"pod": "a"}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{portNum(80, &sctp)}})))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(81, tcp, r)
	}},
	{"should not allow access by TCP when a policy specifies only UDP", func(w *world) {
		w.create("x", genPolicyLabels("allow-only-udp-ingress-on-port-81", map[string]string{"pod": "a"}, ingressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{portNum(81, &udp)}})))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		w.validate(81, tcp, r)
	}},
	{"should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", func(w *world) {
		w.create("x", genPolicyLabels("allow-client-a-via-ns-selector-for-immutable-ns-label", map[string]string{"pod": "a"}, ingressRules(from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{corev1.LabelMetadataName: "y"})}))))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(80, tcp, r)
	}},
	{"should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-match-selector-for-immutable-ns-label", map[string]string{"pod": "a"}, egressRules(to(networkingv1.NetworkPolicyPeer{NamespaceSelector: in(corev1.LabelMetadataName, metav1.LabelSelectorOpNotIn, "y")}))))
		r := w.newReach(true)
		r.expectPeer(peer{"x", "a"}, peer{ns: "y"}, false)
		w.validate(80, tcp, r)
	}},
	// "NetworkPolicy between server and client using UDP"
	{"UDP: should support a 'default-deny-ingress' policy", func(w *world) {
		w.create("x", genPolicy("deny-all", metav1.LabelSelector{}, ingressRules()))
		r := w.newReach(true)
		r.expectPeer(peer{}, peer{ns: "x"}, false)
		w.validate(80, udp, r)
	}},
	{"UDP: should enforce policy based on Ports", func(w *world) {
		rule := from(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"})})
		rule.Ports = []networkingv1.NetworkPolicyPort{portNum(81, &udp)}
		w.create("x", genPolicyLabels("allow-ingress-on-port-81-ns-x", map[string]string{"pod": "a"}, ingressRules(rule)))
		r := w.newReach(true)
		r.expectPeer(peer{ns: "x"}, peer{"x", "a"}, false)
		r.expectPeer(peer{ns: "z"}, peer{"x", "a"}, false)
		w.validate(81, udp, r)
	}},
	{"UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", func(w *world) {
		w.create("x", genPolicyLabels("allow-ns-y-pod-a-via-namespace-pod-selector", map[string]string{"pod": "a"}, ingressRules(from(
			networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(map[string]string{nsLabel: "y"}), PodSelector: sel(map[string]string{"pod": "a"})}))))
		r := w.newReach(true)
		r.expectAllIngress("x/a", false)
		r.expect("y/a", "x/a", true)
		w.validate(80, udp, r)
	}},
}

// largeCIDR is upstream's makeLargeCIDRForIP: the /4 holding ip.
func largeCIDR(ip netip.Addr) string {
	p, _ := ip.Prefix(4)
	return p.String()
}

// TestUpstreamNetpol runs every case in the literal reading of ipBlock
// (the default, which upstream expects), and every case that has no
// ipBlock in the Cilium reading too (which must not change them).
func TestUpstreamNetpol(t *testing.T) {
	for _, opts := range []Options{{}, {IPBlockExcludesCluster: true}} {
		for _, c := range upstreamCases {
			if opts.IPBlockExcludesCluster && strings.Contains(c.name, "CIDR") {
				continue // the Cilium reading of these is in TestIPBlockReadings
			}
			t.Run(fmt.Sprintf("cilium=%v/%s", opts.IPBlockExcludesCluster, c.name), func(t *testing.T) {
				w := newWorld(t, opts)
				c.run(w)
				for _, p := range w.problems {
					t.Errorf("unexpected problem: %v", p)
				}
			})
		}
	}
}
