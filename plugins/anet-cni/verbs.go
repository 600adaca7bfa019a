package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/cniconf"
	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
)

const callTimeout = 20 * time.Second

// podRef reads the pod's identity from CNI_ARGS (K8S_POD_NAMESPACE, ...).
// Empty segments (a trailing or doubled ";", which runtimes send) are
// skipped; a non-empty segment without "=" is an error. Unknown keys are
// ignored: CNI_ARGS is shared by every plugin of a chain.
func podRef(cniArgs string) (api.PodRef, error) {
	var p api.PodRef
	for _, kv := range strings.Split(cniArgs, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", kv)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p, nil
}

// loadVerb reads what ADD, DEL and CHECK start from: the config and the
// attachment (container ID and interface name) they act on.
func loadVerb(args *skel.CmdArgs) (*cniconf.NetConf, api.Attachment, error) {
	a := api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return nil, a, err
	}
	// The network is part of the attachment: two networks using anet-cni
	// keep their attachments apart (GC of one never removes the other's).
	a.Network = conf.Name
	if err := a.Validate(); err != nil {
		return nil, a, envError("%v", err)
	}
	return conf, a, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	tr := newTracer("ADD", args.ContainerID, args.IfName)
	tr.step("start")
	conf, att, err := loadVerb(args)
	if err != nil {
		return err
	}
	pod, err := podRef(args.Args)
	if err != nil {
		return envError("%v", err)
	}
	if args.Netns == "" {
		return envError("CNI_NETNS is required for ADD")
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return envError("opening netns %q: %v", args.Netns, err)
	}
	defer netns.Close()
	tr.step("config")

	// The ADD is marked (and the mark locked) before anything is allocated:
	// should this process die or fail to undo, anetd finds the mark free and
	// removes what the ADD left (see api.PendingAddDir).
	hostIfName := datapath.HostIfName(att.ContainerID, att.IfName)
	mark, err := api.MarkAdd(api.PendingAddDir(conf.Socket), hostIfName, att)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "marking the ADD in progress", err.Error())
	}
	// Whatever fails from here leaves the mark for anetd's sweep, released
	// when the process exits.
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	client := api.NewClient(conf.Socket)
	alloc, err := client.Allocate(ctx, api.AllocateRequest{Attachment: att, Pod: pod})
	if err != nil {
		return daemonError("allocating an address", err)
	}
	tr.step("allocate")

	// From here on, undo everything on failure: a failed ADD leaves nothing.
	layout := datapath.Layout{Root: conf.BPFRoot}
	success := false
	vethMade, attached := false, false
	defer func() {
		if success {
			mark.Done()
			return
		}
		undone := true
		if vethMade {
			if err := ip.DelLinkByName(hostIfName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
				undone = false
			}
		}
		if attached {
			if datapath.DetachEndpoint(layout, hostIfName) != nil {
				undone = false
			}
		}
		dctx, dcancel := context.WithTimeout(context.Background(), callTimeout)
		defer dcancel()
		err := client.DeleteEndpoint(dctx, att) // also releases the address
		var unavail *api.UnavailableError
		if errors.As(err, &unavail) || errors.Is(err, api.ErrNotReady) {
			// As DEL does: anetd applies the release when it is back.
			_ = api.RecordPendingRelease(api.PendingReleaseDir(conf.Socket), hostIfName, att)
		}
		if err == nil && undone {
			mark.Done()
		}
	}()

	// The pod's link comes up last: first the pair is made down with IPv6
	// off on both ends, then the programs are attached to the host side,
	// and only then are the links set up. No packet of the pod ever passes
	// unseen by the datapath, and the pod sends no IPv6 at all.
	hostIf, podIf, vethMade, err := makeVeth(netns, att.IfName, hostIfName, conf.MTU)
	if err != nil {
		return types.NewError(types.ErrInternal, "creating the veth pair", err.Error())
	}
	tr.step("veth")
	attached = true // a partial attach leaves pins too
	mode, err := datapath.AttachEndpoint(layout, hostIfName)
	if err != nil {
		return types.NewError(types.ErrInternal, "attaching eBPF programs", err.Error())
	}
	tr.step("attach")
	err = netns.Do(func(ns.NetNS) error {
		return configurePod(att.IfName, alloc, hostIf.HardwareAddr)
	})
	if err != nil {
		return types.NewError(types.ErrInternal, "setting up the pod interface", err.Error())
	}
	tr.step("pod")
	if err := configureHost(hostIfName, alloc, podIf.HardwareAddr); err != nil {
		return types.NewError(types.ErrInternal, "setting up the host interface", err.Error())
	}
	tr.step("host")
	err = client.PutEndpoint(ctx, api.EndpointRequest{
		Attachment: att, Pod: pod, Netns: args.Netns, IP: alloc.IP,
		HostIfName: hostIfName, HostIfindex: uint32(hostIf.Index),
		HostMAC: hostIf.HardwareAddr.String(), PodMAC: podIf.HardwareAddr.String(), AttachMode: mode,
	})
	if err != nil {
		return daemonError("registering the endpoint", err)
	}
	tr.step("register")

	podIdx := 1
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIfName, Mac: hostIf.HardwareAddr.String()},
			{Name: att.IfName, Mac: podIf.HardwareAddr.String(), Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: &podIdx,
			Address:   net.IPNet{IP: alloc.IP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   alloc.Gateway.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: alloc.Gateway.AsSlice()}},
		DNS:    conf.DNS,
	}
	success = true
	err = types.PrintResult(result, conf.CNIVersion)
	tr.step("result")
	return err
}

