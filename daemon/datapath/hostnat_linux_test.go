package datapath

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/internal/testpkt"
)

// Beside a kube-proxy (ANET_HOST_NAT on), a packet between two pods of the
// node whose connection netfilter translated goes to the host stack, which
// undoes the NAT; any other goes straight to the pod as before. The
// connection here is translated for real: a DNAT rule like kube-proxy's,
// and a datagram sent through it, in a namespace of the test's own.
func TestHostNATRepliesGoThroughTheStack(t *testing.T) {
	needRoot(t)
	enterNewNetns(t)
	lo := mustLink(t, "lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "natv0"}, PeerName: "natv1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"natv0", "natv1"} {
		if err := netlink.LinkSetUp(mustLink(t, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, "natv0").Attrs().Index, Dst: &net.IPNet{IP: peerIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	// connect() routes the Service address before the DNAT applies.
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, "natv0").Attrs().Index, Dst: &net.IPNet{IP: net.IP{10, 96, 0, 0}, Mask: net.CIDRMask(16, 32)}}); err != nil {
		t.Fatal(err)
	}
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	// kube-proxy's rule, reduced: the Service address to the backend pod.
	if err := ipt.Append("nat", "OUTPUT", "-d", "10.96.0.50/32", "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", peerIP.String()+":5353"); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: podIP.AsSlice(), Port: 40053}, &net.UDPAddr{IP: net.IP{10, 96, 0, 50}, Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	for _, on := range []uint32{1, 0} {
		spec, err := bpf.LoadLxc()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		if err := spec.Variables["ANET_HOST_NAT"].Set(on); err != nil {
			t.Fatal(err)
		}
		var objs bpf.LxcObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			t.Fatalf("loading with ANET_HOST_NAT=%d: %v", on, err)
		}
		// The backend (peer) sends from its veth (ifindex peerIfindex)
		// to the client pod (podIP): the reply of the translated flow,
		// then a datagram of a flow netfilter never saw.
		for _, ep := range []bpf.LxcEndpointInfo{
			{Ip: be32(podIP), Ifindex: uint32(lo.Attrs().Index)},
			{Ip: be32(peerIP), Ifindex: loIfindex},
		} {
			key := ep.Ip
			if err := objs.AnetEpByIp.Put(key, ep); err != nil {
				t.Fatal(err)
			}
			if err := objs.AnetEpByIf.Put(ep.Ifindex, ep); err != nil {
				t.Fatal(err)
			}
		}
		reply := testpkt.UDP{DstMAC: hostMAC, SrcMAC: peerMAC, Src: peerIP, Dst: podIP, SrcPort: 5353, DstPort: 40053, Payload: []byte("a")}.Frame()
		other := testpkt.UDP{DstMAC: hostMAC, SrcMAC: peerMAC, Src: peerIP, Dst: podIP, SrcPort: 5353, DstPort: 40054, Payload: []byte("a")}.Frame()
		want := map[string]uint32{"translated": tcActOK, "untranslated": tcActRedirect}
		if on == 0 {
			want["translated"] = tcActRedirect // straight to the pod: what broke beside kube-proxy
		}
		for name, pkt := range map[string][]byte{"translated": reply, "untranslated": other} {
			ret, _ := run(t, objs.AnetFromContainer, pkt)
			if ret != want[name] {
				t.Errorf("ANET_HOST_NAT=%d, %s flow: verdict %d, want %d", on, name, ret, want[name])
			}
		}
		objs.Close()
	}
}
