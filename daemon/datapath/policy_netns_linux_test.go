package datapath

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// Real traffic between two pods of one node, wired as anetd wires them
// (Wire: veths, the programs on the host sides, routes), all inside
// network namespaces of the test's own: a TCP connection allowed, then
// refused after SetEndpointPolicy while the established one goes on; and a
// UDP stream of new flows that loses nothing while other rules come and go.

type polPod struct {
	ns              ns.NetNS
	ip              netip.Addr
	ifindex         uint32
	podMAC, hostMAC net.HardwareAddr
}

func wirePod(t *testing.T, dp *Datapath, name string, ip netip.Addr, gw ...netip.Addr) *polPod {
	t.Helper()
	pn, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pn.Close(); _ = testutils.UnmountNS(pn) })
	f, err := os.Open(pn.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := gwIP
	if len(gw) > 0 {
		g = gw[0]
	}
	w, err := dp.Wire(f, WireConfig{HostIfName: name, PodIfName: "eth0", IP: ip, Gateway: g})
	if err != nil {
		t.Fatalf("wiring %s: %v", name, err)
	}
	if err := dp.UpsertEndpoint(Endpoint{IP: ip, Ifindex: uint32(w.HostIfindex), PodMAC: w.PodMAC, HostMAC: w.HostMAC}); err != nil {
		t.Fatal(err)
	}
	return &polPod{ns: pn, ip: ip, ifindex: uint32(w.HostIfindex), podMAC: w.PodMAC, hostMAC: w.HostMAC}
}

// in runs f in the pod's netns (sockets made there stay there).
func (p *polPod) in(t *testing.T, f func() error) {
	t.Helper()
	if err := p.ns.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyPodsRealTraffic(t *testing.T) {
	needRoot(t)
	enterNewNetns(t) // the node
	if err := netlink.LinkSetUp(mustLink(t, "lo")); err != nil {
		t.Fatal(err)
	}
	dp, err := LoadUnpinned()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	a := wirePod(t, dp, "polveth0a", podIP)
	b := wirePod(t, dp, "polveth0b", peerIP)
	for ip, id := range map[netip.Addr]uint32{a.ip: idA, b.ip: idB} {
		if err := dp.SetIPCache(netip.PrefixFrom(ip, 32), id); err != nil {
			t.Fatal(err)
		}
	}
	const tcpPort, udpPort = 8080, 9000

	// B: a TCP echo server and a UDP sink that records what it got.
	var mu sync.Mutex
	got := map[int]bool{}
	b.in(t, func() error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(b.ip, tcpPort).String())
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							return
						}
						if _, err := c.Write([]byte(line)); err != nil {
							return
						}
					}
				}()
			}
		}()
		pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.ip, udpPort)))
		if err != nil {
			return err
		}
		_ = pc.SetReadBuffer(8 << 20)
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, _, err := pc.ReadFromUDP(buf)
				if err != nil {
					return
				}
				if i, err := strconv.Atoi(string(buf[:n])); err == nil {
					mu.Lock()
					got[i] = true
					mu.Unlock()
				}
			}
		}()
		return nil
	})
	dial := func() (net.Conn, error) {
		var c net.Conn
		var derr error
		a.in(t, func() error {
			c, derr = net.DialTimeout("tcp4", netip.AddrPortFrom(b.ip, tcpPort).String(), time.Second)
			return nil
		})
		return c, derr
	}
	echo := func(c net.Conn, msg string) error {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != msg+"\n" {
			return fmt.Errorf("echo %q, want %q", line, msg)
		}
		return nil
	}

	keepUDP := PolicyRule{Identity: idA, Proto: protoUDP, Port: udpPort, PortPrefixLen: 16}
	allowTCP := PolicyRule{Identity: idA, Proto: protoTCP, Port: tcpPort, PortPrefixLen: 16}
	if err := dp.SetEndpointPolicy(b.ifindex, true, false, []PolicyRule{allowTCP, keepUDP}, nil); err != nil {
		t.Fatal(err)
	}
	c1, err := dial()
	if err != nil {
		t.Fatalf("connect allowed by B's ingress: %v", err)
	}
	defer c1.Close()
	if err := echo(c1, "one"); err != nil {
		t.Fatal(err)
	}
	before := counter(t, dp, b.ifindex, DirIngress, DropPolicyIngress)
	if err := dp.SetEndpointPolicy(b.ifindex, true, false, []PolicyRule{keepUDP}, nil); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("a new connection passed after its allow was removed")
	}
	if n := counter(t, dp, b.ifindex, DirIngress, DropPolicyIngress); n <= before {
		t.Errorf("B's ingress policy drops did not grow (%d)", n)
	}
	if err := echo(c1, "two"); err != nil {
		t.Errorf("the established connection broke with the policy change: %v", err)
	}

	// A stream of new UDP flows (a socket, so a source port, per
	// datagram) under an allow that every update keeps, A's egress and
	// B's ingress both isolated, while other rules come and go.
	if err := dp.SetEndpointPolicy(a.ifindex, false, true, nil, []PolicyRule{{Identity: idB, Proto: protoUDP, Port: udpPort, PortPrefixLen: 16}}); err != nil {
		t.Fatal(err)
	}
	dropsBefore := counter(t, dp, b.ifindex, DirIngress, DropPolicyIngress) + counter(t, dp, a.ifindex, DirEgress, DropPolicyEgress)
	const n = 3000
	done := make(chan error, 1)
	go a.ns.Do(func(ns.NetNS) error {
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.ip, udpPort))
		for i := range n {
			c, err := net.DialUDP("udp4", nil, dst)
			if err != nil {
				done <- err
				return nil
			}
			_, err = c.Write([]byte(strconv.Itoa(i)))
			c.Close()
			if err != nil {
				done <- err
				return nil
			}
		}
		done <- nil
		return nil
	})
	updates := 0
	for sending := true; sending; updates++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			sending = false
		default:
		}
		var extra []PolicyRule
		for j := range updates % 13 {
			extra = append(extra, PolicyRule{Identity: uint32(3000 + updates%7 + j), Proto: protoTCP, Port: uint16(2000 + j), PortPrefixLen: 16})
		}
		if err := dp.SetEndpointPolicy(b.ifindex, true, false, append(extra, keepUDP), nil); err != nil {
			t.Fatal(err)
		}
		if err := dp.SetEndpointPolicy(a.ifindex, updates%2 == 0, true, extra,
			append([]PolicyRule{{Identity: idB, Proto: protoUDP, Port: udpPort, PortPrefixLen: 16}}, extra...)); err != nil {
			t.Fatal(err)
		}
	}
	// Everything was sent; wait for the sink to have read it all.
	var lost int
	for range 100 {
		mu.Lock()
		lost = n - len(got)
		mu.Unlock()
		if lost == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	drops := counter(t, dp, b.ifindex, DirIngress, DropPolicyIngress) + counter(t, dp, a.ifindex, DirEgress, DropPolicyEgress) - dropsBefore
	if lost != 0 || drops != 0 {
		t.Errorf("%d of %d datagrams lost, %d policy drops, during %d policy updates", lost, n, drops, updates)
	}
	t.Logf("%d datagrams (new flows) during %d updates of both endpoints", n, updates)
}
