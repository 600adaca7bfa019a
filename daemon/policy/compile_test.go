package policy

import (
	nm "github.com/anet-dev/anet/internal/netpolmodel"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestIPBlockReadings: an ipBlock naming pod addresses matches those pods
// in the literal reading and nothing in the Cilium reading; an outside
// address inside the block is matched in both.
func TestIPBlockReadings(t *testing.T) {
	outside := netip.MustParseAddr("10.244.9.9") // in the /8, no pod, no node
	world := netip.MustParseAddr("203.0.113.7")
	for _, cilium := range []bool{false, true} {
		w := newWorld(t, Options{IPBlockExcludesCluster: cilium})
		w.Create("x", nm.GenPolicyLabels("egress-cidr", map[string]string{"pod": "a"}, nm.EgressRules(nm.To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{w.IP("y/b").String() + "/32"}}}))))
		r := nm.NewReachability(!cilium)
		if cilium {
			r.ExpectPeer(nm.Peer{}, nm.Peer{}, true)
			r.ExpectAllEgress("x/a", false)
		}
		r.Expect("x/a", "y/b", false)
		w.Validate(80, tcp, r)
		node := w.pods["x/a"].Spec.NodeName
		ep := w.applied[node]["x/a"]
		if !ep.AllowsEgress(Lookup(w.ipcache[node], outside), ProtoTCP, 80) {
			t.Errorf("cilium=%v: an outside address inside the block is denied", cilium)
		}
		if ep.AllowsEgress(Lookup(w.ipcache[node], world), ProtoTCP, 80) {
			t.Errorf("cilium=%v: an address outside the block is allowed", cilium)
		}
		if len(w.problems) != 0 {
			t.Errorf("problems: %v", w.problems)
		}
	}
}

// TestIPBlockNested: CIDRs of several policies nest; each address takes
// its most specific ipcache entry, so a rule for a block must allow the
// more specific entries inside it that no except covers, and none inside
// an except.
func TestIPBlockNested(t *testing.T) {
	w := newWorld(t, Options{})
	block := func(cidr string, except ...string) networkingv1.NetworkPolicyEgressRule {
		return nm.To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}})
	}
	// x/a: 172.16.0.0/12 except 172.16.1.0/24. Other policies name
	// 172.16.0.0/16 (inside), 172.16.1.128/25 (inside the except), 0.0.0.0/0.
	w.Create("x", nm.GenPolicyLabels("a", map[string]string{"pod": "a"}, nm.EgressRules(block("172.16.0.0/12", "172.16.1.0/24"))))
	w.Create("x", nm.GenPolicyLabels("b", map[string]string{"pod": "b"}, nm.EgressRules(block("172.16.0.0/16", "172.16.1.128/25"), block("0.0.0.0/0"))))
	node := w.pods["x/a"].Spec.NodeName
	ep := w.applied[node]["x/a"]
	for addr, want := range map[string]bool{
		"172.16.0.1": true, "172.16.2.1": true, "172.31.255.255": true,
		"172.16.1.1": false, "172.16.1.200": false, "172.32.0.1": false, "8.8.8.8": false,
	} {
		if got := ep.AllowsEgress(Lookup(w.ipcache[node], netip.MustParseAddr(addr)), ProtoTCP, 443); got != want {
			t.Errorf("x/a to %s: %v, want %v", addr, got, want)
		}
	}
	// x/b: 172.16/16 except 172.16.1.128/25, or anything.
	nb := w.pods["x/b"].Spec.NodeName
	epb := w.applied[nb]["x/b"]
	for _, addr := range []string{"172.16.1.200", "8.8.8.8", "172.16.0.1"} {
		if !epb.AllowsEgress(Lookup(w.ipcache[nb], netip.MustParseAddr(addr)), ProtoTCP, 443) {
			t.Errorf("x/b to %s denied", addr)
		}
	}
	// Every ipBlock prefix has a CIDR identity, the same after a recompile.
	res := w.last[node]
	for _, p := range []string{"172.16.0.0/12", "172.16.1.0/24", "172.16.0.0/16", "172.16.1.128/25", "0.0.0.0/0"} {
		id, ok := res.CIDRs[netip.MustParsePrefix(p)]
		if !ok || !identity.IsCIDR(id) {
			t.Errorf("%s: CIDR identity %#x, %v", p, id, ok)
		}
	}
	before := res.CIDRs
	w.Create("y", nm.GenPolicyLabels("c", map[string]string{"pod": "c"}, nm.EgressRules(block("192.0.2.0/24"))))
	for p, id := range before {
		if w.last[node].CIDRs[p] != id {
			t.Errorf("%s changed its CIDR identity", p)
		}
	}
}

