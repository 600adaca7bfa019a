// anet-cni is anet's CNI plugin. It hands each verb to anetd over its
// socket: anetd wires the pod (address, veth pair, programs, routes, maps,
// record) on ADD, and removes it on DEL; the plugin touches the node only
// to delete the pod's device when anetd is away on DEL. It links no eBPF
// library and no HTTP stack, to start fast (see deps_test.go). See
// README.md for its config keys and error codes.
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
