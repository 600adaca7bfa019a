package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/identity"
)

// failingDatapath refuses to write one endpoint's policy.
type failingDatapath struct {
	*memDatapath
	ifindex uint32
}

func (d failingDatapath) SetEndpointPolicy(ifindex uint32, ie, ee bool, in, eg []Rule) error {
	if ifindex == d.ifindex {
		return errors.New("policy map full")
	}
	return d.memDatapath.SetEndpointPolicy(ifindex, ie, ee, in, eg)
}

// snapshotWorld is node a of a small cluster: in namespace ns, srv
// (container port "http" 8080), two clients cl and cl2 (app=cl), a pod
// "other" that CNI has not registered and a pod "broken" whose policy
// write fails; on node b, far (app=cl, so cl's identity); in namespace
// peer (team=blue), o (app=cl: another identity). Policies: ns/allow-cl
// lets app=cl of ns and of team=blue namespaces into srv on the named
// port, TCP 9000-9010 and UDP 53; ns/egress-cidr lets srv reach
// 192.168.0.0/16 except 192.168.1.0/24 on TCP 443; ns/deny isolates app=cl
// for ingress with no rule.
func snapshotWorld() (*fakeSource, map[string]uint32, *memDatapath) {
	nsLabels := map[string]string{identity.NamespaceNameLabel: "ns"}
	peerLabels := map[string]string{identity.NamespaceNameLabel: "peer", "team": "blue"}
	srv := rpod("srv", "a", "10.244.1.5", map[string]string{"app": "srv"})
	srv.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	o := rpod("o", "b", "10.244.2.9", map[string]string{"app": "cl"})
	o.Namespace = "peer"
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	http, p9000, p53, p443 := intstr.FromString("http"), intstr.FromInt32(9000), intstr.FromInt32(53), intstr.FromInt32(443)
	end := int32(9010)
	cl := metav1.LabelSelector{MatchLabels: map[string]string{"app": "cl"}}
	src := &fakeSource{
		nss: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: nsLabels}},
			{ObjectMeta: metav1.ObjectMeta{Name: "peer", Labels: peerLabels}}},
		nodes: []*corev1.Node{rnode("a", "10.77.0.11", "10.244.1.0/24"), rnode("b", "10.77.0.12", "10.244.2.0/24")},
		pods: []*corev1.Pod{srv,
			rpod("cl", "a", "10.244.1.6", map[string]string{"app": "cl"}),
			rpod("cl2", "a", "10.244.1.7", map[string]string{"app": "cl"}),
			rpod("other", "a", "10.244.1.8", map[string]string{"app": "other"}),
			rpod("broken", "a", "10.244.1.10", map[string]string{"app": "other"}),
			rpod("far", "b", "10.244.2.5", map[string]string{"app": "cl"}), o},
		pols: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "allow-cl"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "srv"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{PodSelector: &cl},
						{PodSelector: &cl, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}, {Protocol: &tcp, Port: &p9000, EndPort: &end}, {Protocol: &udp, Port: &p53}},
				}},
			},
		}, {
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "egress-cidr"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "srv"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p443}},
				}},
			},
		}, {
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "deny"},
			Spec:       networkingv1.NetworkPolicySpec{PodSelector: cl, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		}},
	}
	eps := map[string]uint32{"ns/srv": 10, "ns/cl": 11, "ns/cl2": 12, "ns/broken": 13}
	return src, eps, &memDatapath{ipc: map[netip.Prefix]uint32{}, eps: map[uint32]EndpointPolicy{}}
}

