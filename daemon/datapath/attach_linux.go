package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attachment modes of an endpoint's programs.
const (
	ModeTCX = "tcx" // TCX links, pinned under the layout's links/ directory
	ModeTC  = "tc"  // clsact qdisc with direct-action cls_bpf filters (kernels before 6.6)
)

var dirs = [...]Dir{DirEgress, DirIngress}

// tcxAttach is where each program hangs on the host-side veth: what the pod
// sends (its egress) arrives at the device's tc ingress.
func tcxAttach(d Dir) ebpf.AttachType {
	if d == DirEgress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

func tcParent(d Dir) uint32 {
	if d == DirEgress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func netlinkIndex(ifname string) (int, error) {
	lk, err := netlinksafe.LinkByName(ifname)
	if err != nil {
		return 0, err
	}
	return lk.Attrs().Index, nil
}

func attachTCX(l Layout, ifname string, idx int, progs map[Dir]*ebpf.Program) error {
	var done []link.Link
	ok := false
	defer func() {
		if !ok {
			for _, lk := range done {
				_ = lk.Unpin()
				lk.Close()
			}
		}
	}()
	for _, d := range dirs {
		lk, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: progs[d], Attach: tcxAttach(d)})
		if err != nil {
			return fmt.Errorf("attaching tcx %s to %s: %w", d, ifname, err)
		}
		done = append(done, lk)
		pin := l.LinkPin(ifname, d)
		_ = os.Remove(pin) // a stale pin of a device that had this name
		if err := lk.Pin(pin); err != nil {
			return fmt.Errorf("pinning link %s: %w", pin, err)
		}
	}
	for _, lk := range done {
		lk.Close() // the pin holds it
	}
	ok = true
	return nil
}

func attachTC(idx int, progs map[Dir]*ebpf.Program) error { return attachTCWith(nil, idx, progs) }

// attachTCWith is attachTC through the netlink handle h (nil: a socket per
// request).
func attachTCWith(h *netlink.Handle, idx int, progs map[Dir]*ebpf.Program) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("adding clsact qdisc: %w", err)
	}
	for _, d := range dirs {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: idx, Parent: tcParent(d), Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1,
			},
			Fd: progs[d].FD(), Name: progForDir(d), DirectAction: true,
		}
		if err := h.FilterReplace(f); err != nil {
			_ = h.QdiscDel(qdisc)
			return fmt.Errorf("adding tc filter (%s): %w", d, err)
		}
	}
	return nil
}

// DetachEndpoint removes an endpoint's link pins. The device itself is
// deleted by the caller; tc filters go with it. Missing pins are fine.
func DetachEndpoint(l Layout, ifname string) error {
	var errs []error
	for _, d := range dirs {
		pin := l.LinkPin(ifname, d)
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing link pin %s: %w", pin, err))
		}
	}
	return errors.Join(errs...)
}

// CheckEndpoint verifies that anetd's current programs are attached to
// ifname in both directions, by TCX link or by tc filter.
func CheckEndpoint(l Layout, ifname string) error {
	idx, err := netlinkIndex(ifname)
	if err != nil {
		return fmt.Errorf("finding %s: %w", ifname, err)
	}
	for _, d := range dirs {
		want, err := pinnedProgID(l.ProgPin(progForDir(d)))
		if err != nil {
			return err
		}
		got, err := attachedProgID(l, ifname, idx, d)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s on %s runs program %d, anetd's is %d", d, ifname, got, want)
		}
	}
	return nil
}

func pinnedProgID(path string) (ebpf.ProgramID, error) {
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return 0, fmt.Errorf("loading pinned program %s: %w", path, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

func attachedProgID(l Layout, ifname string, idx int, d Dir) (ebpf.ProgramID, error) {
	pin := l.LinkPin(ifname, d)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer lk.Close()
		info, err := lk.Info()
		if err != nil {
			return 0, fmt.Errorf("link %s: %w", pin, err)
		}
		tcx := info.TCX()
		if tcx == nil || int(tcx.Ifindex) != idx {
			return 0, fmt.Errorf("link %s is not a tcx link of %s", pin, ifname)
		}
		return info.Program, nil
	}
	filters, err := netlinksafe.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: idx}}, tcParent(d))
	if err != nil {
		return 0, fmt.Errorf("listing tc filters of %s: %w", ifname, err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == progForDir(d) {
			return ebpf.ProgramID(bf.Id), nil
		}
	}
	return 0, fmt.Errorf("no %s program attached to %s", d, ifname)
}

// PruneLinkPins removes the link pins whose device no longer exists in the
// current network namespace.
func PruneLinkPins(l Layout) error {
	entries, err := os.ReadDir(l.LinksDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		ifname, _, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		if _, err := netlinkIndex(ifname); err == nil {
			continue
		}
		if err := os.Remove(filepath.Join(l.LinksDir(), e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AttachedProgram returns the ID of the program that runs on ifname (in
// the current network namespace) for direction d, by TCX link or tc filter.
func AttachedProgram(l Layout, ifname string, d Dir) (ebpf.ProgramID, error) {
	idx, err := netlinkIndex(ifname)
	if err != nil {
		return 0, fmt.Errorf("finding %s: %w", ifname, err)
	}
	return attachedProgID(l, ifname, idx, d)
}