// makeVeth makes the veth pair, both ends down: hostIfName in the current
// (node's) netns, ifName in the pod's, with IPv6 off on both ends before
// either can come up. made says whether the pair was made (the caller then
// owns it, also when err is set).
func makeVeth(netns ns.NetNS, ifName, hostIfName string, mtu int) (hostIf, podIf net.Interface, made bool, err error) {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostIfName, MTU: mtu},
		PeerName:      ifName,
		PeerNamespace: netlink.NsFd(int(netns.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return hostIf, podIf, false, fmt.Errorf("adding veth %s (pod side %s): %w", hostIfName, ifName, err)
	}
	host, err := netlink.LinkByName(hostIfName)
	if err != nil {
		return hostIf, podIf, true, err
	}
	hostIf = net.Interface{Index: host.Attrs().Index, Name: hostIfName, HardwareAddr: host.Attrs().HardwareAddr, MTU: mtu}
	if err := disableIPv6(hostIfName); err != nil {
		return hostIf, podIf, true, err
	}
	err = netns.Do(func(ns.NetNS) error {
		pod, err := netlink.LinkByName(ifName)
		if err != nil {
			return err
		}
		podIf = net.Interface{Index: pod.Attrs().Index, Name: ifName, HardwareAddr: pod.Attrs().HardwareAddr, MTU: mtu}
		return disableIPv6(ifName)
	})
	return hostIf, podIf, true, err
}

// disableIPv6 turns IPv6 off on a link of the current netns. anet is IPv4
// only for now: this keeps the pod from sending IPv6 (router and neighbour
// solicitations, MLD) that the datapath would drop and count. A kernel
// without IPv6 has no such file, which is as good.
func disableIPv6(ifName string) error {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+ifName+"/disable_ipv6", []byte("1"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("turning IPv6 off on %s: %w", ifName, err)
	}
	return nil
}

// configurePod runs in the pod's netns: the link up, the address as a /32,
// the gateway as an on-link host route and the default route through it,
// and a permanent neighbour entry for the gateway (the host-side MAC), so
// the pod needs no ARP to leave. The datapath answers ARP too, should the
// entry go.
func configurePod(ifName string, alloc *api.Allocation, hostMAC net.HardwareAddr) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return err
	}
	gw := alloc.Gateway.AsSlice()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: alloc.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("adding %s: %w", alloc.IP, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", ifName, err)
	}
	idx := link.Attrs().Index
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("adding route to gateway: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw}); err != nil {
		return fmt.Errorf("adding default route: %w", err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
		return fmt.Errorf("adding gateway neighbour: %w", err)
	}
	return nil
}

// configureHost runs in the node's netns: the link up, a host route to the pod over its
// veth and a permanent neighbour entry, so the node reaches the pod without
// ARP and without a bridge.
func configureHost(hostIfName string, alloc *api.Allocation, podMAC net.HardwareAddr) error {
	link, err := netlink.LinkByName(hostIfName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", hostIfName, err)
	}
	idx := link.Attrs().Index
	podIP := alloc.IP.AsSlice()
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: podIP, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("adding route to the pod: %w", err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: podIP, HardwareAddr: podMAC}); err != nil {
		return fmt.Errorf("adding pod neighbour: %w", err)
	}
	return nil
}

