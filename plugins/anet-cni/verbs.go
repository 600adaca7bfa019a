package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/cniconf"
	"github.com/anet-dev/anet/daemon/api"
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

// cmdAdd hands the whole ADD to anetd in one request, the pod's network
// namespace going along as a file descriptor: anetd is warm, holds the
// loaded programs and orders an ADD against a DEL of the same attachment,
// and one round trip with one durable write is most of what an ADD costs.
// anetd undoes a failed ADD itself, so there is nothing to undo here.
func cmdAdd(args *skel.CmdArgs) error {
	tr := newTracer("ADD", args.ContainerID, args.IfName)
	defer tr.flush()
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

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := api.NewClient(conf.Socket).Add(ctx, api.AddRequest{Attachment: att, Pod: pod, Netns: args.Netns, MTU: conf.MTU}, netns)
	if err != nil {
		return daemonError("adding the endpoint", err)
	}
	tr.step("add")
	tr.anetd(res.Trace)
	podIdx := 1
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: res.HostIfName, Mac: res.HostMAC},
			{Name: att.IfName, Mac: res.PodMAC, Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: &podIdx,
			Address:   net.IPNet{IP: res.IP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   res.Gateway.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: res.Gateway.AsSlice()}},
		DNS:    conf.DNS,
	}
	err = types.PrintResult(result, conf.CNIVersion)
	tr.step("result")
	return err
}

// cmdDel asks anetd to remove the endpoint: its device (the pod side goes
// with it), link pins, map entries, counters, address and record, after
// any ADD of the same attachment in progress. With anetd away it removes
// the device itself and records the release, which anetd applies when it
// is back (removing the device's link pins then). It succeeds when any of
// it is already gone.
func cmdDel(args *skel.CmdArgs) error {
	conf, att, err := loadVerb(args)
	if err != nil {
		return err
	}
	hostIfName := api.HostIfName(att.ContainerID, att.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	err = api.NewClient(conf.Socket).DeleteEndpoint(ctx, att)
	var unavail *api.UnavailableError
	away := errors.As(err, &unavail) || errors.Is(err, api.ErrNotReady)
	if err != nil && !away {
		return daemonError("deleting the endpoint", err)
	}
	if !away {
		// anetd removed the device (by its name, record or not) after any
		// ADD of the attachment in progress. Touching it here would race
		// an ADD that anetd starts next.
		return nil
	}
	if err := deleteLink(hostIfName); err != nil {
		return types.NewError(types.ErrInternal, "deleting "+hostIfName, err.Error())
	}
	if rerr := api.RecordPendingRelease(api.PendingReleaseDir(conf.Socket), hostIfName, att); rerr != nil {
		return types.NewError(types.ErrIOFailure, "anetd is down and the release could not be recorded", rerr.Error())
	}
	return nil
}

// deleteLink deletes a device of the plugin's network namespace (the
// node's); one that is not there is fine.
func deleteLink(name string) error {
	var notFound netlink.LinkNotFoundError
	lk, err := netlink.LinkByName(name)
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := netlink.LinkDel(lk); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// cmdCheck checks the pod side in the pod's namespace and asks anetd to
// check the host side (its device and programs).
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
	client := api.NewClient(conf.Socket)
	ep, err := client.GetEndpoint(ctx, att)
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
	c, err := client.CheckEndpoint(ctx, att)
	if err != nil {
		return daemonError("checking the endpoint's host side", err)
	}
	if c.Problem != "" {
		return errors.New(c.Problem)
	}
	return nil
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

// cmdGC asks anetd to remove every endpoint and address of the network
// that is not a valid attachment, with their devices and link pins, and
// the link pins whose device is gone.
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
	if _, err := api.NewClient(conf.Socket).GC(ctx, req); err != nil {
		return daemonError("garbage collection", err)
	}
	return nil
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
