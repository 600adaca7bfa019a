package datapath

import (
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// loadPinned loads and activates a datapath on a bpffs of the test's own.
func loadPinned(t *testing.T, root string, opts Options) *Datapath {
	t.Helper()
	dp, err := LoadWith(root, opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Activate(); err != nil {
		dp.Close()
		t.Fatal(err)
	}
	return dp
}

func count(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n, err := countEntries(m)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func svcFrontend(addr string, proto lb.Proto, revNat uint32, backends ...lb.MapBackend) lb.MapFrontend {
	return lb.MapFrontend{
		Key:    lb.FrontendKey{Addr: netip.MustParseAddrPort(addr), Proto: proto},
		RevNat: revNat, Active: len(backends), Backends: backends,
	}
}

func be(id uint32, addr string, st lb.BackendState) lb.MapBackend {
	return lb.MapBackend{ID: id, Addr: netip.MustParseAddrPort(addr), State: st}
}

// Put, Dump and Delete: what Put writes is what Dump returns; backends
// shared by two frontends stay until the last goes; a smaller set leaves
// no slot, backend or affinity match behind.
func TestServiceMapsPutDumpDelete(t *testing.T) {
	root := tmpBPFFS(t)
	dp := loadPinned(t, root, Options{})
	defer dp.Close()
	sm, err := dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	a := svcFrontend("10.96.0.1:80", lb.TCP, 1,
		be(1, "10.244.0.1:8080", lb.Ready), be(2, "10.244.0.2:8080", lb.Ready), be(3, "10.244.0.3:8080", lb.Terminating))
	a.Active = 2
	a.Affinity = 90 * time.Second
	a.Flags = lb.FlagTwoScopes
	np := svcFrontend("192.168.1.5:30080", lb.TCP, 2, be(1, "10.244.0.1:8080", lb.Ready))
	np.Flags = lb.FlagNodePort
	for _, f := range []lb.MapFrontend{a, np} {
		if err := sm.Put(f); err != nil {
			t.Fatal(err)
		}
	}
	got, err := sm.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if want := []lb.MapFrontend{a, np}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Dump:\n got %+v\nwant %+v", got, want)
	}
	services, backends := dp.shared[bpf.SockMapAnetLb4Services], dp.shared[bpf.SockMapAnetLb4Backends]
	match, revnat := dp.shared[bpf.SockMapAnetLb4AffMatch], dp.shared[bpf.SockMapAnetLb4Revnat]
	if n := count(t, match); n != 2 {
		t.Errorf("%d affinity matches, want one per active backend: 2", n)
	}

	// Shrink a: one backend; the shared backend 1 stays for np.
	a.Backends, a.Active = a.Backends[1:2], 1
	if err := sm.Put(a); err != nil {
		t.Fatal(err)
	}
	if n := count(t, services); n != 4 {
		t.Errorf("services map has %d entries, want 2 masters and 2 slots", n)
	}
	if n := count(t, backends); n != 2 {
		t.Errorf("backends map has %d entries, want 2 (1 for np, 2 for a)", n)
	}
	if n := count(t, match); n != 1 {
		t.Errorf("%d affinity matches after the shrink, want 1", n)
	}
	if err := sm.Delete(a.Key); err != nil {
		t.Fatal(err)
	}
	if err := sm.Delete(a.Key); err != nil {
		t.Errorf("deleting an absent frontend: %v", err)
	}
	got, _ = sm.Dump()
	if len(got) != 1 || !reflect.DeepEqual(got[0], np) {
		t.Errorf("after Delete: %+v", got)
	}
	if n := count(t, backends); n != 1 {
		t.Errorf("backends map has %d entries, want np's one", n)
	}
	if n, m := count(t, revnat), count(t, match); n != 1 || m != 0 {
		t.Errorf("reverse-NAT %d (want 1), affinity matches %d (want 0)", n, m)
	}
	if err := sm.Delete(np.Key); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.Map{"services": services, "backends": backends, "revnat": revnat} {
		if n := count(t, m); n != 0 {
			t.Errorf("%s has %d entries with no frontend", name, n)
		}
	}
}

// What Put refuses, with a clear error.
func TestServiceMapsRefuses(t *testing.T) {
	dp := loadPinned(t, tmpBPFFS(t), Options{})
	defer dp.Close()
	sm, err := dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	ok := svcFrontend("10.96.0.1:80", lb.TCP, 1, be(1, "10.244.0.1:8080", lb.Ready))
	for _, c := range []struct {
		edit func(*lb.MapFrontend)
		want string
	}{
		{func(f *lb.MapFrontend) { f.Key.Addr = netip.MustParseAddrPort("[fd00::1]:80") }, "only IPv4"},
		{func(f *lb.MapFrontend) { f.Backends[0].Addr = netip.MustParseAddrPort("[fd00::2]:80") }, "not IPv4"},
		{func(f *lb.MapFrontend) { f.Key.Proto = 132 }, "not served"},
		{func(f *lb.MapFrontend) { f.RevNat = 0 }, "reverse-NAT index 0"},
		{func(f *lb.MapFrontend) { f.Active = 2 }, "2 active of 1"},
	} {
		f := ok
		f.Backends = append([]lb.MapBackend(nil), ok.Backends...)
		c.edit(&f)
		if err := sm.Put(f); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Put(%+v) = %v, want %q", f, err, c.want)
		}
	}
	if err := sm.Delete(lb.FrontendKey{Addr: netip.MustParseAddrPort("[fd00::1]:80"), Proto: lb.TCP}); err == nil {
		t.Error("Delete of an IPv6 frontend: no error")
	}
	if d, _ := sm.Dump(); len(d) != 0 {
		t.Errorf("refused frontends were written: %+v", d)
	}
}

// A full map is an error wrapping ErrMapFull, and the frontend keeps
// serving what it had; the next Put that fits cleans up.
func TestServiceMapsFull(t *testing.T) {
	dp := loadPinned(t, tmpBPFFS(t), Options{ServiceMapSize: 4, BackendMapSize: 8})
	defer dp.Close()
	sm, err := dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	small := svcFrontend("10.96.0.1:80", lb.TCP, 1, be(1, "10.244.0.1:8080", lb.Ready))
	if err := sm.Put(small); err != nil {
		t.Fatal(err)
	}
	big := small
	big.Backends = []lb.MapBackend{be(2, "10.244.0.2:8080", lb.Ready), be(3, "10.244.0.3:8080", lb.Ready),
		be(4, "10.244.0.4:8080", lb.Ready), be(5, "10.244.0.5:8080", lb.Ready)}
	big.Active = 4
	err = sm.Put(big)
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("Put over the map's size: %v, want ErrMapFull", err)
	}
	t.Logf("full: %v", err)
	got, err := sm.Dump()
	if err != nil || len(got) != 1 || got[0].Active != 1 || len(got[0].Backends) != 1 {
		t.Fatalf("after a failed Put: %+v %v, want the frontend with its one backend", got, err)
	}
	if id := got[0].Backends[0].ID; id != 1 && id != 2 {
		t.Errorf("slot 1 holds backend %d, an old or a new one expected", id)
	}
	if err := sm.Put(small); err != nil {
		t.Fatal(err)
	}
	if n := count(t, dp.shared[bpf.SockMapAnetLb4Backends]); n != 1 {
		t.Errorf("%d backends after the clean-up Put, want 1", n)
	}
	if n := count(t, dp.shared[bpf.SockMapAnetLb4Services]); n != 2 {
		t.Errorf("%d services entries after the clean-up Put, want 2", n)
	}
}