// cmdDel removes the veth pair (with its routes and tc filters), the link
// pins and the endpoint. It succeeds when any of them is already gone; with
// anetd down it records the release for anetd to apply when it is back.
func cmdDel(args *skel.CmdArgs) error {
	conf, att, err := loadVerb(args)
	if err != nil {
		return err
	}
	hostIfName := datapath.HostIfName(att.ContainerID, att.IfName)
	// Not beside an ADD of this attachment: wait for it, then remove what
	// it made and its mark too.
	mark, err := api.LockAddMark(api.PendingAddDir(conf.Socket), hostIfName)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "locking the ADD's mark", err.Error())
	}
	if err := delAttachment(conf, att, hostIfName); err != nil {
		if mark != nil {
			mark.Release()
		}
		return err
	}
	if mark != nil {
		mark.Done()
	}
	return nil
}

// delAttachment is DEL once the ADD mark is held.
func delAttachment(conf *cniconf.NetConf, att api.Attachment, hostIfName string) error {
	if err := ip.DelLinkByName(hostIfName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
		return types.NewError(types.ErrInternal, "deleting "+hostIfName, err.Error())
	}
	if err := datapath.DetachEndpoint(datapath.Layout{Root: conf.BPFRoot}, hostIfName); err != nil {
		return types.NewError(types.ErrInternal, "removing link pins", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err := api.NewClient(conf.Socket).DeleteEndpoint(ctx, att)
	var unavail *api.UnavailableError
	if errors.As(err, &unavail) || errors.Is(err, api.ErrNotReady) {
		if rerr := api.RecordPendingRelease(api.PendingReleaseDir(conf.Socket), hostIfName, att); rerr != nil {
			return types.NewError(types.ErrIOFailure, "anetd is down and the release could not be recorded", rerr.Error())
		}
		return nil
	}
	if err != nil {
		return daemonError("deleting the endpoint", err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, att, err := loadVerb(args)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "parsing prevResult", err.Error())
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "converting prevResult", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	ep, err := api.NewClient(conf.Socket).GetEndpoint(ctx, att)
	if err != nil {
		return daemonError("looking up the endpoint", err)
	}
	if len(prev.IPs) != 1 || !prev.IPs[0].Address.IP.Equal(ep.IP.AsSlice()) {
		return fmt.Errorf("prevResult addresses %v do not match the endpoint's %s", prev.IPs, ep.IP)
	}
	if args.Netns == "" {
		return envError("CNI_NETNS is required for CHECK")
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return envError("opening netns %q: %v", args.Netns, err)
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(att.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", att.IfName, err)
		}
		if link.Attrs().HardwareAddr.String() != ep.PodMAC {
			return fmt.Errorf("pod interface %s has MAC %s, endpoint has %s", att.IfName, link.Attrs().HardwareAddr, ep.PodMAC)
		}
		return checkPod(link, prev)
	})
	if err != nil {
		return err
	}
	host, err := netlink.LinkByName(ep.HostIfName)
	if err != nil {
		return fmt.Errorf("host interface %s: %w", ep.HostIfName, err)
	}
	if uint32(host.Attrs().Index) != ep.HostIfindex {
		return fmt.Errorf("host interface %s has index %d, endpoint has %d", ep.HostIfName, host.Attrs().Index, ep.HostIfindex)
	}
	return datapath.CheckEndpoint(datapath.Layout{Root: conf.BPFRoot}, ep.HostIfName)
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := api.NewClient(conf.Socket).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "anetd is not reachable", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "anetd is not ready", st.Reason)
	}
	return nil
}

// cmdGC removes every endpoint and address that is not a valid attachment,
// their devices and link pins, and link pins whose device is gone.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	req := api.GCRequest{Network: conf.Name, Valid: []api.Attachment{}}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, api.Attachment{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := api.NewClient(conf.Socket).GC(ctx, req)
	if err != nil {
		return daemonError("garbage collection", err)
	}
	layout := datapath.Layout{Root: conf.BPFRoot}
	for _, a := range res.Removed {
		name := datapath.HostIfName(a.ContainerID, a.IfName)
		_ = ip.DelLinkByName(name)
		_ = datapath.DetachEndpoint(layout, name)
	}
	return datapath.PruneLinkPins(layout)
}

// checkPod verifies, in the pod's netns, the address and routes that ADD
// set up. (The plugins' ip.ValidateExpectedInterfaceIPs expects a subnet
// route, which a /32 address with an on-link gateway does not have.)
func checkPod(link netlink.Link, prev *current.Result) error {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, want := range prev.IPs {
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == want.Address.String() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("address %s is not on %s", want.Address.String(), link.Attrs().Name)
		}
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, want := range prev.Routes {
		found := false
		for _, r := range routes {
			dst := "0.0.0.0/0"
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			if dst == want.Dst.String() && r.Gw.Equal(want.GW) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("route %s via %s is not on %s", want.Dst.String(), want.GW, link.Attrs().Name)
		}
	}
	return nil
}
