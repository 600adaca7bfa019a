package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

// The node's underlay device carries bpf/host.c's programs, attached with
// TCX links: the device is not anet's, other programs may hang on it, and
// a link can be moved to a new program atomically. A TCX attach waits for
// an RCU grace period, which is nothing for one device at start.
//
// Its link pins live in their own directory (netdev/ under the bpf root),
// apart from the endpoints' links/, which the endpoint machinery owns.

// NetdevLinksDir holds the pinned links of the underlay devices.
func (l Layout) NetdevLinksDir() string { return filepath.Join(l.Root, "netdev") }

// NetdevLinkPin is the pin of the TCX link of an underlay device and tc
// direction ("ingress": packets arriving, "egress": packets leaving).
func (l Layout) NetdevLinkPin(ifname, tcDir string) string {
	return filepath.Join(l.NetdevLinksDir(), ifname+"_"+tcDir)
}

// AttachNetdev runs ingress at ifname's tc ingress and egress at its tc
// egress. Links pinned by an earlier run are moved to the given programs
// (link.Update: no packet meets the device without a program); missing
// ones are attached and pinned.
func AttachNetdev(l Layout, ifname string, ingress, egress *ebpf.Program) error {
	idx, err := netlinkIndex(ifname)
	if err != nil {
		return fmt.Errorf("finding underlay device %s: %w", ifname, err)
	}
	if err := os.MkdirAll(l.NetdevLinksDir(), 0o700); err != nil {
		return err
	}
	for _, a := range []struct {
		dir    string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"ingress", ebpf.AttachTCXIngress, ingress},
		{"egress", ebpf.AttachTCXEgress, egress},
	} {
		pin := l.NetdevLinkPin(ifname, a.dir)
		if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := lk.Info()
			sameDev := ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == idx
			if sameDev {
				err := lk.Update(a.prog)
				lk.Close()
				if err != nil {
					return fmt.Errorf("moving %s's %s link to the new program: %w", ifname, a.dir, err)
				}
				continue
			}
			// A pin of a device that had this name once: gone with it.
			lk.Close()
			_ = os.Remove(pin)
		} else if !errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(pin) // unreadable: replaced below
		}
		lk, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: a.prog, Attach: a.attach})
		if err != nil {
			return fmt.Errorf("attaching tcx %s to %s: %w", a.dir, ifname, err)
		}
		err = lk.Pin(pin)
		if err != nil {
			lk.Close()
			return fmt.Errorf("pinning link %s: %w", pin, err)
		}
		lk.Close() // the pin holds it
	}
	return nil
}

// DetachNetdev removes the programs from ifname (their links and pins).
// A device or pin already gone is no error.
func DetachNetdev(l Layout, ifname string) error {
	var errs []error
	for _, dir := range []string{"ingress", "egress"} {
		pin := l.NetdevLinkPin(ifname, dir)
		lk, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("opening %s: %w", pin, err))
			continue
		}
		if err := lk.Unpin(); err != nil {
			errs = append(errs, err)
		}
		lk.Close() // the last reference: the link goes
	}
	return errors.Join(errs...)
}

// Program names of the underlay device.
const (
	ProgFromNetdev = bpf.HostProgAnetFromNetdev
	ProgToNetdev   = bpf.HostProgAnetToNetdev
)

// AttachNetdev hangs this run's underlay programs on ifname (see the
// package function AttachNetdev).
func (dp *Datapath) AttachNetdev(ifname string) error {
	return AttachNetdev(dp.Layout, ifname, dp.host.AnetFromNetdev, dp.host.AnetToNetdev)
}

// DetachNetdev removes the underlay programs from ifname.
func (dp *Datapath) DetachNetdev(ifname string) error { return DetachNetdev(dp.Layout, ifname) }

// updateNetdevLinks moves every pinned underlay link to this run's
// programs (Activate). A link whose device is gone is removed.
func (dp *Datapath) updateNetdevLinks() error {
	entries, err := os.ReadDir(dp.Layout.NetdevLinksDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		pin := filepath.Join(dp.Layout.NetdevLinksDir(), e.Name())
		prog := dp.host.AnetFromNetdev
		if strings.HasSuffix(e.Name(), "_egress") {
			prog = dp.host.AnetToNetdev
		}
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			dp.log.Warn("unusable underlay link pin; removing it", "pin", pin, "err", err)
			_ = os.Remove(pin)
			continue
		}
		err = lk.Update(prog)
		lk.Close()
		if gone(err) || errors.Is(err, unix.ENOLINK) {
			dp.log.Info("underlay device of a pinned link is gone; removing the pin", "pin", pin)
			_ = os.Remove(pin)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("updating underlay link %s: %w", pin, err))
		}
	}
	return errors.Join(errs...)
}

// SetNodeConfig tells the underlay programs the node's address (the SNAT
// source for backends on other nodes) and the SNAT port range. Ports of the
// range must not be used by the node's own sockets: keep it outside
// net.ipv4.ip_local_port_range.
func (dp *Datapath) SetNodeConfig(addr netip.Addr, snatMin, snatMax uint16) error {
	if !addr.Is4() {
		return fmt.Errorf("node address %s: only IPv4 is served", addr)
	}
	if snatMin == 0 || snatMax < snatMin {
		return fmt.Errorf("SNAT port range %d-%d is empty", snatMin, snatMax)
	}
	return dp.updateNodeConfig(func(c *bpf.HostNodeConfig) {
		c.Addr, c.SnatMin, c.SnatMax = be32(addr), snatMin, snatMax
	})
}

// updateNodeConfig rewrites the node's config entry with change applied:
// SetNodeConfig and SetUnderlay each own some of its fields.
func (dp *Datapath) updateNodeConfig(change func(*bpf.HostNodeConfig)) error {
	dp.nodeMu.Lock()
	defer dp.nodeMu.Unlock()
	var cfg bpf.HostNodeConfig
	if err := dp.host.AnetNodeConfig.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("reading the node config: %w", err)
	}
	change(&cfg)
	if err := dp.host.AnetNodeConfig.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("writing the node config: %w", err)
	}
	return nil
}

// GCConntrack runs one collection of the conntrack table (see the package
// function): expired entries, and UDP flows whose backend left (the
// backend ID no longer names the address the flow was sent to).
func (dp *Datapath) GCConntrack() (CTStats, error) {
	backends := dp.shared[bpf.SockMapAnetLb4Backends]
	return GCConntrack(dp.host.AnetCt4, Monotonic(), func(id uint32, addr uint32, port uint16) bool {
		var b bpf.SockLb4Backend
		if err := backends.Lookup(id, &b); err != nil {
			return true
		}
		return b.Addr != addr || b.Port != port
	})
}
