package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
)

// wiringDP is fakeDP that also wires: a device appears in devices, with
// counters as traffic would make them; failWire and failUpsert make those
// steps fail.
type wiringDP struct {
	*fakeDP
	devices    mapDevices
	failWire   bool
	failUpsert bool
	// noMade: Wire does not call Made (the record is written after it);
	// changeAfterMade: Made is told another attach mode than Wire returns.
	noMade, changeAfterMade bool
	checkErr                error
}

func (w *wiringDP) Wire(_ *os.File, c datapath.WireConfig) (datapath.Wired, error) {
	if w.failWire {
		return datapath.Wired{}, errors.New("wire failed")
	}
	idx := uint32(100 + len(w.devices))
	w.devices[c.HostIfName] = idx
	w.fakeDP.mu.Lock()
	w.fakeDP.counters[idx] = map[datapath.CounterKey]datapath.Counter{{}: {Packets: 1}}
	w.fakeDP.mu.Unlock()
	wd := datapath.Wired{HostIfindex: int(idx), HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, Mode: datapath.ModeTC}
	if c.Made != nil && !w.noMade {
		made := wd
		if w.changeAfterMade {
			made.Mode = datapath.ModeTCX
		}
		c.Made(made)
	}
	return wd, nil
}

// check is what attached programs the fake reports (CheckAttached).
func (w *wiringDP) CheckAttached(string) error { return w.checkErr }

func (w *wiringDP) UpsertEndpoint(e datapath.Endpoint) error {
	if w.failUpsert {
		return errors.New("upsert failed")
	}
	return w.fakeDP.UpsertEndpoint(e)
}

