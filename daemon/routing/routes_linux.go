package routing

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Table programs the desired routes in the main table of the netns the
// handle was opened in (the process's own by default).
type Table struct {
	h   *netlink.Handle
	log *slog.Logger
}

// NewTable returns a table working in the current netns.
func NewTable(log *slog.Logger) (*Table, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	return &Table{h: h, log: log}, nil
}

// Close releases the netlink handle. The routes stay.
func (t *Table) Close() { t.h.Close() }

// Installed lists anet's routes (protocol Protocol, main table).
func (t *Table) Installed() (map[netip.Prefix]netip.Addr, error) {
	rs, err := t.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	out := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		out[netip.PrefixFrom(a, ones)] = gw
	}
	return out, nil
}

// Sync makes anet's routes exactly want: it replaces what differs and
// deletes anet's routes that are not wanted. Routes of anyone else are
// never touched. A route that cannot be installed (its gateway is not
// reachable on a link) does not stop the others; the errors are joined.
func (t *Table) Sync(want []Route) error {
	have, err := t.Installed()
	if err != nil {
		return err
	}
	wanted := map[netip.Prefix]bool{}
	var errs []error
	for _, r := range want {
		wanted[r.Dst] = true
		if gw, ok := have[r.Dst]; ok && gw == r.Gateway {
			continue
		}
		if other, err := t.foreign(r.Dst); err != nil || other != nil {
			if err == nil {
				err = fmt.Errorf("a route of protocol %d to %s is in the way; leaving it", other.Protocol, r.Dst)
			}
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		if err := t.h.RouteReplace(toNetlink(r.Dst, r.Gateway)); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		t.log.Info("route to node installed", "dst", r.Dst, "via", r.Gateway, "node", r.Node)
	}
	for dst, gw := range have {
		if wanted[dst] {
			continue
		}
		if err := t.h.RouteDel(toNetlink(dst, gw)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s via %s: %w", dst, gw, err))
			continue
		}
		t.log.Info("route to node removed", "dst", dst, "via", gw)
	}
	return errors.Join(errs...)
}

// foreign returns a route of someone else to exactly dst in the main table.
func (t *Table) foreign(dst netip.Prefix) (*netlink.Route, error) {
	rs, err := t.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: toNetlink(dst, netip.Addr{}).Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for i := range rs {
		if rs[i].Protocol != Protocol {
			return &rs[i], nil
		}
	}
	return nil, nil
}

func toNetlink(dst netip.Prefix, gw netip.Addr) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		Gw:       net.IP(gw.AsSlice()),
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
	}
}