// TestIPBlockMixedIdentity: two pods with the same labels (one identity),
// one inside an ipBlock and one outside: the identity cannot express it,
// so neither is matched through the block, and the policy is reported.
func TestIPBlockMixedIdentity(t *testing.T) {
	w := newWorld(t, Options{})
	twin := w.pods["y/b"].DeepCopy()
	twin.Name = "b2"
	twin.Status.PodIP = "10.244.3.99"
	twin.Status.PodIPs = []corev1.PodIP{{IP: "10.244.3.99"}}
	w.pods["y/b2"] = twin
	w.Create("x", nm.GenPolicyLabels("cidr", map[string]string{"pod": "a"}, nm.EgressRules(nm.To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: w.IP("y/b").String() + "/32"}}))))
	node := w.pods["x/a"].Spec.NodeName
	ep := w.applied[node]["x/a"]
	for _, p := range []string{"y/b", "y/b2"} {
		if ep.AllowsEgress(Lookup(w.ipcache[node], w.IP(p)), ProtoTCP, 80) {
			t.Errorf("x/a may reach %s", p)
		}
	}
	if len(w.problems) == 0 || !strings.Contains(w.problems[0].Why, "both inside and outside") || w.problems[0].Field != "spec.egress[0].to[0].ipBlock" || w.problems[0].Policy != "x/cidr" {
		t.Errorf("problems: %v", w.problems)
	}
	// A block holding both twins matches their identity.
	w.Update("x", nm.GenPolicyLabels("cidr", map[string]string{"pod": "a"}, nm.EgressRules(nm.To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16"}}))))
	ep = w.applied[node]["x/a"]
	for _, p := range []string{"y/b", "y/b2"} {
		if !ep.AllowsEgress(Lookup(w.ipcache[node], w.IP(p)), ProtoTCP, 80) {
			t.Errorf("x/a may not reach %s", p)
		}
	}
	if len(w.problems) != 0 {
		t.Errorf("problems: %v", w.problems)
	}
}

// TestNamedPortPerPeer: one egress rule naming a port means a different
// number on each peer; an ingress named port resolves on the pod itself.
func TestNamedPortPerPeer(t *testing.T) {
	w := newWorld(t, Options{})
	// y/b serves "web" on 8080, y/c on 9090.
	for pod, port := range map[string]int32{"y/b": 8080, "y/c": 9090} {
		p := w.pods[pod]
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "web", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: port}}})
	}
	w.Create("x", nm.GenPolicyLabels("egress-web", map[string]string{"pod": "a"}, nm.EgressRules(networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{nm.NamedPort("web", nil)}})))
	w.Create("y", nm.GenPolicy("ingress-web", metav1.LabelSelector{}, nm.IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{nm.NamedPort("web", &tcp)}})))
	for _, c := range []struct {
		to   string
		port uint16
		want bool
	}{{"y/b", 8080, true}, {"y/b", 9090, false}, {"y/c", 9090, true}, {"y/c", 8080, false}, {"y/a", 8080, false}, {"y/b", 80, false}} {
		if got := w.allowed("x/a", c.to, ProtoTCP, c.port); got != c.want {
			t.Errorf("x/a to %s:%d: %v, want %v", c.to, c.port, got, c.want)
		}
	}
	if w.allowed("x/a", "y/b", ProtoUDP, 8080) {
		t.Error("a TCP named port allowed UDP")
	}
}

// TestEndPort: a range is allowed port by port, its ends included.
func TestEndPort(t *testing.T) {
	w := newWorld(t, Options{})
	end := int32(32768)
	w.Create("x", nm.GenPolicyLabels("range", map[string]string{"pod": "a"}, nm.IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &intstr.IntOrString{IntVal: 32000}, EndPort: &end}}})))
	for port, want := range map[uint16]bool{31999: false, 32000: true, 32255: true, 32256: true, 32767: true, 32768: true, 32769: false} {
		if got := w.allowed("y/a", "x/a", ProtoUDP, port); got != want {
			t.Errorf("UDP %d: %v, want %v", port, got, want)
		}
		if w.allowed("y/a", "x/a", ProtoTCP, port) {
			t.Errorf("TCP %d allowed", port)
		}
	}
	ep := w.applied[w.pods["x/a"].Spec.NodeName]["x/a"]
	if want := []Rule{{0, ProtoUDP, 32000, 8}, {0, ProtoUDP, 32256, 7}, {0, ProtoUDP, 32768, 16}}; !slices.Equal(ep.Ingress, want) {
		t.Errorf("rules %v, want %v", ep.Ingress, want)
	}
}

// TestSCTPRules: SCTP is a protocol like the others.
func TestSCTPRules(t *testing.T) {
	w := newWorld(t, Options{})
	w.Create("x", nm.GenPolicyLabels("sctp", map[string]string{"pod": "a"}, nm.IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{nm.PortNum(80, &sctp)}})))
	if !w.allowed("y/a", "x/a", ProtoSCTP, 80) || w.allowed("y/a", "x/a", ProtoTCP, 80) || w.allowed("y/a", "x/a", ProtoSCTP, 81) {
		t.Error("SCTP rule mismatched")
	}
}

