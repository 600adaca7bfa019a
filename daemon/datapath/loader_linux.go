package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

// Program names, as pinned and as the C entry points are called.
const (
	ProgFromContainer = bpf.LxcProgAnetFromContainer
	ProgToContainer   = bpf.LxcProgAnetToContainer

	ProgSockConnect      = bpf.SockProgAnetSock4Connect
	ProgSockSendmsg      = bpf.SockProgAnetSock4Sendmsg
	ProgSockRecvmsg      = bpf.SockProgAnetSock4Recvmsg
	ProgSockGetpeername  = bpf.SockProgAnetSock4Getpeername
	ProgSock6Connect     = bpf.SockProgAnetSock6Connect
	ProgSock6Sendmsg     = bpf.SockProgAnetSock6Sendmsg
	ProgSock6Recvmsg     = bpf.SockProgAnetSock6Recvmsg
	ProgSock6Getpeername = bpf.SockProgAnetSock6Getpeername
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
	objs           bpf.LxcObjects  // the pod veth programs (lxc.c)
	sock           bpf.SockObjects // the socket hooks (sock.c)
	host           bpf.HostObjects // the underlay device's programs (host.c)
	// One handle per map pinned by name, shared by every collection that
	// defines it (each holds a clone of it).
	shared map[string]*ebpf.Map
	log    *slog.Logger

	// Between Load and Activate: the maps to pin at Activate (new ones,
	// and those that replace a pinned map of another layout) and the
	// replaced maps, held until the swap is done.
	toPin    []string
	replaced map[string]*ebpf.Map
	// Fingerprints of this build's map layouts (recorded at Activate),
	// and the replaced maps whose sizes stayed: not copied.
	layouts  map[string][32]byte
	sameSize map[string]bool
	active   bool

	barrierMu sync.Mutex
	barrier   *progBarrier

	svcOnce sync.Once
	svc     *ServiceMaps
	svcErr  error

	// The shadow of the policy map (policy_linux.go).
	polMu sync.Mutex
	pol   policyState

	// Serializes the read-modify-write of the node config.
	nodeMu sync.Mutex

	// The UDP socket terminator (sockterm_linux.go), or nil and why.
	term    *sockTerm
	termErr error

	// The counts of deleted counters, for TrafficCounters
	// (stats_linux.go); retiredMu also orders a deletion and a read.
	retiredMu sync.Mutex
	retired   map[CounterKey]Counter
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

// How the content of a pinned map reaches its replacement when its layout
// (type, key or value size, max entries, flags) changed between builds.
type refill int

const (
	// refillCopy copies every entry that can be carried without guessing:
	// same map type and key size, and a value that only grew (the new
	// tail is zero, which a field appended to a struct must take to mean
	// "unset") or shrank by a tail that is zero in that entry. Anything
	// else starts empty, and the loader says so. Counters are copied.
	refillCopy refill = iota
	// refillRecords leaves the new map empty: anetd rewrites it from its
	// own records (the endpoint manager's Restore upserts every endpoint)
	// between Load and Activate. Records hold everything the map does, so
	// nothing is guessed from the old layout.
	refillRecords
)

var refills = map[string]refill{
	bpf.LxcMapAnetEpByIp:  refillRecords,
	bpf.LxcMapAnetEpByIf:  refillRecords,
	bpf.LxcMapAnetMetrics: refillCopy,
	// The service maps are copied: the service reconciler rewrites every
	// frontend after its first sync anyway, and until then the copy keeps
	// serving what the last run programmed.
	bpf.SockMapAnetLb4Services: refillCopy,
	bpf.SockMapAnetLb4Backends: refillCopy,
	bpf.SockMapAnetLb4Revnat:   refillCopy,
	bpf.SockMapAnetLb4Affinity: refillCopy,
	bpf.SockMapAnetLb4AffMatch: refillCopy,
	bpf.SockMapAnetSock4Revnat: refillCopy,
	// Conntrack is copied so that translated connections survive an
	// upgrade; the node's config is rewritten by anetd at start.
	bpf.HostMapAnetCt4:        refillCopy,
	bpf.HostMapAnetNodeConfig: refillCopy,
	// Policy is copied, never rebuilt empty: an empty anet_pol_ep would
	// open every isolated pod until the policy reconciler's first sync.
	// The reconciler rewrites only what differs (SetEndpointPolicy).
	bpf.LxcMapAnetPolicy:   refillCopy,
	bpf.LxcMapAnetPolEp:    refillCopy,
	bpf.LxcMapAnetIpcache4: refillCopy,
	bpf.LxcMapAnetPolCt4:   refillCopy,
	bpf.LxcMapAnetFrag4:    refillCopy,
	// The overlay's peers are copied so that the mesh keeps working
	// until the overlay reconciler's first sync rewrites them.
	bpf.HostMapAnetTunnel4: refillCopy,
}

// collection is one eBPF object (one C entry file) that Load loads against
// the shared maps.
type collection struct {
	name string
	spec *ebpf.CollectionSpec
	objs any // *bpf.LxcObjects, *bpf.SockObjects
}

func (dp *Datapath) collections() ([]collection, error) {
	lxc, err := bpf.LoadLxc()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec lxc: %w", err)
	}
	sock, err := bpf.LoadSock()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec sock: %w", err)
	}
	host, err := bpf.LoadHost()
	if err != nil {
		return nil, fmt.Errorf("loading eBPF spec host: %w", err)
	}
	return []collection{{"lxc", lxc, &dp.objs}, {"sock", sock, &dp.sock}, {"host", host, &dp.host}}, nil
}

