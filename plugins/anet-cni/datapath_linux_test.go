package main

// Node tests of the datapath's lifecycle: map layouts that change between
// builds, devices that vanish while anetd is away, counters that must go
// with their endpoint, and a bpf root that is not yet a bpffs.

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/lab/testnode"
)

// variantBin is a directory with the test binaries of testnode.Bin, except
// that anetd is built with -tags anet_mapvariant: the same programs with
// grown map values (bpf/gen.go), what an upgrade that changes maps runs.
func variantBin(t *testing.T) string {
	t.Helper()
	bin := testnode.Bin(t)
	dir := t.TempDir()
	es, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Name() == "anetd" {
			continue
		}
		if err := os.Symlink(filepath.Join(bin, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-tags", "anet_mapvariant", "-o", filepath.Join(dir, "anetd"), "github.com/anet-dev/anet/daemon/cmd/anetd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the map-variant anetd: %v\n%s", err, out)
	}
	return dir
}

func pinnedValueSize(t *testing.T, n *testnode.Node, name string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(datapath.Layout{Root: n.BPFRoot}.MapPin(name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.ValueSize()
}

// udpStream sends numbered datagrams from a to b and counts what b gets.
type udpStream struct {
	sent, got atomic.Int64
	stop      chan struct{}
	done      chan struct{}
}

func startUDPStream(t *testing.T, a, b *testnode.Pod, port string) *udpStream {
	t.Helper()
	l, err := b.Listen("udp", ":"+port)
	if err != nil {
		t.Fatal(err)
	}
	pc := l.(*net.UDPConn)
	t.Cleanup(func() { pc.Close() })
	// Room for a receiver starved of CPU: a loss is the datapath's.
	raw, err := pc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpStream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			s.got.Add(1)
		}
	}()
	c, err := a.Dial("udp", net.JoinHostPort(b.IP().String(), port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			if _, err := c.Write([]byte("seq")); err == nil {
				s.sent.Add(1)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	t.Cleanup(s.halt)
	return s
}

func (s *udpStream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// lossless stops the stream and fails unless every datagram arrived.
func (s *udpStream) lossless(t *testing.T, min int64) {
	t.Helper()
	s.halt()
	deadline := time.Now().Add(2 * time.Second)
	for s.got.Load() < s.sent.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s.sent.Load() < min || s.got.Load() != s.sent.Load() {
		t.Fatalf("sent %d datagrams, received %d", s.sent.Load(), s.got.Load())
	}
}

// An upgrade to a build whose maps have another layout (issue 7 item 1):
// anetd migrates the pinned maps instead of refusing to start, under a UDP
// stream between two pods with no datagram lost, no endpoint lost and
// counters carried; and back to the normal build the same way.
func TestMapLayoutUpgradeLosesNothing(t *testing.T) {
	// Both attach modes: tc filters are replaced, TCX links updated.
	for _, mode := range []string{datapath.ModeTC, datapath.ModeTCX} {
		t.Run(mode, func(t *testing.T) {
			n := testnode.New(t, testnode.Options{AnetdArgs: []string{"--endpoint-attach", mode}})
			normal := n.Bin
			variant := variantBin(t)
			a, b := n.NewPod("a"), n.NewPod("b")
			n.MustAdd(a)
			n.MustAdd(b)
			normalSize := pinnedValueSize(t, n, bpf.LxcMapAnetEpByIf)
			s := startUDPStream(t, a, b, "7004")
			time.Sleep(200 * time.Millisecond)

			var last uint64
			for i, step := range []struct {
				what, bin string
				grown     bool
			}{
				{"to the map-variant build", variant, true},
				{"back to the normal build", normal, false},
			} {
				n.StopAnetd()
				n.Bin = step.bin
				n.StartAnetd()
				n.Bin = normal // the CNI binaries are the same in both
				size := pinnedValueSize(t, n, bpf.LxcMapAnetEpByIf)
				if grown := size > normalSize; grown != step.grown {
					t.Fatalf("%s: pinned endpoint map value size %d (normal %d): the build did not change the layout", step.what, size, normalSize)
				}
				if !strings.Contains(n.Log(), "migrating it") {
					t.Errorf("%s: anetd did not migrate:\n%s", step.what, n.Log())
				}
				eps := listEndpoints(t, n)
				if len(eps) != 2 {
					t.Fatalf("%s: %d endpoints, want 2\n%s", step.what, len(eps), n.Log())
				}
				for _, p := range []*testnode.Pod{a, b} {
					// CHECK compares the program on each link with the pinned one.
					if err := n.Check(p); err != nil {
						t.Errorf("%s: CHECK %s: %v", step.what, p.Name, err)
					}
				}
				fwd := count(eps[a.ContainerID], "egress", "forwarded")
				if fwd < last || fwd == 0 {
					t.Errorf("%s: a's forwarded counter %d, was %d: counters not carried", step.what, fwd, last)
				}
				last = fwd
				time.Sleep(200 * time.Millisecond)
				t.Logf("step %d done: %d datagrams sent so far", i, s.sent.Load())
			}
			s.lossless(t, 500)
			// A pod added after the migrations works with the new maps.
			c := n.NewPod("c")
			n.MustAdd(c)
			echoUDP(t, c, 7005)
			roundTrip(t, a, "udp", net.JoinHostPort(c.IP().String(), "7005"), "after the migrations")
		})
	}
}

// A veth deleted while anetd was away, and one deleted and made again
// under the same name (its pinned link is defunct), do not stop anetd's
// start (issue 7 item 5): their pins and endpoints go, the others work.
func TestRestartWithVanishedVeth(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b, c, d := n.NewPod("a"), n.NewPod("b"), n.NewPod("c"), n.NewPod("d")
	for _, p := range []*testnode.Pod{a, b, c, d} {
		n.MustAdd(p)
	}
	hostIf := func(p *testnode.Pod) string { return p.Result.Interfaces[0].Name }
	n.StopAnetd()
	err := n.NS.Do(func(ns.NetNS) error {
		for _, p := range []*testnode.Pod{c, d} {
			lk, err := netlink.LinkByName(hostIf(p))
			if err == nil {
				err = netlink.LinkDel(lk)
			}
			if err != nil {
				return err
			}
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf(d)}, PeerName: "anettpeer"})
	})
	if err != nil {
		t.Fatal(err)
	}
	n.StartAnetd()
	echoUDP(t, b, 7006)
	roundTrip(t, a, "udp", net.JoinHostPort(b.IP().String(), "7006"), "after the restart")
	for _, p := range []*testnode.Pod{a, b} {
		if err := n.Check(p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	eps := listEndpoints(t, n)
	_, okA := eps[a.ContainerID]
	_, okB := eps[b.ContainerID]
	if len(eps) != 2 || !okA || !okB {
		t.Errorf("endpoints after restart: %v", eps)
	}
	l := datapath.Layout{Root: n.BPFRoot}
	for _, p := range []*testnode.Pod{c, d} {
		for _, dir := range []datapath.Dir{datapath.DirEgress, datapath.DirIngress} {
			if _, err := os.Stat(l.LinkPin(hostIf(p), dir)); err == nil {
				t.Errorf("pin of %s's vanished veth is left", p.Name)
			}
		}
	}
	for _, p := range []*testnode.Pod{a, b, c, d} {
		if err := n.Del(p); err != nil {
			t.Errorf("DEL %s: %v", p.Name, err)
		}
	}
	assertClean(t, n)
}

// countersOf reads the pinned counter map itself: the keys of ifindex, and
// the node-wide unknown-endpoint drops.
func countersOf(t *testing.T, n *testnode.Node, ifindex uint32) (keys int, unknown uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(datapath.Layout{Root: n.BPFRoot}.MapPin(bpf.LxcMapAnetMetrics), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var k bpf.LxcMetricsKey
	var per []bpf.LxcMetricsValue
	it := m.Iterate()
	for it.Next(&k, &per) {
		if k.Ifindex == ifindex {
			keys++
		}
		if k.Ifindex == datapath.IfindexNode && k.Reason == uint8(datapath.DropUnknownEndpoint) {
			for _, v := range per {
				unknown += v.Packets
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return keys, unknown
}

// Counters go with their endpoint and do not come back (issue 7 item 6),
// with packets racing: the node's stack keeps sending to the pods while
// one endpoint is collected (deleted in anetd, veth still there, as the
// endpoint collector does) and another is deleted by the runtime's DEL.
func TestCountersGoWithEndpoint(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b, c := n.NewPod("a"), n.NewPod("b"), n.NewPod("c")
	for _, p := range []*testnode.Pod{a, b, c} {
		n.MustAdd(p)
	}
	ifindex := func(p *testnode.Pod) uint32 { return listEndpoints(t, n)[p.ContainerID].HostIfindex }
	ib, ic := ifindex(b), ifindex(c)

	// Racers: UDP from the node's netns (through the host stack, to the
	// pods' tc egress programs) and from pod a (pod to pod).
	var conns []net.Conn
	err := n.NS.Do(func(ns.NetNS) error {
		for _, p := range []*testnode.Pod{b, c} {
			cn, err := net.Dial("udp4", net.JoinHostPort(p.IP().String(), "9"))
			if err != nil {
				return err
			}
			conns = append(conns, cn)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*testnode.Pod{b, c} {
		cn, err := a.Dial("udp", net.JoinHostPort(p.IP().String(), "9"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, cn)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, cn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cn.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = cn.Write([]byte("race"))
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(halt)
	time.Sleep(200 * time.Millisecond)
	if k, _ := countersOf(t, n, ib); k == 0 {
		t.Fatal("no counters of b before the delete: the racers do not reach it")
	}

	// Deleted through anetd's API (as its collector does), then DEL by the
	// runtime, both under the same traffic. (Packets on a device that is
	// no endpoint, counted node-wide: TestToContainerUnknownEndpoint.)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Client().DeleteEndpoint(ctx, api.Attachment{Network: "anet", ContainerID: b.ContainerID, IfName: b.IfName}); err != nil {
		t.Fatal(err)
	}
	if err := n.Del(c); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	for _, x := range []struct {
		name    string
		ifindex uint32
	}{{"b (anetd's delete)", ib}, {"c (DEL)", ic}} {
		if k, _ := countersOf(t, n, x.ifindex); k != 0 {
			t.Errorf("%s: %d counters of ifindex %d after the delete", x.name, k, x.ifindex)
		}
	}
	halt()
	for _, p := range []*testnode.Pod{a, b} {
		if err := n.Del(p); err != nil {
			t.Errorf("DEL %s: %v", p.Name, err)
		}
	}
	if k, _ := countersOf(t, n, ib); k != 0 {
		t.Errorf("%d counters of b after its DEL", k)
	}
}

// anetd mounts a bpffs at --bpf-root when there is none (issue 7 item 10).
func TestAnetdMountsBPFFS(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	n.StopAnetd()
	if err := unix.Unmount(n.BPFRoot, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := datapath.CheckBPFFS(n.BPFRoot); err == nil {
		t.Fatal("the bpf root is still a bpffs")
	}
	// anetd's mount is in this mount namespace: remove it whatever happens
	// (testnode's cleanup unmounts the bpf root too; a second unmount of a
	// plain directory fails harmlessly).
	t.Cleanup(func() { _ = unix.Unmount(n.BPFRoot, unix.MNT_DETACH) })
	n.StartAnetd()
	if err := datapath.CheckBPFFS(n.BPFRoot); err != nil {
		t.Fatalf("after anetd's start: %v", err)
	}
	if !strings.Contains(n.Log(), "mounted a bpf filesystem") {
		t.Errorf("anetd does not say that it mounted the bpffs:\n%s", n.Log())
	}
	a, b := n.NewPod("a"), n.NewPod("b")
	n.MustAdd(a)
	n.MustAdd(b)
	echoUDP(t, b, 7007)
	roundTrip(t, a, "udp", net.JoinHostPort(b.IP().String(), "7007"), "on anetd's own bpffs")
	for _, p := range []*testnode.Pod{a, b} {
		if err := n.Del(p); err != nil {
			t.Errorf("DEL %s: %v", p.Name, err)
		}
	}
}
