package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The socket hooks and where each is attached in the cgroup.
var sockHooks = [...]struct {
	prog   string
	attach ebpf.AttachType
}{
	{ProgSockConnect, ebpf.AttachCGroupInet4Connect},
	{ProgSockSendmsg, ebpf.AttachCGroupUDP4Sendmsg},
	{ProgSockRecvmsg, ebpf.AttachCGroupUDP4Recvmsg},
	{ProgSockGetpeername, ebpf.AttachCgroupInet4GetPeername},
	{ProgSock6Connect, ebpf.AttachCGroupInet6Connect},
	{ProgSock6Sendmsg, ebpf.AttachCGroupUDP6Sendmsg},
	{ProgSock6Recvmsg, ebpf.AttachCGroupUDP6Recvmsg},
	{ProgSock6Getpeername, ebpf.AttachCgroupInet6GetPeername},
}

// SockLinkPin is the pin of a socket hook's cgroup link: named after its
// program (anet_sock4_*), which no endpoint link pin (<device>_<dir>) can
// be taken for.
func (l Layout) SockLinkPin(prog string) string { return filepath.Join(l.LinksDir(), prog) }

// CheckCgroup2 returns a clear error unless dir is a directory of a cgroup
// v2 hierarchy, and its cgroup ID.
func CheckCgroup2(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("cgroup root %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup root %s is not on a cgroup v2 filesystem (socket load balancing needs cgroup v2: "+
			"use /sys/fs/cgroup on a v2 host, /sys/fs/cgroup/unified on a hybrid one, or mount one with: mount -t cgroup2 none DIR)", dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup root %s: %w", dir, err)
	}
	// A cgroup v2 directory's inode number is its cgroup ID (the kernfs
	// node ID, on 64-bit kernels), as cgroup link info reports it.
	return st.Ino, nil
}

// AttachSocketLB attaches the socket hooks (connect4, sendmsg4, recvmsg4,
// getpeername4, and the same four for IPv4-mapped addresses on IPv6
// sockets) at the cgroup v2 directory cgroupRoot, so that every
// socket of a process below it is load-balanced, and pins their links
// under the links directory. Call it after Activate.
//
// On a restart the hooks are already there, held by their pins: each link
// is moved to this run's program with link.Update, an atomic swap, so no
// connect() meets a cgroup without the hook (Activate does the same; here
// it is only what Activate could not do, a first attach or a new root). A
// pinned link of another cgroup (--cgroup-root changed) or of a removed
// one is replaced by a new link at cgroupRoot, attached before the old one
// goes: a socket below both may meet both programs for an instant, and the
// second finds the backend address, which is no frontend, and leaves it.
func (dp *Datapath) AttachSocketLB(cgroupRoot string) error {
	id, err := CheckCgroup2(cgroupRoot)
	if err != nil {
		return err
	}
	progs := dp.programs()
	for _, h := range sockHooks {
		pin := dp.Layout.SockLinkPin(h.prog)
		prog := progs[h.prog]
		if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
			same, why := cgroupLinkAt(lk, id)
			if same {
				err := lk.Update(prog)
				lk.Close()
				if err != nil {
					return fmt.Errorf("updating socket hook %s at %s: %w", h.prog, cgroupRoot, err)
				}
				continue
			}
			dp.log.Info("replacing the pinned socket hook link", "pin", pin, "why", why)
			defer lk.Close() // after the new link took its pin: detaches the old one
		} else if !errors.Is(err, os.ErrNotExist) {
			dp.log.Warn("replacing an unusable socket hook pin", "pin", pin, "err", err)
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupRoot, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attaching socket hook %s at %s: %w", h.prog, cgroupRoot, err)
		}
		err = pinReplace(lk, pin)
		lk.Close() // the pin holds it
		if err != nil {
			return err
		}
	}
	return nil
}

// cgroupLinkAt says whether lk is a live cgroup link of the cgroup with ID
// id, or why not.
func cgroupLinkAt(lk link.Link, id uint64) (bool, string) {
	info, err := lk.Info()
	if err != nil {
		return false, "link info: " + err.Error()
	}
	cg := info.Cgroup()
	switch {
	case cg == nil:
		return false, "not a cgroup link"
	case cg.CgroupId == 0:
		return false, "its cgroup was removed"
	case cg.CgroupId != id:
		return false, fmt.Sprintf("attached to cgroup %d, the cgroup root is %d", cg.CgroupId, id)
	}
	return true, ""
}

// updateSocketLinks moves the pinned socket hook links to this run's
// programs (Activate). A link whose cgroup is gone is left to
// AttachSocketLB, which replaces it.
func (dp *Datapath) updateSocketLinks() error {
	progs := dp.programs()
	var errs []error
	for _, h := range sockHooks {
		pin := dp.Layout.SockLinkPin(h.prog)
		lk, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			dp.log.Warn("unusable socket hook pin; AttachSocketLB replaces it", "pin", pin, "err", err)
			continue
		}
		if info, err := lk.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == 0 {
			lk.Close()
			continue
		}
		if err := lk.Update(progs[h.prog]); err != nil {
			errs = append(errs, fmt.Errorf("updating socket hook %s: %w", h.prog, err))
		}
		lk.Close()
	}
	return errors.Join(errs...)
}

// DetachSocketLB detaches the socket hooks and removes their pins. Sockets
// connected through them stay connected to their backends. Missing pins are
// fine.
func (dp *Datapath) DetachSocketLB() error {
	var errs []error
	for _, h := range sockHooks {
		pin := dp.Layout.SockLinkPin(h.prog)
		lk, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("loading socket hook pin %s: %w", pin, err))
			continue
		}
		// Detach first: the link goes even if another process holds it.
		if err := lk.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detaching socket hook %s: %w", h.prog, err))
		}
		if err := lk.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
		lk.Close()
	}
	return errors.Join(errs...)
}