// TestProblems: what the API would refuse, or anet cannot express, is
// reported by field and never widens what is allowed.
func TestProblems(t *testing.T) {
	w := newWorld(t, Options{})
	bad := corev1.Protocol("ICMP")
	end := int32(10)
	w.Create("x", nm.GenPolicyLabels("bad", map[string]string{"pod": "a"},
		nm.IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &bad, Port: &intstr.IntOrString{IntVal: 80}}}}),
		nm.IngressRules(networkingv1.NetworkPolicyIngressRule{Ports: []networkingv1.NetworkPolicyPort{{Port: &intstr.IntOrString{IntVal: 80}, EndPort: &end}}}),
		nm.IngressRules(nm.From(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "not-a-cidr"}})),
		nm.IngressRules(nm.From(networkingv1.NetworkPolicyPeer{})),
		nm.IngressRules(nm.From(networkingv1.NetworkPolicyPeer{PodSelector: nm.In("pod", "Bogus", "a")})),
	))
	r := nm.NewReachability(true)
	r.ExpectAllIngress("x/a", false)
	w.Validate(80, tcp, r)
	w.Validate(80, udp, r)
	fields := map[string]bool{}
	for _, p := range w.problems {
		if p.Policy != "x/bad" {
			t.Errorf("problem names %q", p.Policy)
		}
		fields[p.Field] = true
	}
	for _, f := range []string{"spec.ingress[0].ports[0].protocol", "spec.ingress[1].ports[0].endPort", "spec.ingress[2].from[0].ipBlock.cidr", "spec.ingress[3].from[0]", "spec.ingress[4].from[0].podSelector"} {
		if !fields[f] {
			t.Errorf("no problem for %s (have %v)", f, w.problems)
		}
	}
}

// TestIPCacheContent: pods, nodes and CIDRs, with the reserved identities.
func TestIPCacheContent(t *testing.T) {
	w := newWorld(t, Options{})
	w.Create("x", nm.GenPolicyLabels("c", map[string]string{"pod": "a"}, nm.EgressRules(nm.To(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}))))
	res := w.last["n1"]
	if got := res.IPCache[netip.MustParsePrefix("192.168.0.1/32")]; got != identity.Host {
		t.Errorf("own node address: %d", got)
	}
	if got := res.IPCache[netip.MustParsePrefix("192.168.0.2/32")]; got != identity.RemoteNode {
		t.Errorf("other node address: %d", got)
	}
	ids := map[uint32]bool{}
	for _, p := range nm.Pods() {
		id := res.IPCache[netip.PrefixFrom(w.IP(p), 32)]
		if !identity.IsPod(id) || ids[id] {
			t.Errorf("%s: identity %d", p, id)
		}
		ids[id] = true
	}
	if len(res.IPCache) != 9+3+2 {
		t.Errorf("%d entries: %v", len(res.IPCache), res.IPCache)
	}
	if Lookup(res.IPCache, netip.MustParseAddr("198.51.100.1")) != identity.World {
		t.Error("an unknown address is not world")
	}
}

// TestDiff: adds and deletes are exactly the differences.
func TestDiff(t *testing.T) {
	old := EndpointPolicy{IngressEnforced: true, Ingress: []Rule{{1000, 6, 80, 16}, {1001, 6, 80, 16}}}
	new := EndpointPolicy{IngressEnforced: true, EgressEnforced: true, Ingress: []Rule{{1001, 6, 80, 16}, {1002, 17, 53, 16}}}
	c := Diff(old, new)
	if !slices.Equal(c.IngressAdd, []Rule{{1002, 17, 53, 16}}) || !slices.Equal(c.IngressDel, []Rule{{1000, 6, 80, 16}}) || len(c.EgressAdd)+len(c.EgressDel) != 0 || !c.EgressEnforced {
		t.Errorf("Diff = %+v", c)
	}
	if !Diff(new, new).Empty(new) || Diff(old, new).Empty(old) {
		t.Error("Empty wrong")
	}
	set, del := DiffIPCache(map[netip.Prefix]uint32{netip.MustParsePrefix("10.0.0.1/32"): 300, netip.MustParsePrefix("10.0.0.2/32"): 301},
		map[netip.Prefix]uint32{netip.MustParsePrefix("10.0.0.1/32"): 302, netip.MustParsePrefix("10.0.0.3/32"): 303})
	if len(set) != 2 || set[netip.MustParsePrefix("10.0.0.1/32")] != 302 || !slices.Equal(del, []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}) {
		t.Errorf("DiffIPCache = %v, %v", set, del)
	}
}

// TestMinimize: covered rules are dropped.
func TestMinimize(t *testing.T) {
	set := map[Rule]bool{{300, 6, 80, 16}: true, {300, 6, 0, 0}: true, {301, 6, 81, 16}: true, {0, 6, 80, 15}: true, {301, 6, 80, 16}: true, {302, 17, 53, 16}: true, {302, 0, 0, 0}: true}
	want := []Rule{{0, 6, 80, 15}, {300, 6, 0, 0}, {302, 0, 0, 0}}
	if got := minimize(set); !slices.Equal(got, want) {
		t.Errorf("minimize = %v, want %v", got, want)
	}
	if got := minimize(map[Rule]bool{{}: true, {300, 6, 80, 16}: true}); !slices.Equal(got, []Rule{{}}) {
		t.Errorf("minimize with allow-all = %v", got)
	}
}
