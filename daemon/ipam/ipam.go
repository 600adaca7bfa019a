// Package ipam hands out the addresses of the node's pod CIDR. Every
// allocation is a file in the state directory, written before the address is
// returned, so that no address is given twice across restarts or crashes.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/daemon/api"
)

// Owner is who holds an address: one network attachment of a container.
type Owner = api.Attachment

// Allocator hands out addresses of one IPv4 CIDR. The network address, the
// gateway (the first host address) and the broadcast address are never given.
type Allocator struct {
	cidr netip.Prefix
	gw   netip.Addr
	dir  string

	mu      sync.Mutex
	byIP    map[netip.Addr]Owner
	byOwner map[Owner]netip.Addr
	last    netip.Addr // allocation goes round from here, as host-local does
}

// Gateway returns the first host address of cidr.
func Gateway(cidr netip.Prefix) netip.Addr { return cidr.Masked().Addr().Next() }

// New loads the allocations persisted in dir (created if needed). Records
// outside cidr (the node's CIDR changed) are dropped with a warning.
func New(dir string, cidr netip.Prefix, log *slog.Logger) (*Allocator, error) {
	if !cidr.Addr().Is4() || cidr.Bits() > 30 {
		return nil, fmt.Errorf("pod CIDR %s must be IPv4 with a prefix of at most /30", cidr)
	}
	cidr = cidr.Masked()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	a := &Allocator{
		cidr: cidr, gw: Gateway(cidr), dir: dir,
		byIP: map[netip.Addr]Owner{}, byOwner: map[Owner]netip.Addr{},
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(path) // a write that never finished: its address was never handed out
			continue
		}
		if name == "last" {
			if b, err := os.ReadFile(path); err == nil {
				if ip, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && cidr.Contains(ip) {
					a.last = ip
				}
			}
			continue
		}
		ip, err := netip.ParseAddr(name)
		if err != nil {
			continue
		}
		var o Owner
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &o)
		}
		if err != nil || !a.usable(ip) {
			log.Warn("dropping allocation record", "file", path, "cidr", cidr, "err", err)
			_ = os.Remove(path)
			continue
		}
		if prev, dup := a.byOwner[o]; dup {
			// Two records for one owner can only come from a crash between
			// writes; keep the lower address, free the other.
			log.Warn("owner has two addresses; freeing one", "owner", o, "kept", prev, "freed", ip)
			_ = os.Remove(path)
			continue
		}
		a.byIP[ip] = o
		a.byOwner[o] = ip
	}
	return a, nil
}

func (a *Allocator) usable(ip netip.Addr) bool {
	if !a.cidr.Contains(ip) || ip == a.cidr.Addr() || ip == a.gw {
		return false
	}
	return ip != lastAddr(a.cidr)
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// CIDR is the pod CIDR. Gateway is the address pods route through.
func (a *Allocator) CIDR() netip.Prefix  { return a.cidr }
func (a *Allocator) Gateway() netip.Addr { return a.gw }

// Capacity is how many addresses can be handed out at most.
func (a *Allocator) Capacity() int { return 1<<(32-a.cidr.Bits()) - 3 }

// Allocate gives o an address. An owner that already holds one gets
// api.ErrExists: a second ADD of the same attachment is an error.
func (a *Allocator) Allocate(o Owner) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byOwner[o]; ok {
		return netip.Addr{}, fmt.Errorf("%w: %s/%s holds %s", api.ErrExists, o.ContainerID, o.IfName, ip)
	}
	ip, ok := a.nextFreeLocked()
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w in %s", api.ErrFull, a.cidr)
	}
	if err := a.persist(ip, o); err != nil {
		return netip.Addr{}, err
	}
	a.take(ip, o)
	return ip, nil
}

// Release frees o's address and reports which it was; releasing an owner
// without one is not an error.
func (a *Allocator) Release(o Owner) (netip.Addr, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ip, ok := a.byOwner[o]
	if !ok {
		return netip.Addr{}, false, nil
	}
	if err := os.Remove(filepath.Join(a.dir, ip.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ip, false, fmt.Errorf("releasing %s: %w", ip, err)
	}
	delete(a.byIP, ip)
	delete(a.byOwner, o)
	return ip, true, nil
}

// Lookup returns o's address.
func (a *Allocator) Lookup(o Owner) (netip.Addr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ip, ok := a.byOwner[o]
	return ip, ok
}

// List returns every allocation.
func (a *Allocator) List() map[Owner]netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[Owner]netip.Addr, len(a.byOwner))
	for o, ip := range a.byOwner {
		out[o] = ip
	}
	return out
}

func (a *Allocator) persist(ip netip.Addr, o Owner) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(filepath.Join(a.dir, ip.String()), b, 0o600); err != nil {
		return fmt.Errorf("recording allocation of %s: %w", ip, err)
	}
	return nil
}

// AllocatedAt returns when o's address was allocated (its record's time).
func (a *Allocator) AllocatedAt(o Owner) (time.Time, bool) {
	a.mu.Lock()
	ip, ok := a.byOwner[o]
	a.mu.Unlock()
	if !ok {
		return time.Time{}, false
	}
	fi, err := os.Stat(filepath.Join(a.dir, ip.String()))
	if err != nil {
		return time.Time{}, false
	}
	return fi.ModTime(), true
}