// After a restart the wrapper reads what the maps hold (Dump returns it,
// Delete removes it all) and prunes what no frontend reaches: slots
// without a master, backends and reverse-NAT entries of no frontend.
func TestServiceMapsRestore(t *testing.T) {
	root := tmpBPFFS(t)
	dp := loadPinned(t, root, Options{})
	sm, err := dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	f := svcFrontend("10.96.0.1:53", lb.UDP, 7, be(1, "10.244.0.1:53", lb.Ready), be(2, "10.244.0.2:53", lb.Serving))
	f.Affinity = 10 * time.Second
	if err := sm.Put(f); err != nil {
		t.Fatal(err)
	}
	// Leftovers of a crash in the middle of a Put of another frontend.
	orphan := lb.FrontendKey{Addr: netip.MustParseAddrPort("10.96.0.2:80"), Proto: lb.TCP}
	if err := dp.shared[bpf.SockMapAnetLb4Services].Put(lbKey(orphan, 1), bpf.SockLb4Service{BackendId: 9}); err != nil {
		t.Fatal(err)
	}
	if err := dp.shared[bpf.SockMapAnetLb4Backends].Put(uint32(9), bpf.SockLb4Backend{Addr: 1}); err != nil {
		t.Fatal(err)
	}
	if err := dp.shared[bpf.SockMapAnetLb4Revnat].Put(uint32(99), bpf.SockLb4Revnat{Addr: 1}); err != nil {
		t.Fatal(err)
	}
	dp.Close()

	dp = loadPinned(t, root, Options{})
	defer dp.Close()
	sm, err = dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	got, err := sm.Dump()
	if err != nil || !reflect.DeepEqual(got, []lb.MapFrontend{f}) {
		t.Fatalf("after restart: %+v %v, want %+v", got, err, f)
	}
	for name, want := range map[string]int{bpf.SockMapAnetLb4Services: 3, bpf.SockMapAnetLb4Backends: 2, bpf.SockMapAnetLb4Revnat: 1, bpf.SockMapAnetLb4AffMatch: 2} {
		if n := count(t, dp.shared[name]); n != want {
			t.Errorf("%s: %d entries after restore, want %d", name, n, want)
		}
	}
	if err := sm.Delete(f.Key); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bpf.SockMapAnetLb4Services, bpf.SockMapAnetLb4Backends, bpf.SockMapAnetLb4Revnat, bpf.SockMapAnetLb4AffMatch} {
		if n := count(t, dp.shared[name]); n != 0 {
			t.Errorf("%s: %d entries after Delete of the restored frontend", name, n)
		}
	}
}

