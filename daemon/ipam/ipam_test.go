package ipam

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/anet-dev/anet/daemon/api"
)

func owner(i int) Owner { return Owner{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func TestAllocateAll(t *testing.T) {
	dir := t.TempDir()
	a, err := New(dir, netip.MustParsePrefix("10.244.1.0/29"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if a.Gateway() != netip.MustParseAddr("10.244.1.1") || a.Capacity() != 5 {
		t.Fatalf("gateway %s capacity %d", a.Gateway(), a.Capacity())
	}
	seen := map[netip.Addr]bool{}
	for i := range 5 {
		ip, err := a.Allocate(owner(i))
		if err != nil {
			t.Fatal(err)
		}
		if seen[ip] || ip.String() == "10.244.1.0" || ip.String() == "10.244.1.1" || ip.String() == "10.244.1.7" {
			t.Fatalf("bad or duplicate address %s", ip)
		}
		seen[ip] = true
	}
	if _, err := a.Allocate(owner(9)); !errors.Is(err, api.ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	if _, err := a.Allocate(owner(0)); !errors.Is(err, api.ErrExists) {
		t.Fatalf("second allocation for one owner: want ErrExists, got %v", err)
	}
	ip, ok, err := a.Release(owner(2))
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, ok, _ := a.Release(owner(2)); ok {
		t.Fatal("second release found an address")
	}
	got, err := a.Allocate(owner(7))
	if err != nil || got != ip {
		t.Fatalf("reuse: got %s %v, want %s", got, err, ip)
	}
}

func TestRoundRobinAndPersistence(t *testing.T) {
	dir := t.TempDir()
	cidr := netip.MustParsePrefix("10.244.1.0/24")
	a, _ := New(dir, cidr, slog.Default())
	ip1, _ := a.Allocate(owner(1))
	ip2, _ := a.Allocate(owner(2))
	a.Release(owner(1))
	// A new owner does not get the address just freed.
	ip3, _ := a.Allocate(owner(3))
	if ip3 == ip1 || ip3 == ip2 {
		t.Fatalf("round robin gave %s again", ip3)
	}
	// A crash leaves a half-written temp file; a restart sees exactly the
	// committed allocations and goes on after the last one.
	os.WriteFile(filepath.Join(dir, ".10.244.1.200123456"), []byte("{"), 0o600)
	b, err := New(dir, cidr, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	want := map[Owner]netip.Addr{owner(2): ip2, owner(3): ip3}
	if got := b.List(); len(got) != 2 || got[owner(2)] != ip2 || got[owner(3)] != ip3 {
		t.Fatalf("after restart %v, want %v", got, want)
	}
	ip4, _ := b.Allocate(owner(4))
	if ip4 != ip3.Next() {
		t.Fatalf("after restart allocated %s, want %s", ip4, ip3.Next())
	}
	if _, err := os.Stat(filepath.Join(dir, ".10.244.1.200123456")); !os.IsNotExist(err) {
		t.Fatal("temp file left behind")
	}
}

func TestChangedCIDRDropsForeignRecords(t *testing.T) {
	dir := t.TempDir()
	a, _ := New(dir, netip.MustParsePrefix("10.244.1.0/24"), slog.Default())
	a.Allocate(owner(1))
	b, err := New(dir, netip.MustParsePrefix("10.244.2.0/24"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.List()) != 0 {
		t.Fatalf("foreign records kept: %v", b.List())
	}
}

func TestRejectsBadCIDR(t *testing.T) {
	for _, c := range []string{"10.0.0.0/31", "fd00::/64"} {
		if _, err := New(t.TempDir(), netip.MustParsePrefix(c), slog.Default()); err == nil {
			t.Errorf("%s accepted", c)
		}
	}
}

func TestConcurrentDistinct(t *testing.T) {
	a, _ := New(t.TempDir(), netip.MustParsePrefix("10.244.0.0/22"), slog.Default())
	var mu sync.Mutex
	seen := map[netip.Addr]int{}
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip, err := a.Allocate(owner(i))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[ip]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(seen) != 500 {
		t.Fatalf("%d distinct addresses for 500 owners", len(seen))
	}
}
