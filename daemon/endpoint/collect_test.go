package endpoint

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/ipam"
)

// allDevices says every device exists.
type allDevices struct{}

func (allDevices) Exists(string, uint32) bool  { return true }
func (allDevices) Remove(string) (bool, error) { return false, nil }
func (allDevices) List() ([]string, error)     { return nil, nil }

func TestCollect(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	alloc, err := ipam.New(t.TempDir(), netip.MustParsePrefix("10.244.1.0/24"), log)
	if err != nil {
		t.Fatal(err)
	}
	dp := newFakeDP()
	m, err := New(t.TempDir(), alloc, dp, allDevices{}, log)
	if err != nil {
		t.Fatal(err)
	}
	a := api.Attachment{ContainerID: "c1", IfName: "eth0"}
	ip, err := alloc.Allocate(a)
	if err != nil {
		t.Fatal(err)
	}
	req := api.EndpointRequest{Attachment: a, Pod: api.PodRef{Namespace: "ns", Name: "p", UID: "u"}, IP: ip,
		HostIfName: "anet0", HostIfindex: 7, HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02"}
	if err := m.Register(req); err != nil {
		t.Fatal(err)
	}
	recs := m.Records()
	if len(recs) != 1 || recs[0].Pod.UID != "u" || recs[0].Counters != nil {
		t.Fatalf("Records = %+v", recs)
	}
	// A stale judgement (another Created) collects nothing.
	if ok, err := m.Collect(a, recs[0].Created.Add(-time.Hour)); ok || err != nil {
		t.Fatalf("Collect with a stale Created: %v %v", ok, err)
	}
	if ok, err := m.Collect(a, recs[0].Created); !ok || err != nil {
		t.Fatalf("Collect: %v %v", ok, err)
	}
	if m.Count() != 0 || len(dp.byIP) != 0 {
		t.Errorf("endpoint left: %d records, %d map entries", m.Count(), len(dp.byIP))
	}
	if _, held := alloc.Lookup(a); held {
		t.Error("address not released")
	}
	if ok, err := m.Collect(a, recs[0].Created); ok || err != nil {
		t.Errorf("second Collect: %v %v", ok, err)
	}
}
