package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// tmpBPFFS mounts a bpffs of the test's own and removes it afterwards.
func tmpBPFFS(t *testing.T) string {
	t.Helper()
	needRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestCarry(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		size int
		want []byte
		ok   bool
	}{
		{[]byte{1, 2}, 4, []byte{1, 2, 0, 0}, true},
		{[]byte{1, 2}, 2, []byte{1, 2}, true},
		{[]byte{1, 2, 0, 0}, 2, []byte{1, 2}, true},
		{[]byte{1, 2, 0, 3}, 2, nil, false},
	} {
		got, ok := carry(c.in, c.size)
		if ok != c.ok || !bytes.Equal(got, c.want) {
			t.Errorf("carry(%v, %d) = %v, %v; want %v, %v", c.in, c.size, got, ok, c.want, c.ok)
		}
	}
}

func pinnedInfo(t *testing.T, path string) (ebpf.MapID, uint32) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id, info.ValueSize
}

// Pinned maps of an older layout (smaller values) are migrated, not
// refused: Load leaves the old pins alone, the caller fills the endpoint
// maps, Activate repins; counters are copied, zero-extended.
func TestLoadMigratesChangedMaps(t *testing.T) {
	root := tmpBPFFS(t)
	l := Layout{Root: root}
	if err := os.MkdirAll(l.MapsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	oldEp, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 20, MaxEntries: 65536, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer oldEp.Close()
	if err := oldEp.Put(uint32(7), make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	oldMetrics, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 8, ValueSize: 8, MaxEntries: 65536, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer oldMetrics.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	per := make([][]byte, cpus)
	for i := range per {
		per[i] = binary.NativeEndian.AppendUint64(nil, 5) // packets only
	}
	key := bpf.LxcMetricsKey{Ifindex: 7, Dir: uint8(DirEgress), Reason: uint8(ReasonForwarded)}
	if err := oldMetrics.Put(key, per); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.Map{bpf.LxcMapAnetEpByIf: oldEp, bpf.LxcMapAnetMetrics: oldMetrics} {
		if err := m.Pin(l.MapPin(name)); err != nil {
			t.Fatal(err)
		}
	}
	oldID, _ := pinnedInfo(t, l.MapPin(bpf.LxcMapAnetEpByIf))

	dp, err := Load(root, quiet)
	if err != nil {
		t.Fatalf("Load with pinned maps of another layout: %v", err)
	}
	defer dp.Close()
	if got := len(dp.Migrating()); got != 2 {
		t.Errorf("migrating %v, want the two changed maps", dp.Migrating())
	}
	if id, _ := pinnedInfo(t, l.MapPin(bpf.LxcMapAnetEpByIf)); id != oldID {
		t.Error("Load replaced a pin before Activate")
	}
	if _, err := os.Stat(l.MapPin(bpf.LxcMapAnetEpByIp)); err == nil {
		t.Error("Load pinned a new map before Activate")
	}
	c, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := Counter{Packets: 5 * uint64(cpus)}
	if got := c[7][CounterKey{DirEgress, ReasonForwarded}]; got != want {
		t.Errorf("migrated counter %+v, want %+v", got, want)
	}
	ep := Endpoint{IP: netip.MustParseAddr("10.244.1.9"), Ifindex: 7, PodMAC: podMAC, HostMAC: hostMAC}
	if err := dp.UpsertEndpoint(ep); err != nil {
		t.Fatal(err)
	}
	if err := dp.Activate(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bpf.LxcMapAnetEpByIp, bpf.LxcMapAnetEpByIf, bpf.LxcMapAnetMetrics} {
		id, size := pinnedInfo(t, l.MapPin(name))
		spec, _ := bpf.LoadLxc()
		if size != spec.Maps[name].ValueSize {
			t.Errorf("pinned %s has value size %d after Activate, want %d", name, size, spec.Maps[name].ValueSize)
		}
		if name == bpf.LxcMapAnetEpByIf && id == oldID {
			t.Errorf("%s still pins the old map", name)
		}
	}
	for _, p := range []string{ProgFromContainer, ProgToContainer} {
		if _, err := os.Stat(l.ProgPin(p)); err != nil {
			t.Errorf("program %s not pinned after Activate: %v", p, err)
		}
	}

	// The next start finds this build's layout: nothing to migrate, and the
	// endpoint is there.
	dp2, err := Load(root, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if m := dp2.Migrating(); len(m) != 0 {
		t.Errorf("second load migrates %v", m)
	}
	byIP, _, err := dp2.MapEndpoints()
	if err != nil {
		t.Fatal(err)
	}
	if byIP[ep.IP] != 7 {
		t.Errorf("endpoint lost: %v", byIP)
	}
}

func addVeth(name string) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("adding veth %s: %w", name, err)
	}
	return nil
}

// A restart moves every endpoint link to the new programs even when some
// devices vanished while anetd was away: one deleted (its link is defunct),
// one deleted and made again under the same name (the pin names a live
// device, the link is defunct). Those pins go; the others are updated.
func TestActivateSkipsVanishedDevices(t *testing.T) {
	root := tmpBPFFS(t)
	l := Layout{Root: root}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	err = netns.Do(func(ns.NetNS) error {
		dp, err := Load(root, quiet)
		if err != nil {
			return err
		}
		if err := dp.Activate(); err != nil {
			return err
		}
		for _, name := range []string{"anettkeep", "anettgone", "anettagain", "anetttc"} {
			if err := addVeth(name); err != nil {
				return err
			}
			dp.EndpointAttach = ModeTCX
			if name == "anetttc" {
				dp.EndpointAttach = ModeTC
			}
			idx, err := netlinkIndex(name)
			if err != nil {
				return err
			}
			mode, err := dp.attach(name, idx)
			if err != nil || mode != dp.EndpointAttach {
				return fmt.Errorf("attach %s: %s %v", name, mode, err)
			}
		}
		dp.Close()
		for _, name := range []string{"anettgone", "anettagain"} {
			lk, err := netlink.LinkByName(name)
			if err == nil {
				err = netlink.LinkDel(lk)
			}
			if err != nil {
				return err
			}
		}
		if err := addVeth("anettagain"); err != nil {
			return err
		}

		dp, err = Load(root, quiet)
		if err != nil {
			return err
		}
		defer dp.Close()
		if err := dp.Activate(); err != nil {
			return fmt.Errorf("restart with vanished devices: %w", err)
		}
		for _, name := range []string{"anettkeep", "anetttc"} {
			if err := CheckEndpoint(l, name); err != nil {
				t.Errorf("%s after restart: %v", name, err)
			}
		}
		for _, name := range []string{"anettgone", "anettagain"} {
			for _, d := range dirs {
				if _, err := os.Stat(l.LinkPin(name, d)); err == nil {
					t.Errorf("pin %s of a vanished device is left", filepath.Base(l.LinkPin(name, d)))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// anetd mounts a bpffs at a bpf root that is not on one.
func TestMountBPFFS(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "made", "bpf")
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := CheckBPFFS(filepath.Dir(dir)); err == nil {
		t.Fatal("the temporary directory is on a bpffs already")
	}
	var log bytes.Buffer
	if err := MountBPFFS(dir, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
		t.Fatal(err)
	}
	if err := CheckBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log.Bytes(), []byte("mounted a bpf filesystem")) {
		t.Errorf("the mount is not logged: %q", log.String())
	}
	// Already on a bpffs: nothing to do, nothing logged.
	log.Reset()
	if err := MountBPFFS(dir, slog.New(slog.NewTextHandler(&log, nil))); err != nil || log.Len() != 0 {
		t.Errorf("second call: %v, log %q", err, log.String())
	}
	dp, err := Load(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
}

// A map whose sizes stay but whose layout changed (fields reordered or
// redefined: the kernel would reuse it as it is) is migrated too, from the
// fingerprints Activate records: the endpoint maps are rebuilt from
// records, the counters start empty rather than be read the wrong way.
// Simulated by changing the recorded fingerprints of two maps.
func TestLoadMigratesSameSizeLayoutChange(t *testing.T) {
	root := tmpBPFFS(t)
	l := Layout{Root: root}
	dp, err := Load(root, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Activate(); err != nil {
		t.Fatal(err)
	}
	ep := Endpoint{IP: netip.MustParseAddr("10.244.1.9"), Ifindex: 7, PodMAC: podMAC, HostMAC: hostMAC}
	if err := dp.UpsertEndpoint(ep); err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	per := make([]bpf.LxcMetricsValue, cpus)
	per[0].Packets = 5
	if err := dp.objs.AnetMetrics.Put(bpf.LxcMetricsKey{Ifindex: 7}, per); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	oldID, _ := pinnedInfo(t, l.MapPin(bpf.LxcMapAnetEpByIf))

	// Unchanged fingerprints: nothing migrates.
	dp, err = Load(root, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if m := dp.Migrating(); len(m) != 0 {
		t.Fatalf("migrating %v with unchanged layouts", m)
	}
	dp.Close()

	lm, err := ebpf.LoadPinnedMap(l.MapPin(layoutsName), nil)
	if err != nil {
		t.Fatalf("no fingerprints pinned: %v", err)
	}
	for _, name := range []string{bpf.LxcMapAnetEpByIf, bpf.LxcMapAnetMetrics} {
		if err := lm.Put(layoutKeyOf(name), [32]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	lm.Close()
	dp, err = Load(root, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	got := map[string]bool{}
	for _, m := range dp.Migrating() {
		got[m] = true
	}
	if len(got) != 2 || !got[bpf.LxcMapAnetEpByIf] || !got[bpf.LxcMapAnetMetrics] {
		t.Fatalf("migrating %v, want the two maps whose layout changed", dp.Migrating())
	}
	if c, err := dp.Counters(); err != nil || len(c[7]) != 0 {
		t.Errorf("counters of another layout copied: %v %v", c, err)
	}
	if err := dp.UpsertEndpoint(ep); err != nil { // what Restore does
		t.Fatal(err)
	}
	if err := dp.Activate(); err != nil {
		t.Fatal(err)
	}
	if id, _ := pinnedInfo(t, l.MapPin(bpf.LxcMapAnetEpByIf)); id == oldID {
		t.Error("the map of the changed layout is still pinned")
	}
	rec, err := readLayouts(l)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := bpf.LoadLxc()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bpf.LxcMapAnetEpByIf, bpf.LxcMapAnetMetrics, bpf.LxcMapAnetEpByIp} {
		if rec[layoutKeyOf(name)] != fingerprint(spec.Maps[name]) {
			t.Errorf("recorded fingerprint of %s is not this build's after Activate", name)
		}
	}
}

// Fingerprints tell apart types of the same size.
func TestFingerprintSeesFields(t *testing.T) {
	u32 := &btf.Int{Name: "u32", Size: 4}
	mk := func(a, b string) *ebpf.MapSpec {
		return &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, Key: u32,
			Value: &btf.Struct{Name: "v", Size: 8, Members: []btf.Member{{Name: a, Type: u32}, {Name: b, Type: u32, Offset: 32}}}}
	}
	if fingerprint(mk("ip", "ifindex")) != fingerprint(mk("ip", "ifindex")) {
		t.Error("the same layout has two fingerprints")
	}
	if fingerprint(mk("ip", "ifindex")) == fingerprint(mk("ifindex", "ip")) {
		t.Error("reordered fields have the same fingerprint")
	}
}