// TestSnapshot: after a real run, EndpointPolicy and Identities answer
// what the run computed and wrote: isolation and the selecting policies
// per direction, named ports resolved, an endPort range joined back from
// its port blocks, equal rules of several identities grouped, an ipBlock
// as its CIDR identity, identities with their labels, endpoint counts per
// identity, an unwritten endpoint not programmed, a pod CNI has not
// registered without an ifindex; errors before the first run and for
// pods that are no local endpoint.
func TestSnapshot(t *testing.T) {
	src, eps, mem := snapshotWorld()
	alloc := identity.NewLocal()
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: failingDatapath{mem, 13}, Alloc: alloc,
		Endpoints: func() map[string]uint32 { return eps }})
	if _, err := r.EndpointPolicy("ns", "srv"); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("before the first run: %v, want ErrNotReady", err)
	}
	if _, err := r.Identities(); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("identities before the first run: %v, want ErrNotReady", err)
	}
	if r.Sync() {
		t.Error("a run with a failed write reported success")
	}
	id := func(ns string, nsl map[string]string, l map[string]string) uint32 {
		n, ok := alloc.Lookup(identity.KeyOf(ns, nsl, l))
		if !ok {
			t.Fatalf("no identity for %s %v", ns, l)
		}
		return n
	}
	nsl := src.nss[0].Labels
	peerl := src.nss[1].Labels
	srvID, clID, otherID := id("ns", nsl, map[string]string{"app": "srv"}), id("ns", nsl, map[string]string{"app": "cl"}), id("ns", nsl, map[string]string{"app": "other"})
	oID := id("peer", peerl, map[string]string{"app": "cl"})
	cidr, except := netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("192.168.1.0/24")
	cidrID, exceptID := r.Last().CIDRs[cidr], r.Last().CIDRs[except]
	if !identity.IsCIDR(cidrID) || !identity.IsCIDR(exceptID) {
		t.Fatalf("CIDR identities %d %d", cidrID, exceptID)
	}
	podIdent := func(n uint32, ns string, nsl, l map[string]string) api.Identity {
		return api.Identity{ID: n, Kind: api.IdentityPod, Namespace: ns, Labels: l, NamespaceLabels: nsl}
	}
	srvIdent := podIdent(srvID, "ns", nsl, map[string]string{"app": "srv"})
	clIdent := podIdent(clID, "ns", nsl, map[string]string{"app": "cl"})
	oIdent := podIdent(oID, "peer", peerl, map[string]string{"app": "cl"})
	cidrIdent := api.Identity{ID: cidrID, Kind: api.IdentityCIDR, CIDR: cidr}
	peers := []api.Identity{clIdent, oIdent}
	if clID > oID {
		peers = []api.Identity{oIdent, clIdent}
	}

	got, err := r.EndpointPolicy("ns", "srv")
	if err != nil {
		t.Fatal(err)
	}
	want := api.EndpointPolicy{
		Namespace: "ns", Name: "srv", Node: "a", Identity: srvIdent, Ifindex: 10, Programmed: true,
		Ingress: api.PolicyDirection{Isolated: true, Policies: []string{"ns/allow-cl"}, Rules: []api.PolicyRule{
			{Protocol: "TCP", Port: 8080, EndPort: 8080, Peers: peers},
			{Protocol: "TCP", Port: 9000, EndPort: 9010, Peers: peers},
			{Protocol: "UDP", Port: 53, EndPort: 53, Peers: peers},
		}},
		Egress: api.PolicyDirection{Isolated: true, Policies: []string{"ns/egress-cidr"}, Rules: []api.PolicyRule{
			{Protocol: "TCP", Port: 443, EndPort: 443, Peers: []api.Identity{cidrIdent}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("srv:\n got %+v\nwant %+v", got, want)
	}
	// The datapath holds it: the range really is several blocks there.
	if w := mem.eps[10]; len(w.Ingress) <= len(want.Ingress.Rules)*len(peers) {
		t.Errorf("the maps hold %d ingress rules: the range should be several blocks", len(w.Ingress))
	}

	got, err = r.EndpointPolicy("ns", "cl")
	if err != nil {
		t.Fatal(err)
	}
	want = api.EndpointPolicy{Namespace: "ns", Name: "cl", Node: "a", Identity: clIdent, Ifindex: 11, Programmed: true,
		Ingress: api.PolicyDirection{Isolated: true, Policies: []string{"ns/deny"}, Rules: []api.PolicyRule{}},
		Egress:  api.PolicyDirection{Policies: []string{}, Rules: []api.PolicyRule{}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cl:\n got %+v\nwant %+v", got, want)
	}
	if got, err := r.EndpointPolicy("ns", "other"); err != nil || got.Ifindex != 0 || got.Programmed || got.Identity.ID != otherID {
		t.Errorf("a pod CNI has not registered: %+v, %v", got, err)
	}
	if got, err := r.EndpointPolicy("ns", "broken"); err != nil || got.Ifindex != 13 || got.Programmed {
		t.Errorf("an endpoint whose write failed: %+v, %v", got, err)
	}
	for _, p := range [][2]string{{"ns", "nope"}, {"ns", "far"}, {"peer", "o"}} {
		if _, err := r.EndpointPolicy(p[0], p[1]); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("%s/%s (no local endpoint): %v, want ErrNotFound", p[0], p[1], err)
		}
	}

	ids, err := r.Identities()
	if err != nil {
		t.Fatal(err)
	}
	wantIDs := []api.IdentityEntry{
		{Identity: api.Identity{ID: identity.Host, Kind: api.IdentityReserved, Name: "host"}},
		{Identity: api.Identity{ID: identity.World, Kind: api.IdentityReserved, Name: "world"}},
		{Identity: api.Identity{ID: identity.RemoteNode, Kind: api.IdentityReserved, Name: "remote-node"}},
	}
	pods := map[uint32]api.IdentityEntry{
		srvID:   {Identity: srvIdent, Endpoints: 1},
		clID:    {Identity: clIdent, Endpoints: 2},                                                         // cl and cl2; far is on b
		otherID: {Identity: podIdent(otherID, "ns", nsl, map[string]string{"app": "other"}), Endpoints: 1}, // broken; other is not registered
		oID:     {Identity: oIdent},
	}
	for n := identity.MinPod; len(pods) > 0; n++ {
		if e, ok := pods[n]; ok {
			wantIDs = append(wantIDs, e)
			delete(pods, n)
		}
	}
	wantIDs = append(wantIDs, api.IdentityEntry{Identity: cidrIdent}, api.IdentityEntry{Identity: api.Identity{ID: exceptID, Kind: api.IdentityCIDR, CIDR: except}})
	if !reflect.DeepEqual(ids, wantIDs) {
		t.Errorf("identities:\n got %+v\nwant %+v", ids, wantIDs)
	}
}

// TestSnapshotConcurrent: the accessors may run while the reconciler
// runs (go test -race finds what is not lock-safe).
func TestSnapshotConcurrent(t *testing.T) {
	src, eps, mem := snapshotWorld()
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: mem, Alloc: identity.NewLocal(),
		Endpoints: func() map[string]uint32 { return eps }})
	r.Sync()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.EndpointPolicy("ns", "srv"); err != nil {
				t.Error(err)
				return
			}
			if _, err := r.Identities(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 20 {
		// Labels change: identities come and go between runs.
		src.pods[1].Labels = map[string]string{"app": "cl", "gen": fmt.Sprint(i)}
		r.Sync()
	}
	close(stop)
	wg.Wait()
}
