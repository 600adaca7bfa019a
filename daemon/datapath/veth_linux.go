package datapath

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Wiring a pod: anetd does the host-side and pod-side work of an ADD
// itself. It is warm, holds the loaded programs (no pinned-object loads
// per pod), and keeps the one lock that orders an ADD against a DEL of the
// same attachment.

// WireConfig is what an endpoint's veth pair is made from.
type WireConfig struct {
	HostIfName string // host side, HostIfName(containerID, ifName)
	PodIfName  string // pod side, CNI_IFNAME
	MTU        int    // 0: the kernel's default
	IP         netip.Addr
	Gateway    netip.Addr
	// Mark, when set, is called at the end of each step (Step*): the
	// caller's trace and test hooks.
	Mark func(step string)
	// Made, when set, is called once the pair exists and the programs are
	// attached, before either side is configured, with what the
	// endpoint's record needs (the host side's index and MAC, the pod
	// side's MAC, the attach mode): the caller writes the record while
	// Wire configures both sides. (Started before the attach instead,
	// the record's fsync made the attach slower by about as much as it
	// saved, measured.)
	Made func(Wired)
}

// Steps of Wire, in order.
const (
	StepVeth     = "veth"     // the pair made, both ends down, IPv6 off on the host side
	StepAttached = "attached" // the programs on the host side, both ends still down
	StepPod      = "pod"      // the pod side up with its address, routes and neighbour
	StepHost     = "host"     // the host side up with its route and neighbour to the pod
)

func (c WireConfig) mark(step string) {
	if c.Mark != nil {
		c.Mark(step)
	}
}

// Wired is what wiring made.
type Wired struct {
	HostIfindex int
	HostMAC     net.HardwareAddr
	PodMAC      net.HardwareAddr
	PodIfindex  int
	Mode        string // ModeTCX or ModeTC
}

// ErrPodIfExists says the pod's namespace already has an interface of the
// requested name.
var ErrPodIfExists = errors.New("interface exists in the pod's network namespace")

// Wire makes an endpoint's veth pair with its pod side created directly in
// podNS, attaches the programs to the host side while both ends are down,
// and only then brings the ends up and sets addresses, routes and
// neighbours, so that the pod never sends a packet that the programs do
// not see. A host-side device of the same name is a leftover of an ADD
// that never finished (the name is the attachment's own): it is removed.
// On error nothing stays.
//
// Each side's requests go through one netlink socket (a handle): the
// package-level calls of vishvananda/netlink open and set up a socket for
// every request, a dozen per ADD.
func (dp *Datapath) Wire(podNS *os.File, c WireConfig) (w Wired, err error) {
	if !c.IP.Is4() || !c.Gateway.Is4() {
		return w, fmt.Errorf("wiring %s: IPv4 addresses only", c.PodIfName)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return w, fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer h.Close()
	// The pod side's MAC is chosen here, as the kernel would choose it
	// (random, locally administered, unicast), so that it is known
	// before the pod side is configured (Made), which checks it.
	podMAC, err := randomMAC()
	if err != nil {
		return w, err
	}
	la := netlink.NewLinkAttrs()
	la.Name = c.HostIfName
	la.MTU = c.MTU
	// One queue each way on each end: without it the kernel gives a veth
	// as many as there are possible CPUs, each with its kobjects in sysfs,
	// which the pair's creation and deletion pay for. anet's programs run
	// at tc and hand packets on with redirects; veth's extra queues serve
	// only XDP on the device, which anet does not attach.
	la.NumTxQueues, la.NumRxQueues = 1, 1
	veth := &netlink.Veth{LinkAttrs: la, PeerName: c.PodIfName, PeerHardwareAddr: podMAC, PeerNamespace: netlink.NsFd(int(podNS.Fd())),
		PeerNumTxQueues: 1, PeerNumRxQueues: 1}
	err = h.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// The host side's name, or the pod side's, is taken. The host
		// side's is a leftover (looked for only now, which spares every
		// ADD a request): it goes, and the pair is made again.
		if old, lerr := h.LinkByName(c.HostIfName); lerr == nil {
			dp.log.Info("removing a leftover host device of an unfinished ADD", "hostIf", c.HostIfName)
			_ = h.LinkDel(old)
			_ = DetachEndpoint(dp.Layout, c.HostIfName)
			err = h.LinkAdd(veth)
		}
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return w, fmt.Errorf("%w: %s", ErrPodIfExists, c.PodIfName)
		}
		return w, fmt.Errorf("creating veth pair %s/%s: %w", c.HostIfName, c.PodIfName, err)
	}
	attached := false
	defer func() {
		if err != nil {
			if lk, lerr := h.LinkByName(c.HostIfName); lerr == nil {
				_ = h.LinkDel(lk) // takes the pod side with it
			}
			if attached {
				_ = DetachEndpoint(dp.Layout, c.HostIfName)
			}
		}
	}()
	host, err := h.LinkByName(c.HostIfName)
	if err != nil {
		return w, fmt.Errorf("finding %s: %w", c.HostIfName, err)
	}
	w.HostIfindex = host.Attrs().Index
	w.HostMAC = host.Attrs().HardwareAddr
	w.PodMAC = podMAC
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+c.HostIfName+"/disable_ipv6", []byte("1"), 0o644)
	c.mark(StepVeth)
	if w.Mode, err = dp.attachWith(h, c.HostIfName, w.HostIfindex); err != nil {
		return w, err
	}
	attached = true
	c.mark(StepAttached)
	if c.Made != nil {
		c.Made(w)
	}

	podNet, err := ns.GetNS(fmt.Sprintf("/proc/self/fd/%d", podNS.Fd()))
	if err != nil {
		return w, fmt.Errorf("opening the pod's network namespace: %w", err)
	}
	defer podNet.Close()
	if err := podNet.Do(func(ns.NetNS) error { return configurePod(c, &w) }); err != nil {
		return w, err
	}
	c.mark(StepPod)
	if err := h.LinkSetUp(host); err != nil {
		return w, fmt.Errorf("setting %s up: %w", c.HostIfName, err)
	}
	podIP := c.IP.AsSlice()
	if err := h.RouteReplace(&netlink.Route{LinkIndex: w.HostIfindex, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: podIP, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return w, fmt.Errorf("adding route to the pod: %w", err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: w.HostIfindex, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: podIP, HardwareAddr: w.PodMAC}); err != nil {
		return w, fmt.Errorf("adding pod neighbour: %w", err)
	}
	c.mark(StepHost)
	return w, nil
}

