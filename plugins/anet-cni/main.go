// anet-cni is anet's CNI plugin. It wires a pod's veth pair, takes the
// pod's address from anetd, attaches anetd's pinned eBPF programs to the
// host side and registers the endpoint. See README.md for its config keys
// and error codes.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// buildVersion is set at build time with -ldflags "-X main.buildVersion=...".
var buildVersion = "dev"

func init() {
	// Namespace switches apply to the OS thread: keep main on one.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "anet-cni "+buildVersion)
}