// setConstants sets the programs' load-time constants from opts, and the
// pod conntrack's clock (jiffies_linux.go). A clock that could not be
// measured leaves the programs on bpf_ktime_get_coarse_ns: clockErr says
// why, for the log.
func setConstants(colls []collection, opts Options) (clockErr error, err error) {
	clk, clockErr := theJiffyClock()
	for _, c := range colls {
		if v, ok := c.spec.Variables["ANET_HOST_NAT"]; ok && opts.HostNAT {
			if err := v.Set(uint32(1)); err != nil {
				return nil, fmt.Errorf("setting ANET_HOST_NAT in %s: %w", c.name, err)
			}
		}
		if v, ok := c.spec.Variables["ANET_ROUTING_MODE"]; ok && opts.RoutingMode != "" {
			if _, err := ParseRoutingMode(string(opts.RoutingMode)); err != nil {
				return nil, err
			}
			if err := v.Set(opts.RoutingMode.constant()); err != nil {
				return nil, fmt.Errorf("setting ANET_ROUTING_MODE in %s: %w", c.name, err)
			}
		}
		if clockErr != nil {
			continue
		}
		for name, val := range map[string]uint64{"ANET_JIFFY_NS": clk.tickNS, "ANET_JIFFY_BASE": clk.base} {
			if v, ok := c.spec.Variables[name]; ok {
				if err := v.Set(val); err != nil {
					return nil, fmt.Errorf("setting %s in %s: %w", name, c.name, err)
				}
			}
		}
	}
	return clockErr, nil
}

// sharedSpecs sizes the maps as opts says and returns every map pinned by
// name, once: a map that several objects define (from the same header)
// must be defined alike in all of them.
func sharedSpecs(colls []collection, opts Options) (map[string]*ebpf.MapSpec, error) {
	sizes := opts.withDefaults().sizes()
	out := map[string]*ebpf.MapSpec{}
	from := map[string]string{}
	for _, c := range colls {
		for name, ms := range c.spec.Maps {
			if n, ok := sizes[name]; ok {
				ms.MaxEntries = n
			}
			if ms.Pinning != ebpf.PinByName {
				continue
			}
			// The loader pins, at Activate: a pin is what other
			// processes (anet-cni, a later anetd) take for the live map.
			ms.Pinning = ebpf.PinNone
			first, ok := out[name]
			if !ok {
				out[name], from[name] = ms, c.name
				continue
			}
			if first.Type != ms.Type || first.KeySize != ms.KeySize || first.ValueSize != ms.ValueSize ||
				first.MaxEntries != ms.MaxEntries || first.Flags != ms.Flags || fingerprint(first) != fingerprint(ms) {
				return nil, fmt.Errorf("map %s is defined differently in %s and %s", name, from[name], c.name)
			}
		}
	}
	return out, nil
}

// loadCollections loads every collection against the shared maps.
func loadCollections(colls []collection, shared map[string]*ebpf.Map) error {
	cache := btf.NewCache()
	for _, c := range colls {
		repl := map[string]*ebpf.Map{}
		for name := range c.spec.Maps {
			if m, ok := shared[name]; ok {
				repl[name] = m
			}
		}
		opts := &ebpf.CollectionOptions{MapReplacements: repl, Cache: cache}
		if err := c.spec.LoadAndAssign(c.objs, opts); err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				return fmt.Errorf("loading eBPF programs of %s: %+v", c.name, ve)
			}
			return fmt.Errorf("loading eBPF programs of %s: %w", c.name, err)
		}
	}
	return nil
}

