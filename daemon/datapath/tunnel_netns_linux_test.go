package datapath

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// Real traffic through the overlay between two nodes, each a network
// namespace of the test's with its own programs and maps, joined by a veth
// underlay (192.168.50.0/24): a pod of node A sends 8 MB over TCP to a pod
// of node B and gets its SHA-256 back. No tunnel device, no route to the
// other node's pod CIDR, IP forwarding off on both nodes. B's pod admits
// only identity idA on its port, and B's ipcache knows nothing of A's pod:
// the connection passes on the VNI alone.

type tunNode struct {
	name string
	ns   ns.NetNS // nil: the test's own (node A)
	dp   *Datapath
	ul   string
}

func (n *tunNode) do(t *testing.T, f func() error) {
	t.Helper()
	if n.ns == nil {
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := n.ns.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// setUp loads node n's programs in tunnel mode, puts them on its underlay
// and wires its pod.
func (n *tunNode) setUp(t *testing.T, addr netip.Addr, peerCIDR netip.Prefix, peer netip.Addr, podName string, pod, gw netip.Addr, id uint32) *polPod {
	t.Helper()
	dp, err := LoadUnpinnedWith(Options{RoutingMode: RoutingTunnel})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	n.dp = dp
	var p *polPod
	n.do(t, func() error {
		ul, err := netlink.LinkByName(n.ul)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(ul, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		for _, l := range []string{"lo", n.ul} {
			if err := netlink.LinkSetUp(mustLink(t, l)); err != nil {
				return err
			}
		}
		if fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(fwd)) != "0" {
			t.Errorf("%s: IP forwarding is %q, the test wants it off", n.name, fwd)
		}
		for _, a := range []struct {
			prog *ebpf.Program
			at   ebpf.AttachType
		}{{dp.host.AnetFromNetdev, ebpf.AttachTCXIngress}, {dp.host.AnetToNetdev, ebpf.AttachTCXEgress}} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: ul.Attrs().Index, Program: a.prog, Attach: a.at})
			if err != nil {
				return err
			}
			t.Cleanup(func() { lk.Close() })
		}
		if err := dp.SetUnderlay(n.ul, addr); err != nil {
			return err
		}
		if err := dp.SetTunnelPeer(peerCIDR, peer); err != nil {
			return err
		}
		p = wirePod(t, dp, podName, pod, gw)
		// The pod's MTU leaves room for the 50 bytes of encapsulation
		// (the underlay's is 1500), as a node in tunnel mode must set it:
		// a segment sent without GSO (a retransmission) at 1500 would not
		// fit the underlay once encapsulated.
		if err := p.ns.Do(func(ns.NetNS) error { return netlink.LinkSetMTU(mustLink(t, "eth0"), 1450) }); err != nil {
			return err
		}
		return dp.UpsertEndpoint(Endpoint{IP: pod, Ifindex: p.ifindex, PodMAC: p.podMAC, HostMAC: p.hostMAC, Identity: id})
	})
	return p
}

func TestTunnelRealTraffic(t *testing.T) {
	needRoot(t)
	enterNewNetns(t) // node A
	bns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bns.Close(); _ = testutils.UnmountNS(bns) })
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ula"}, PeerName: "ulb"}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(mustLink(t, "ulb"), int(bns.Fd())); err != nil {
		t.Fatal(err)
	}
	nodeA := &tunNode{name: "A", ul: "ula"}
	nodeB := &tunNode{name: "B", ns: bns, ul: "ulb"}
	podB := netip.MustParseAddr("10.244.2.7")
	a := nodeA.setUp(t, hNode, remoteCIDR, hNode2, "tunveth0a", podIP, gwIP, idA)
	b := nodeB.setUp(t, hNode2, netip.MustParsePrefix("10.244.1.0/24"), hNode, "tunveth0b", podB, netip.MustParseAddr("10.244.2.1"), idB)
	if err := nodeB.dp.SetEndpointPolicy(b.ifindex, true, false, []PolicyRule{{Identity: idA, Proto: protoTCP, Port: 8080, PortPrefixLen: 16}}, nil); err != nil {
		t.Fatal(err)
	}

	// B's pod: reads everything, answers its SHA-256.
	b.in(t, func() error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(podB, 8080).String())
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			_, _ = c.Write(h.Sum(nil))
		}()
		return nil
	})

	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)
	var got []byte
	a.in(t, func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(podB, 8080).String(), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(60 * time.Second)) // a hang guard, not a measure
		if _, err := c.Write(data); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		got, err = io.ReadAll(c)
		return err
	})
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("B's pod got data whose SHA-256 is %x, want %x", got, want)
	}
	if n := counter(t, nodeB.dp, b.ifindex, DirIngress, ReasonForwarded); n == 0 {
		t.Errorf("nothing counted as delivered into B's pod")
	}
	for _, n := range []*tunNode{nodeA, nodeB} {
		nc, err := n.dp.NodeCounters()
		if err != nil {
			t.Fatal(err)
		}
		for k, c := range nc {
			if k.Reason.IsDrop() && c.Packets > 0 {
				t.Errorf("node %s dropped %d packets: %s", n.name, c.Packets, k.Reason)
			}
		}
	}
	// A's pod with another identity: B's ingress refuses it on the VNI
	// (the SYN is dropped; the dial's failure is not what is asserted,
	// B's counter is).
	if err := nodeA.dp.UpsertEndpoint(Endpoint{IP: podIP, Ifindex: a.ifindex, PodMAC: a.podMAC, HostMAC: a.hostMAC, Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	a.in(t, func() error {
		if c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(podB, 8080).String(), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("a connection from identity %d was accepted", idRemote)
		}
		return nil
	})
	if n := counter(t, nodeB.dp, b.ifindex, DirIngress, DropPolicyIngress); n == 0 {
		t.Errorf("B's pod counted no policy-ingress-denied for identity %d", idRemote)
	}
	// Nothing but the programs carried it: no route to the other pod CIDR.
	nodeA.do(t, func() error {
		routes, err := netlink.RouteGet(podB.AsSlice())
		if err == nil && len(routes) > 0 && routes[0].Gw != nil {
			t.Errorf("node A routes %s via %v", podB, routes[0].Gw)
		}
		return nil
	})
}
