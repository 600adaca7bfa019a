package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

// Program names, as pinned and as the C entry points are called.
const (
	ProgFromContainer = bpf.LxcProgAnetFromContainer
	ProgToContainer   = bpf.LxcProgAnetToContainer
)

// progForDir is the program that runs on an endpoint's host-side veth for
// a tc direction of that device: its ingress is the pod's egress.
func progForDir(d Dir) string {
	if d == DirEgress {
		return ProgFromContainer
	}
	return ProgToContainer
}

// Datapath is anetd's handle on the loaded programs and pinned maps.
type Datapath struct {
	Layout Layout
	// EndpointAttach is how Wire attaches the programs to a new endpoint:
	// ModeTC (the default) or ModeTCX. See Wire.
	EndpointAttach string
	objs           bpf.LxcObjects
	log            *slog.Logger
}

// CheckBPFFS returns a clear error unless dir is a directory on a bpf
// filesystem.
func CheckBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpf root %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("bpf root %s is not on a bpf filesystem (mount one with: mount -t bpf bpf %s)", dir, dir)
	}
	return nil
}

// Load loads the programs, reusing the maps pinned under the layout's root
// (so endpoints and counters survive a restart), pins the new programs in
// place of the old ones and moves every pinned endpoint link to them with
// link.Update: an atomic swap, no packet sees a device without a program.
func Load(root string, log *slog.Logger) (*Datapath, error) {
	if err := CheckBPFFS(root); err != nil {
		return nil, err
	}
	l := Layout{Root: root}
	for _, d := range []string{l.MapsDir(), l.ProgsDir(), l.LinksDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}
	spec, err := bpf.LoadLxc()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec: %w", err)
	}
	dp := &Datapath{Layout: l, log: log}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: l.MapsDir()}}
	if err := spec.LoadAndAssign(&dp.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("pinned maps in %s do not match this build (remove them to start afresh): %w", l.MapsDir(), err)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading eBPF programs: %+v", ve)
		}
		return nil, fmt.Errorf("loading eBPF programs: %w", err)
	}
	for name, p := range dp.programs() {
		if err := pinReplace(p, l.ProgPin(name)); err != nil {
			dp.Close()
			return nil, err
		}
	}
	if err := dp.updateLinks(); err != nil {
		dp.Close()
		return nil, err
	}
	if err := dp.updateTCFilters(); err != nil {
		dp.Close()
		return nil, err
	}
	return dp, nil
}

func (dp *Datapath) programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		ProgFromContainer: dp.objs.AnetFromContainer,
		ProgToContainer:   dp.objs.AnetToContainer,
	}
}

// pinReplace pins p at path, atomically replacing whatever was pinned there.
func pinReplace(p *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := p.Pin(tmp); err != nil {
		return fmt.Errorf("pinning %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = p.Unpin()
		return fmt.Errorf("replacing pin %s: %w", path, err)
	}
	return nil
}

// updateLinks moves every pinned endpoint link to the current programs.
// A link whose device is gone is unpinned: nothing else would.
func (dp *Datapath) updateLinks() error {
	entries, err := os.ReadDir(dp.Layout.LinksDir())
	if err != nil {
		return err
	}
	progs := dp.programs()
	for _, e := range entries {
		ifname, d, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		prog := progs[progForDir(d)]
		path := filepath.Join(dp.Layout.LinksDir(), e.Name())
		lk, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			dp.log.Warn("unpinning unusable link", "pin", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		if _, err := netlinkIndex(ifname); err != nil {
			dp.log.Info("unpinning link of a removed device", "pin", path)
			_ = lk.Unpin()
			lk.Close()
			continue
		}
		err = lk.Update(prog)
		lk.Close()
		if err != nil {
			return fmt.Errorf("updating link %s: %w", path, err)
		}
	}
	return nil
}

// updateTCFilters moves endpoints attached with tc clsact (no TCX) to the
// current programs: a filter replace swaps the program atomically.
func (dp *Datapath) updateTCFilters() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	progs := map[Dir]*ebpf.Program{DirEgress: dp.objs.AnetFromContainer, DirIngress: dp.objs.AnetToContainer}
	for _, lk := range links {
		if lk.Type() != "veth" {
			continue
		}
		filters, err := netlink.FilterList(lk, tcParent(DirEgress))
		if err != nil {
			continue // no clsact qdisc
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == ProgFromContainer {
				if err := attachTC(lk.Attrs().Index, progs); err != nil {
					return fmt.Errorf("updating tc programs of %s: %w", lk.Attrs().Name, err)
				}
				break
			}
		}
	}
	return nil
}

// Close releases the loader's handles; pinned objects stay in the kernel.
func (dp *Datapath) Close() error { return dp.objs.Close() }

// LoadUnpinned loads the programs with fresh maps of their own, pinned
// nowhere and attached to nothing: for BPF_PROG_TEST_RUN tests and
// benchmarks, never for a node.
func LoadUnpinned() (*Datapath, error) {
	spec, err := bpf.LoadLxc()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	dp := &Datapath{log: slog.Default()}
	if err := spec.LoadAndAssign(&dp.objs, nil); err != nil {
		return nil, fmt.Errorf("loading eBPF programs: %w", err)
	}
	return dp, nil
}

// Program returns one of the loaded programs by name (ProgFromContainer,
// ProgToContainer), or nil.
func (dp *Datapath) Program(name string) *ebpf.Program { return dp.programs()[name] }