// Load loads the programs with the default map sizes; see LoadWith.
func Load(root string, log *slog.Logger) (*Datapath, error) {
	return LoadWith(root, Options{}, log)
}

// LoadWith loads the programs of every entry file (pod veth, socket hooks)
// against one set of maps, those pinned under root, so that endpoints,
// counters and services survive a restart, and new maps where there is no
// pin yet or where a pinned map's layout differs from this build's (an
// upgrade that changed a map, or a size changed by opts): such a map is
// migrated, never refused. A map that several entry files define is made
// once and handed to each (a MapReplacement). Load changes nothing a packet
// or a socket sees: the old programs keep running with the old maps. The
// caller then fills the maps that are rebuilt from records (UpsertEndpoint
// for every endpoint) and calls Activate, which swaps everything in at
// once.
//
// The two phases exist so that no packet ever meets a new program with an
// empty map: a migrated endpoint map is complete before any program that
// reads it is attached anywhere.
func LoadWith(root string, opts Options, log *slog.Logger) (*Datapath, error) {
	if err := CheckBPFFS(root); err != nil {
		return nil, err
	}
	l := Layout{Root: root}
	for _, d := range []string{l.MapsDir(), l.ProgsDir(), l.LinksDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}
	dp := &Datapath{Layout: l, log: log, shared: map[string]*ebpf.Map{}, replaced: map[string]*ebpf.Map{},
		layouts: map[string][32]byte{}, sameSize: map[string]bool{}}
	colls, err := dp.collections()
	if err != nil {
		return nil, err
	}
	clockErr, err := setConstants(colls, opts)
	if err != nil {
		return nil, err
	}
	if clockErr != nil {
		log.Info("pod conntrack clock: bpf_ktime_get_coarse_ns, jiffies not measured", "reason", clockErr)
	} else {
		clk, _ := theJiffyClock()
		log.Debug("pod conntrack clock: jiffies", "tickNS", clk.tickNS, "base", clk.base)
	}
	specs, err := sharedSpecs(colls, opts)
	if err != nil {
		return nil, err
	}
	recorded, err := readLayouts(l)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Datapath, error) {
		for _, m := range dp.replaced {
			m.Close()
		}
		for _, m := range dp.shared {
			m.Close()
		}
		return nil, err
	}
	for name, ms := range specs {
		fp := fingerprint(ms)
		dp.layouts[name] = fp
		pinned, err := ebpf.LoadPinnedMap(l.MapPin(name), nil)
		switch {
		case errors.Is(err, os.ErrNotExist):
			dp.toPin = append(dp.toPin, name)
		case err != nil:
			return fail(fmt.Errorf("opening pinned map %s: %w", l.MapPin(name), err))
		default:
			if diff := ms.Compatible(pinned); diff != nil {
				log.Info("pinned map has another layout than this build; migrating it", "map", name, "change", diff)
				dp.replaced[name] = pinned
				dp.toPin = append(dp.toPin, name)
			} else if old, ok := recorded[layoutKeyOf(name)]; ok && old != fp {
				log.Info("pinned map has another layout than this build (same sizes, other fields); migrating it", "map", name)
				dp.replaced[name] = pinned
				dp.sameSize[name] = true
				dp.toPin = append(dp.toPin, name)
			} else {
				dp.shared[name] = pinned
				continue
			}
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return fail(fmt.Errorf("creating map %s: %w", name, err))
		}
		dp.shared[name] = m
	}
	if err := loadCollections(colls, dp.shared); err != nil {
		return fail(err)
	}
	dp.loadSockTerm()
	maps := dp.maps()
	for name, old := range dp.replaced {
		switch refills[name] {
		case refillRecords:
			log.Info("migrated map starts empty and is rebuilt from anetd's records", "map", name)
		case refillCopy:
			if dp.sameSize[name] {
				n, _ := countEntries(old)
				log.Info("migrated map starts empty: its entries have the same size but another layout", "map", name, "notCopied", n)
				continue
			}
			n, skipped, err := copyEntries(old, maps[name])
			if err != nil {
				dp.Close()
				return nil, fmt.Errorf("migrating map %s: %w", name, err)
			}
			log.Info("copied entries into the migrated map", "map", name, "copied", n, "notCopied", skipped)
		}
	}
	return dp, nil
}

