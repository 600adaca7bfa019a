package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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
