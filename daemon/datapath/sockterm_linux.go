package datapath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// Termination of connected UDP sockets whose backend left its Service
// (bpf/sockterm.c): a UDP socket that the socket hooks connected to a
// backend keeps sending to it after the backend is gone, since connect()
// is translated once. The iterator program destroys such sockets in the
// network namespace in which it is read; anetd reads it in every pod's
// namespace and its own (host processes below --cgroup-root use that one).

// sockTerm is the loaded iterator, or nil on a kernel without
// bpf_sock_destroy (Linux < 6.5) or iter/udp.
type sockTerm struct {
	prog   *ebpf.Program
	filter *ebpf.Map // anet_sockterm: the gone backends, while a pass runs
	iter   *link.Iter
	mu     sync.Mutex // one pass at a time: the filter is shared
}

// loadSockTerm loads bpf/sockterm.c against the shared socket reverse-NAT
// map. Only the program and its two maps are loaded (not the object's
// other map definitions, which the variant build changes).
func loadSockTerm(shared map[string]*ebpf.Map) (*sockTerm, error) {
	spec, err := bpf.LoadSockterm()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec sockterm: %w", err)
	}
	revnat := shared[bpf.SockMapAnetSock4Revnat]
	if revnat == nil {
		return nil, errors.New("socket reverse-NAT map not loaded")
	}
	ms := spec.Maps[bpf.SocktermMapAnetSock4Revnat]
	ms.Pinning = ebpf.PinNone
	ms.MaxEntries = revnat.MaxEntries()
	var objs struct {
		Prog   *ebpf.Program `ebpf:"anet_sockterm_udp"`
		Filter *ebpf.Map     `ebpf:"anet_sockterm"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{bpf.SocktermMapAnetSock4Revnat: revnat}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the UDP socket terminator: %+v", ve)
		}
		return nil, fmt.Errorf("loading the UDP socket terminator: %w", err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: objs.Prog})
	if err != nil {
		objs.Prog.Close()
		objs.Filter.Close()
		return nil, fmt.Errorf("attaching the UDP socket iterator: %w", err)
	}
	return &sockTerm{prog: objs.Prog, filter: objs.Filter, iter: it}, nil
}

func (t *sockTerm) close() error {
	if t == nil {
		return nil
	}
	return errors.Join(t.iter.Close(), t.prog.Close(), t.filter.Close())
}

// ErrNoSockTerm says that the kernel cannot destroy sockets from eBPF
// (bpf_sock_destroy needs Linux 6.5).
var ErrNoSockTerm = errors.New("destroying sockets from eBPF is not supported by this kernel (bpf_sock_destroy needs Linux 6.5 or later)")

// CanTerminateUDP reports whether DestroyUDPSockets works here, or why not.
func (dp *Datapath) CanTerminateUDP() error {
	if dp.term == nil {
		return fmt.Errorf("%w: %w", ErrNoSockTerm, dp.termErr)
	}
	return nil
}

// NetnsRef names a network namespace whose sockets DestroyUDPSockets
// walks: a pod's, as its endpoint record knows it.
type NetnsRef struct {
	Name string // for logs: the pod, or "node"
	// Path is the namespace's bind mount as the runtime gave it at ADD
	// (/var/run/netns/cni-..., or /proc/<pid>/ns/net); it may be absent
	// from anetd's mount namespace, or gone.
	Path string
	// Inode is the namespace's inode (nsfs), recorded at ADD from the
	// descriptor anet-cni passed; 0 when unknown (a record of the
	// two-step API, or older than the field). It tells whether Path
	// still is that namespace, and finds the namespace through a process
	// in it (/proc/<pid>/ns/net) when Path does not.
	Inode uint64
}

// OpenNetns opens the namespaces of refs, one descriptor per namespace
// (keyed by inode: pods with several interfaces share one), and says
// which of refs it could not find. A ref with an inode is opened at its
// path when the path is that namespace, else through any process in it
// (the pod's pause process is, while the pod lives); one without an inode
// only at its path. /proc is scanned once, for all the refs that need it.
func OpenNetns(refs []NetnsRef) (map[uint64]*os.File, []NetnsRef) {
	out := map[uint64]*os.File{}
	var missing, lost []NetnsRef
	for _, r := range refs {
		if r.Inode != 0 && out[r.Inode] != nil {
			continue
		}
		if r.Path != "" {
			if f, ino, err := openNetnsFile(r.Path); err == nil {
				if r.Inode == 0 || r.Inode == ino {
					if out[ino] == nil {
						out[ino] = f
					} else {
						f.Close()
					}
					continue
				}
				f.Close()
			}
		}
		if r.Inode == 0 {
			missing = append(missing, r)
			continue
		}
		lost = append(lost, r)
	}
	if len(lost) == 0 {
		return out, missing
	}
	want := map[uint64]bool{}
	for _, r := range lost {
		want[r.Inode] = true
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if len(want) == 0 {
			break
		}
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		path := filepath.Join("/proc", p.Name(), "ns", "net")
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || !want[st.Ino] {
			continue
		}
		// The process may have gone, or moved, since the stat.
		if f, ino, err := openNetnsFile(path); err == nil && want[ino] {
			out[ino] = f
			delete(want, ino)
		} else if err == nil {
			f.Close()
		}
	}
	for _, r := range lost {
		if out[r.Inode] == nil {
			missing = append(missing, r)
		}
	}
	return out, missing
}

// openNetnsFile opens path and checks that it is a network namespace;
// it returns the namespace's inode.
func openNetnsFile(path string) (*os.File, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	var fs unix.Statfs_t
	var st unix.Stat_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a namespace", path)
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a network namespace", path)
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Ino, nil
}

// NetnsInode returns the inode of the network namespace f (an open nsfs
// file), as NetnsRef records it.
func NetnsInode(f *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// filterKey is gone's entry in anet_sockterm.
func filterKey(g lb.GoneBackend) bpf.SocktermSocktermKey {
	return bpf.SocktermSocktermKey{Addr: be32(g.Addr.Addr()), Port: be16(g.Addr.Port()), RevNat: g.RevNat}
}

// DestroyUDPSockets destroys, in each namespace of nets, the connected UDP
// sockets that the socket hooks connected to one of gone through gone's
// frontend (see bpf/sockterm.c), and returns how many it destroyed in
// each (by inode). Backends that are not IPv4 are skipped. A namespace
// that fails is reported in the error; the others are still walked.
func (dp *Datapath) DestroyUDPSockets(gone []lb.GoneBackend, nets map[uint64]*os.File) (map[uint64]int, error) {
	t := dp.term
	if t == nil {
		return nil, dp.CanTerminateUDP()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []bpf.SocktermSocktermKey
	for _, g := range gone {
		if g.Addr.Addr().Is4() {
			keys = append(keys, filterKey(g))
		}
	}
	out := map[uint64]int{}
	if len(keys) == 0 {
		return out, nil
	}
	// The filter holds at most its size: a larger batch takes several
	// passes.
	size := int(t.filter.MaxEntries())
	var errs []error
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), size)]
		keys = keys[len(chunk):]
		if err := t.pass(chunk, nets, out); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// pass walks every namespace once with keys in the filter.
func (t *sockTerm) pass(keys []bpf.SocktermSocktermKey, nets map[uint64]*os.File, out map[uint64]int) error {
	defer func() {
		for _, k := range keys {
			_ = t.filter.Delete(k)
		}
	}()
	for _, k := range keys {
		if err := t.filter.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("writing the socket termination filter: %w", err)
		}
	}
	var errs []error
	for ino, f := range nets {
		n, err := t.walk(f)
		out[ino] += n
		if err != nil {
			errs = append(errs, fmt.Errorf("netns %d: %w", ino, err))
		}
	}
	return errors.Join(errs...)
}

// walk reads the iterator in the namespace f: the iterator walks the UDP
// sockets of the namespace it was opened in. Each destroyed socket's
// cookie (8 bytes) is in the output.
func (t *sockTerm) walk(f *os.File) (int, error) {
	var n int
	err := ns.WithNetNSPath(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), func(ns.NetNS) error {
		rc, err := t.iter.Open()
		if err != nil {
			return fmt.Errorf("opening the UDP socket iterator: %w", err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		n = len(b) / 8
		if err != nil {
			return fmt.Errorf("reading the UDP socket iterator: %w", err)
		}
		return nil
	})
	return n, err
}

// SocketTerminator runs DestroyUDPSockets for the service reconciler, off
// its path: TerminateUDP queues gone backends, and Run destroys their
// sockets in batches, in anetd's own namespace and every namespace that
// Namespaces lists (the endpoints'), which it opens afresh for each batch
// (see OpenNetns). It is the datapath's lb.SocketTerminator.
type SocketTerminator struct {
	dp         *Datapath
	namespaces func() []NetnsRef
	log        *slog.Logger
	self       *os.File // anetd's own network namespace (the node's)
	selfIno    uint64

	mu      sync.Mutex
	pending []lb.GoneBackend
	kick    chan struct{}

	// Destroyed counts the sockets destroyed; Passes the batches done.
	Destroyed, Passes atomic.Uint64
	// OnPass, when set before Run, is called after each batch (tests).
	OnPass func(destroyed int)
}

var _ lb.SocketTerminator = (*SocketTerminator)(nil)

// NewSocketTerminator returns a terminator for dp's iterator, or an error
// (ErrNoSockTerm) when this kernel cannot destroy sockets. Call it from
// anetd's own network namespace: that is the node's, which it walks too.
func (dp *Datapath) NewSocketTerminator(namespaces func() []NetnsRef, log *slog.Logger) (*SocketTerminator, error) {
	if err := dp.CanTerminateUDP(); err != nil {
		return nil, err
	}
	self, ino, err := openNetnsFile("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("anetd's own network namespace: %w", err)
	}
	return &SocketTerminator{dp: dp, namespaces: namespaces, log: log, self: self, selfIno: ino, kick: make(chan struct{}, 1)}, nil
}

// TerminateUDP queues gone backends; it never blocks.
func (t *SocketTerminator) TerminateUDP(gone []lb.GoneBackend) {
	if len(gone) == 0 {
		return
	}
	t.mu.Lock()
	t.pending = append(t.pending, gone...)
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// Run destroys the sockets of queued backends until ctx ends.
func (t *SocketTerminator) Run(ctx context.Context) {
	defer t.self.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
		}
		t.mu.Lock()
		gone := t.pending
		t.pending = nil
		t.mu.Unlock()
		if len(gone) > 0 {
			t.run(gone)
		}
	}
}

func (t *SocketTerminator) run(gone []lb.GoneBackend) {
	start := time.Now()
	refs := t.namespaces()
	nets, missing := OpenNetns(refs)
	if f := nets[t.selfIno]; f != nil {
		f.Close()
	}
	nets[t.selfIno] = t.self
	defer func() {
		for ino, f := range nets {
			if ino != t.selfIno {
				f.Close()
			}
		}
	}()
	for _, r := range missing {
		t.log.Debug("network namespace not found; its sockets are not walked", "netns", r.Name, "path", r.Path, "inode", r.Inode)
	}
	byNS, err := t.dp.DestroyUDPSockets(gone, nets)
	total := 0
	for _, n := range byNS {
		total += n
	}
	t.Destroyed.Add(uint64(total))
	t.Passes.Add(1)
	if err != nil {
		t.log.Warn("destroying UDP sockets connected to removed backends", "err", err)
	}
	lvl := slog.LevelDebug
	if total > 0 {
		lvl = slog.LevelInfo
	}
	t.log.Log(context.Background(), lvl, "destroyed UDP sockets connected to removed service backends",
		"sockets", total, "backends", len(gone), "namespaces", len(nets), "notFound", len(missing),
		"took", time.Since(start).Round(time.Microsecond))
	if t.OnPass != nil {
		t.OnPass(total)
	}
}