// A map that several objects define is one map in the kernel, and the
// sizes from Options are in force.
func TestLoadSharesMaps(t *testing.T) {
	dp := loadPinned(t, tmpBPFFS(t), Options{SockRevNatMapSize: 1024})
	defer dp.Close()
	id := func(m *ebpf.Map) ebpf.MapID {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		i, _ := info.ID()
		return i
	}
	if a, b := id(dp.objs.AnetMetrics), id(dp.sock.AnetMetrics); a != b {
		t.Errorf("anet_metrics: lxc uses map %d, sock map %d", a, b)
	}
	if a, b := id(dp.objs.AnetEpByIp), id(dp.sock.AnetEpByIp); a != b {
		t.Errorf("anet_ep_by_ip: lxc uses map %d, sock map %d", a, b)
	}
	if n := dp.sock.AnetSock4Revnat.MaxEntries(); n != 1024 {
		t.Errorf("socket reverse-NAT map has %d entries, want 1024", n)
	}
	if n := dp.sock.AnetLb4Services.MaxEntries(); n != DefaultOptions().ServiceMapSize {
		t.Errorf("services map has %d entries, want the default %d", n, DefaultOptions().ServiceMapSize)
	}
}

// Every pinned map's name is told apart by its first 15 bytes (the
// kernel's object name) and 16 (the fingerprints' key).
func TestMapNamesDistinct(t *testing.T) {
	dp := &Datapath{}
	colls, err := dp.collections()
	if err != nil {
		t.Fatal(err)
	}
	specs, err := sharedSpecs(colls, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seen15, seen16 := map[string]string{}, map[layoutKey]string{}
	for name := range specs {
		k15 := name[:min(15, len(name))]
		if o, ok := seen15[k15]; ok {
			t.Errorf("maps %s and %s share the kernel name %q", o, name, k15)
		}
		seen15[k15] = name
		if o, ok := seen16[layoutKeyOf(name)]; ok {
			t.Errorf("maps %s and %s share a fingerprint key", o, name)
		}
		seen16[layoutKeyOf(name)] = name
		if !strings.HasPrefix(name, "anet_") {
			t.Errorf("map %s is not prefixed anet_", name)
		}
	}
	if len(specs) < 9 {
		t.Errorf("only %d shared maps: %v", len(specs), specs)
	}
}

// How fast frontends are programmed: one op is one Put of a frontend with
// 5 backends, 40 000 frontends in turn (go test -bench ServiceMapsPut -run ^$).
func BenchmarkServiceMapsPut(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	root := b.TempDir()
	if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
		b.Fatal(err)
	}
	defer unix.Unmount(root, unix.MNT_DETACH)
	dp, err := LoadWith(root, Options{}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	sm, err := dp.ServiceMaps()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := i % 40000
		a := netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)})
		f := lb.MapFrontend{Key: lb.FrontendKey{Addr: netip.AddrPortFrom(a, 80), Proto: lb.TCP}, RevNat: uint32(n + 1), Active: 5}
		for j := 0; j < 5; j++ {
			f.Backends = append(f.Backends, lb.MapBackend{ID: uint32(n*5 + j + 1),
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(j), byte(i)}), 8080), State: lb.Ready})
		}
		if err := sm.Put(f); err != nil {
			b.Fatal(err)
		}
	}
}