// Activate makes what Load loaded live, in an order that leaves a state the
// next start completes whatever point a crash interrupts: first the new
// maps take the place of the old pins (an atomic rename each), then the
// programs' pins, then every endpoint's TCX link is moved to the new
// programs with link.Update, every tc filter is replaced and the socket
// hooks' cgroup links are updated (see AttachSocketLB): each is an atomic
// swap of program and, with it, of the maps it uses. Devices that
// vanished meanwhile are skipped and their pins removed. Activate is done
// once; later calls do nothing.
func (dp *Datapath) Activate() error {
	if dp.active {
		return nil
	}
	maps := dp.maps()
	for _, name := range dp.toPin {
		if err := pinReplace(maps[name], dp.Layout.MapPin(name)); err != nil {
			return err
		}
	}
	if err := writeLayouts(dp.Layout, dp.layouts); err != nil {
		return err
	}
	for name, p := range dp.programs() {
		if err := pinReplace(p, dp.Layout.ProgPin(name)); err != nil {
			return err
		}
	}
	if err := dp.updateLinks(); err != nil {
		return err
	}
	if err := dp.updateTCFilters(); err != nil {
		return err
	}
	if err := dp.updateSocketLinks(); err != nil {
		return err
	}
	if err := dp.updateNetdevLinks(); err != nil {
		return err
	}
	for name, m := range dp.replaced {
		dp.log.Info("map migrated", "map", name)
		m.Close()
	}
	dp.replaced, dp.toPin, dp.active = nil, nil, true
	return nil
}

// Migrating lists the pinned maps that Activate will replace with maps of
// this build's layout.
func (dp *Datapath) Migrating() []string {
	var out []string
	for name := range dp.replaced {
		out = append(out, name)
	}
	return out
}

func (dp *Datapath) programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		ProgFromContainer:   dp.objs.AnetFromContainer,
		ProgToContainer:     dp.objs.AnetToContainer,
		ProgSockConnect:     dp.sock.AnetSock4Connect,
		ProgSockSendmsg:     dp.sock.AnetSock4Sendmsg,
		ProgSockRecvmsg:     dp.sock.AnetSock4Recvmsg,
		ProgSockGetpeername: dp.sock.AnetSock4Getpeername,
		// IPv4-mapped addresses on IPv6 sockets.
		ProgSock6Connect:     dp.sock.AnetSock6Connect,
		ProgSock6Sendmsg:     dp.sock.AnetSock6Sendmsg,
		ProgSock6Recvmsg:     dp.sock.AnetSock6Recvmsg,
		ProgSock6Getpeername: dp.sock.AnetSock6Getpeername,
		ProgFromNetdev:       dp.host.AnetFromNetdev,
		ProgToNetdev:         dp.host.AnetToNetdev,
	}
}

// maps are the shared maps by name, one handle each.
func (dp *Datapath) maps() map[string]*ebpf.Map { return dp.shared }

// pinner is a program or a map.
type pinner interface {
	Pin(string) error
	Unpin() error
}

// pinReplace pins o at path, atomically replacing whatever was pinned there.
func pinReplace(o pinner, path string) error {
	tmp := path + "_new" // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := o.Pin(tmp); err != nil {
		return fmt.Errorf("pinning %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = o.Unpin()
		return fmt.Errorf("replacing pin %s: %w", path, err)
	}
	return nil
}

// gone reports whether err says that a device (or the device of a link)
// no longer exists.
func gone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENOLINK) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.ENXIO) || errors.Is(err, os.ErrNotExist)
}