// randomMAC is a random locally administered unicast Ethernet address, as
// the kernel gives a veth without one (eth_random_addr).
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("choosing a MAC address: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// configurePod runs in the pod's netns, after the host side's programs are
// attached: IPv6 off, the link up, the address as a /32, the gateway
// as an on-link host route and the default route through it, and a
// permanent neighbour entry for the gateway (the host-side MAC), so the pod
// needs no ARP to leave. The programs answer ARP too, should the entry go.
func configurePod(c WireConfig, w *Wired) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // in the pod's netns
	if err != nil {
		return fmt.Errorf("opening a netlink socket in the pod: %w", err)
	}
	defer h.Close()
	lk, err := h.LinkByName(c.PodIfName)
	if err != nil {
		return fmt.Errorf("finding %s in the pod: %w", c.PodIfName, err)
	}
	if got := lk.Attrs().HardwareAddr; w.PodMAC != nil && got.String() != w.PodMAC.String() {
		return fmt.Errorf("%s in the pod has MAC %s, not the %s it was made with", c.PodIfName, got, w.PodMAC)
	}
	w.PodMAC = lk.Attrs().HardwareAddr
	w.PodIfindex = lk.Attrs().Index
	// IPv4 only for now: no IPv6 on either end (the programs drop it),
	// switched off before the link is up.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+c.PodIfName+"/disable_ipv6", []byte("1"), 0o644)
	if err := h.LinkSetUp(lk); err != nil {
		return fmt.Errorf("setting %s up: %w", c.PodIfName, err)
	}
	gw := c.Gateway.AsSlice()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrAdd(lk, addr); err != nil {
		return fmt.Errorf("adding %s: %w", c.IP, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: w.PodIfindex, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("adding route to gateway: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: w.PodIfindex, Gw: gw}); err != nil {
		return fmt.Errorf("adding default route: %w", err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: w.PodIfindex, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: w.HostMAC}); err != nil {
		return fmt.Errorf("adding gateway neighbour: %w", err)
	}
	return nil
}

// attach hangs the loaded programs on a host-side device: TCX links,
// pinned so that they outlive anetd, or tc clsact where TCX is missing.
func (dp *Datapath) attach(ifname string, idx int) (string, error) {
	return dp.attachWith(nil, ifname, idx)
}

// attachWith is attach, tc's requests through the netlink handle h (nil: a
// socket per request).
func (dp *Datapath) attachWith(h *netlink.Handle, ifname string, idx int) (string, error) {
	progs := map[Dir]*ebpf.Program{}
	for _, d := range dirs {
		progs[d] = dp.Program(progForDir(d))
	}
	if dp.EndpointAttach == ModeTCX {
		err := attachTCX(dp.Layout, ifname, idx, progs)
		if err == nil {
			return ModeTCX, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
	}
	if err := attachTCWith(h, idx, progs); err != nil {
		return "", err
	}
	return ModeTC, nil
}

// CheckAttached verifies that the datapath's current programs are attached
// to a host-side device (CheckEndpoint in dp's layout): anetd answers CNI
// CHECK's question, so that anet-cni need not link this package.
func (dp *Datapath) CheckAttached(ifname string) error { return CheckEndpoint(dp.Layout, ifname) }

// PruneLinks removes the link pins whose device is gone (PruneLinkPins in
// dp's layout), after a CNI GC.
func (dp *Datapath) PruneLinks() error { return PruneLinkPins(dp.Layout) }

// HostDevices lists the veths in the current network namespace that carry
// an endpoint host-side name (HostIfName's shape), whoever made them.
func HostDevices() ([]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []string
	for _, lk := range links {
		if lk.Type() == "veth" && IsHostIfName(lk.Attrs().Name) {
			out = append(out, lk.Attrs().Name)
		}
	}
	return out, nil
}