// Add either does all of it or leaves nothing: failures at each step,
// and a plugin that went away before the record, undo everything (entries,
// device, counters, address, record).
func TestAddUndoesFailures(t *testing.T) {
	cases := []struct {
		name  string
		setup func(w *wiringDP, m *Manager, a api.Attachment) context.Context
	}{
		{"wire fails", func(w *wiringDP, _ *Manager, _ api.Attachment) context.Context {
			w.failWire = true
			return context.Background()
		}},
		{"maps fail", func(w *wiringDP, _ *Manager, _ api.Attachment) context.Context {
			w.failUpsert = true
			return context.Background()
		}},
		{"plugin gone", func(*wiringDP, *Manager, api.Attachment) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
		{"record fails", func(_ *wiringDP, m *Manager, a api.Attachment) context.Context {
			// A directory where the record goes: the rename onto it fails.
			if err := os.MkdirAll(filepath.Join(m.recordPath(a), "x"), 0o700); err != nil {
				t.Fatal(err)
			}
			return context.Background()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			devices := mapDevices{}
			w := &wiringDP{fakeDP: newFakeDP(), devices: devices}
			f := newFixture(t, dir, newFakeDP(), devices)
			f.m.dp = w
			a := api.Attachment{Network: "anet", ContainerID: "c1", IfName: "eth0"}
			ctx := c.setup(w, f.m, a)
			if _, err := f.m.Add(ctx, api.AddRequest{Attachment: a}, nil); err == nil {
				t.Fatal("Add succeeded")
			}
			if len(w.byIP) != 0 || len(w.byIf) != 0 || len(w.counters) != 0 {
				t.Errorf("map entries left: %v %v, counters %v", w.byIP, w.byIf, w.counters)
			}
			if len(devices) != 0 {
				t.Errorf("devices left: %v", devices)
			}
			if n := len(f.m.ipam.List()); n != 0 {
				t.Errorf("%d allocations left", n)
			}
			if f.m.Count() != 0 {
				t.Errorf("%d endpoints left", f.m.Count())
			}
			if c.name != "record fails" {
				// Nothing in the records' directory: no record, and no
				// temp file of the record that was being written.
				if es, err := os.ReadDir(filepath.Dir(f.m.recordPath(a))); err != nil || len(es) != 0 {
					t.Errorf("records' directory after the failed ADD: %v %v", es, err)
				}
			}
			// The same attachment then adds fine.
			*w = wiringDP{fakeDP: w.fakeDP, devices: devices}
			_ = os.RemoveAll(f.m.recordPath(a))
			res, err := f.m.Add(context.Background(), api.AddRequest{Attachment: a}, nil)
			if err != nil {
				t.Fatalf("Add after the failure: %v", err)
			}
			if ip, ok := f.m.ipam.Lookup(a); !ok || ip != res.IP {
				t.Errorf("address %s, allocation %s %v", res.IP, ip, ok)
			}
		})
	}
}

// An attachment that exists (also as a record made before networks were
// recorded) is refused and left alone.
func TestAddRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	devices := mapDevices{}
	w := &wiringDP{fakeDP: newFakeDP(), devices: devices}
	f := newFixture(t, dir, newFakeDP(), devices)
	f.m.dp = w
	legacy := f.add(t, "old", 60) // a record with no network
	a := api.Attachment{Network: "anet", ContainerID: "old", IfName: "eth0"}
	if _, err := f.m.Add(context.Background(), api.AddRequest{Attachment: a}, nil); !errors.Is(err, api.ErrExists) {
		t.Fatalf("Add over a network-less record: %v, want ErrExists", err)
	}
	if _, err := f.m.Get(legacy.Attachment); err != nil {
		t.Errorf("the older endpoint is gone: %v", err)
	}
	b := api.Attachment{Network: "anet", ContainerID: "new", IfName: "eth0"}
	if _, err := f.m.Add(context.Background(), api.AddRequest{Attachment: b}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Add(context.Background(), api.AddRequest{Attachment: b}, nil); !errors.Is(err, api.ErrExists) {
		t.Fatalf("second Add: %v, want ErrExists", err)
	}
}

// The record written while the wiring goes on (Made) is the one that
// lands, also when Made never comes or is told something else than Wire
// ends with; it is complete, and nothing else is left beside it.
func TestAddRecord(t *testing.T) {
	for _, c := range []struct {
		name                    string
		noMade, changeAfterMade bool
	}{{"made", false, false}, {"no made", true, false}, {"changed after made", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			devices := mapDevices{}
			w := &wiringDP{fakeDP: newFakeDP(), devices: devices, noMade: c.noMade, changeAfterMade: c.changeAfterMade}
			f := newFixture(t, dir, newFakeDP(), devices)
			f.m.dp = w
			a := api.Attachment{Network: "anet", ContainerID: "c1", IfName: "eth0"}
			res, err := f.m.Add(context.Background(), api.AddRequest{Attachment: a, Netns: "/run/netns/x"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			es, err := os.ReadDir(filepath.Dir(f.m.recordPath(a)))
			if err != nil || len(es) != 1 || es[0].Name() != filepath.Base(f.m.recordPath(a)) {
				t.Fatalf("records' directory: %v %v", es, err)
			}
			b, err := os.ReadFile(f.m.recordPath(a))
			if err != nil {
				t.Fatal(err)
			}
			var ep api.Endpoint
			if err := json.Unmarshal(b, &ep); err != nil {
				t.Fatal(err)
			}
			if ep.IP != res.IP || ep.AttachMode != datapath.ModeTC || ep.HostIfindex != 100 || ep.PodMAC != res.PodMAC || ep.Netns != "/run/netns/x" {
				t.Errorf("record %+v, answer %+v", ep, res)
			}
			// A restart finds it as it is.
			g := newFixture(t, dir, newFakeDP(), devices)
			if err := g.m.Restore(Pending{}); err != nil {
				t.Fatal(err)
			}
			got, err := g.m.Get(a)
			if err != nil || got.EndpointRequest != ep.EndpointRequest {
				t.Errorf("after restore: %+v %v, want %+v", got, err, ep.EndpointRequest)
			}
		})
	}
}

// Check reports the host side's device and programs, and a missing
// endpoint as not found.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	devices := mapDevices{}
	w := &wiringDP{fakeDP: newFakeDP(), devices: devices}
	f := newFixture(t, dir, newFakeDP(), devices)
	f.m.dp = w
	a := api.Attachment{Network: "anet", ContainerID: "c1", IfName: "eth0"}
	if _, err := f.m.Check(a); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("Check of nothing: %v, want ErrNotFound", err)
	}
	if _, err := f.m.Add(context.Background(), api.AddRequest{Attachment: a}, nil); err != nil {
		t.Fatal(err)
	}
	if c, err := f.m.Check(a); err != nil || c.Problem != "" {
		t.Fatalf("Check: %+v %v", c, err)
	}
	w.checkErr = errors.New("ingress runs program 7, anetd's is 8")
	if c, err := f.m.Check(a); err != nil || c.Problem != w.checkErr.Error() {
		t.Fatalf("Check with other programs: %+v %v", c, err)
	}
	w.checkErr = nil
	devices[datapath.HostIfName(a.ContainerID, a.IfName)] = 999 // another device of the name
	if c, err := f.m.Check(a); err != nil || !strings.Contains(c.Problem, "is gone") {
		t.Fatalf("Check with the device gone: %+v %v", c, err)
	}
}