// updateLinks moves every pinned endpoint link to the current programs. A
// link whose device is gone (deleted while anetd was away, or right now)
// is unpinned, since nothing else would; a link that cannot be moved for
// another reason keeps its old program and is logged, and the others go
// on: one endpoint must not stop the node's start.
func (dp *Datapath) updateLinks() error {
	entries, err := os.ReadDir(dp.Layout.LinksDir())
	if err != nil {
		return err
	}
	progs := dp.programs()
	var failed int
	for _, e := range entries {
		ifname, d, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(dp.Layout.LinksDir(), e.Name())
		lk, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			dp.log.Warn("unpinning unusable link", "pin", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		if why := linkDeviceGone(lk, ifname); why != "" {
			dp.log.Info("unpinning link of a removed device", "pin", path, "why", why)
			_ = lk.Unpin()
			lk.Close()
			continue
		}
		err = lk.Update(progs[progForDir(d)])
		if err != nil && gone(err) {
			dp.log.Info("unpinning link of a device removed meanwhile", "pin", path, "err", err)
			_ = lk.Unpin()
		} else if err != nil {
			failed++
			dp.log.Error("link keeps its old program", "pin", path, "err", err)
		}
		lk.Close()
	}
	if failed > 0 {
		dp.log.Error("some endpoint links could not be moved to the new programs; CHECK reports them", "failed", failed)
	}
	return nil
}

// linkDeviceGone says why a pinned TCX link no longer serves the device
// its pin names, or "" when it does. A link whose device was deleted is
// defunct (ifindex 0) even if a new device took the name since.
func linkDeviceGone(lk link.Link, ifname string) string {
	info, err := lk.Info()
	if err != nil {
		return "link info: " + err.Error()
	}
	tcx := info.TCX()
	if tcx == nil {
		return "not a tcx link"
	}
	if tcx.Ifindex == 0 {
		return "link detached: its device was deleted"
	}
	dev, err := netlinksafe.LinkByName(ifname)
	if err != nil {
		return "device: " + err.Error()
	}
	if dev.Attrs().Index != int(tcx.Ifindex) {
		return fmt.Sprintf("device %s is now ifindex %d, the link's is %d", ifname, dev.Attrs().Index, tcx.Ifindex)
	}
	return ""
}

// updateTCFilters moves endpoints attached with tc clsact (no TCX) to the
// current programs: a filter replace swaps the program atomically. Devices
// that vanish during the walk are skipped; the dumps are retried when the
// kernel interrupts them (netlinksafe).
func (dp *Datapath) updateTCFilters() error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	progs := map[Dir]*ebpf.Program{DirEgress: dp.objs.AnetFromContainer, DirIngress: dp.objs.AnetToContainer}
	for _, lk := range links {
		if lk.Type() != "veth" {
			continue
		}
		filters, err := netlinksafe.FilterList(lk, tcParent(DirEgress))
		if err != nil {
			continue // no clsact qdisc, or the device went away
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == ProgFromContainer {
				err := attachTC(lk.Attrs().Index, progs)
				if err != nil && gone(err) {
					dp.log.Info("device removed while its tc programs were updated", "dev", lk.Attrs().Name, "err", err)
				} else if err != nil {
					dp.log.Error("tc programs of a device could not be updated; it keeps the old ones", "dev", lk.Attrs().Name, "err", err)
				}
				break
			}
		}
	}
	return nil
}

// Close releases the loader's handles; pinned objects stay in the kernel.
// Before Activate nothing was pinned, so what Load made goes with it.
func (dp *Datapath) Close() error {
	for _, m := range dp.replaced {
		m.Close()
	}
	for _, m := range dp.shared {
		m.Close()
	}
	if dp.barrier != nil {
		dp.barrier.close()
	}
	return errors.Join(dp.objs.Close(), dp.sock.Close(), dp.host.Close(), dp.term.close())
}

// LoadUnpinned loads the programs with fresh maps of their own, pinned
// nowhere and attached to nothing: for BPF_PROG_TEST_RUN tests and
// benchmarks, never for a node.
func LoadUnpinned() (*Datapath, error) { return LoadUnpinnedWith(Options{}) }

// LoadUnpinnedWith is LoadUnpinned with the map sizes and constants of opts.
func LoadUnpinnedWith(opts Options) (*Datapath, error) {
	dp := &Datapath{log: slog.Default(), shared: map[string]*ebpf.Map{}}
	colls, err := dp.collections()
	if err != nil {
		return nil, err
	}
	if _, err := setConstants(colls, opts); err != nil {
		return nil, err
	}
	specs, err := sharedSpecs(colls, opts)
	if err != nil {
		return nil, err
	}
	for name, ms := range specs {
		m, err := ebpf.NewMap(ms)
		if err != nil {
			dp.Close()
			return nil, fmt.Errorf("creating map %s: %w", name, err)
		}
		dp.shared[name] = m
	}
	if err := loadCollections(colls, dp.shared); err != nil {
		dp.Close()
		return nil, err
	}
	dp.loadSockTerm()
	return dp, nil
}

// loadSockTerm loads the UDP socket terminator; a kernel without it
// (bpf_sock_destroy came in Linux 6.5) serves everything else.
func (dp *Datapath) loadSockTerm() {
	dp.term, dp.termErr = loadSockTerm(dp.shared)
	if dp.termErr != nil {
		dp.log.Warn("connected UDP sockets to removed service backends cannot be terminated on this kernel", "err", dp.termErr)
	}
}

// Program returns one of the loaded programs by name (ProgFromContainer,
// ProgToContainer, ProgSock*), or nil.
func (dp *Datapath) Program(name string) *ebpf.Program { return dp.programs()[name] }