// ADD records the inode of the namespace it was given, which survives a
// restart, and Netns lists it for the UDP socket terminator.
func TestAddRecordsNetnsInode(t *testing.T) {
	dir := t.TempDir()
	devices := mapDevices{}
	w := &wiringDP{fakeDP: newFakeDP(), devices: devices}
	f := newFixture(t, dir, newFakeDP(), devices)
	f.m.dp = w
	// The fake wiring never enters it: any network namespace does.
	podNS, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	want, err := datapath.NetnsInode(podNS)
	if err != nil || want == 0 {
		t.Fatalf("inode %d: %v", want, err)
	}
	a := api.Attachment{Network: "anet", ContainerID: "c1", IfName: "eth0"}
	req := api.AddRequest{Attachment: a, Netns: "/run/netns/x", Pod: api.PodRef{Namespace: "default", Name: "p"}}
	if _, err := f.m.Add(context.Background(), req, podNS); err != nil {
		t.Fatal(err)
	}
	g := newFixture(t, dir, newFakeDP(), devices)
	if err := g.m.Restore(Pending{}); err != nil {
		t.Fatal(err)
	}
	got := g.m.Netns()
	if len(got) != 1 || got[0] != (datapath.NetnsRef{Name: "default/p", Path: "/run/netns/x", Inode: want}) {
		t.Errorf("Netns after a restart: %+v, want default/p at /run/netns/x, inode %d", got, want)
	}
}

// Records go through ready files: an ADD takes one (the pool is refilled
// behind it), its record lands in the records' directory and restores;
// with none ready (more ADDs than the pool holds, before the refill) the
// record is written the plain way, just as well. A ready file an ADD wrote
// but never renamed (a crash) is gone at the next start, and no endpoint
// comes of it.
func TestAddThroughReadyFiles(t *testing.T) {
	dir := t.TempDir()
	devices := mapDevices{}
	w := &wiringDP{fakeDP: newFakeDP(), devices: devices}
	f := newFixture(t, dir, newFakeDP(), devices)
	f.m.dp = w
	readyDir := filepath.Join(dir, "endpoints.ready")
	ready := func() []string {
		es, err := os.ReadDir(readyDir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name())
		}
		return out
	}
	before := ready()
	if len(before) != readyKept {
		t.Fatalf("%d ready files after UseReadyFiles, want %d", len(before), readyKept)
	}
	for _, name := range before {
		b, err := os.ReadFile(filepath.Join(readyDir, name))
		if err != nil || len(b) != readySize || strings.Trim(string(b), " ") != "" {
			t.Fatalf("ready file %s: %d bytes, not all spaces (%v)", name, len(b), err)
		}
	}
	// More ADDs than ready files, back to back: some take ready files,
	// the rest (if the refill is behind) the plain way.
	var atts []api.Attachment
	ips := map[netip.Addr]bool{}
	for i := range 2*readyKept + 1 {
		a := api.Attachment{Network: "anet", ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"}
		res, err := f.m.Add(context.Background(), api.AddRequest{Attachment: a}, nil)
		if err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
		ips[res.IP] = true
	}
	if len(ips) != len(atts) {
		t.Fatalf("%d addresses for %d ADDs", len(ips), len(atts))
	}
	used := 0
	now := map[string]bool{}
	for _, n := range ready() {
		now[n] = true
	}
	for _, n := range before {
		if !now[n] {
			used++
		}
	}
	if used == 0 {
		t.Fatal("no ADD took a ready file")
	}
	// A ready file written by an ADD that crashed before its rename.
	crashed := filepath.Join(readyDir, "0123456789abcdef")
	rec, err := json.Marshal(api.Endpoint{EndpointRequest: api.EndpointRequest{
		Attachment: api.Attachment{Network: "anet", ContainerID: "crashed", IfName: "eth0"},
		IP:         netip.MustParseAddr("10.244.1.200"), HostIfName: datapath.HostIfName("crashed", "eth0"), HostIfindex: 999,
		HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02", AttachMode: datapath.ModeTC}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crashed, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	devices[datapath.HostIfName("crashed", "eth0")] = 999
	f.m.Close()

	g := newFixture(t, dir, newFakeDP(), devices)
	if err := g.m.Restore(Pending{}); err != nil {
		t.Fatal(err)
	}
	if n := g.m.Count(); n != len(atts) {
		t.Errorf("%d endpoints after restore, want %d", n, len(atts))
	}
	for _, a := range atts {
		if _, err := g.m.Get(a); err != nil {
			t.Errorf("%s after restore: %v", a.ContainerID, err)
		}
	}
	if _, err := g.m.Get(api.Attachment{Network: "anet", ContainerID: "crashed", IfName: "eth0"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("the crashed ADD's endpoint: %v, want not found", err)
	}
	if _, ok := devices[datapath.HostIfName("crashed", "eth0")]; ok {
		t.Error("the crashed ADD's device is still there")
	}
	if _, err := os.Stat(crashed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the crashed ADD's ready file: %v, want removed", err)
	}
	if n := len(ready()); n != readyKept {
		t.Errorf("%d ready files after the restart, want %d", n, readyKept)
	}
}
