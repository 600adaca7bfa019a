// Command anet-install drops anet's CNI plugin onto a node: it copies the
// anet-cni binary into the CNI bin directory and writes anet's conflist into
// the CNI conf directory, each atomically, and does nothing to a file that
// is already right. It is the init container of anet's DaemonSet, and the
// lab runs it for every simulated node.
//
//	anet-install [--cni-bin-dir /opt/cni/bin] [--cni-conf-dir /etc/cni/net.d]
//	             [--source-bin <dir of anet-install>/anet-cni]
//	             [--socket /run/anet/anetd.sock] [--mtu 1500]
//	             [--cni-version 1.1.0]
//
// --cni-version picks the conflist's cniVersion for runtimes with an older
// libcni: containerd 1.6 (Debian bookworm's) refuses 1.1.0 results and
// needs 1.0.0 (the plugin then answers in 1.0.0; STATUS and GC need 1.1.0).
//
// It prints one line per file ("installed" or "unchanged") and exits 0, or
// prints the error and exits 1 (2 for bad flags).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/anet-dev/anet/cniconf"
	"github.com/anet-dev/anet/installer"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o installer.Options
	fs := flag.NewFlagSet("anet-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "directory the runtime looks for CNI plugins in")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "directory the runtime reads network configs from")
	fs.StringVar(&o.SourceBin, "source-bin", defaultSource(), "the anet-cni binary to install")
	fs.StringVar(&o.Socket, "socket", cniconf.DefaultSocket, "anetd's unix socket, written into the conflist")
	fs.StringVar(&o.BPFRoot, "bpf-root", "", "anetd's bpffs directory, written into the conflist when set (without it the plugin asks anetd)")
	fs.IntVar(&o.MTU, "mtu", 0, "MTU of pod interfaces, written into the conflist (0: anetd chooses, the underlay's MTU less the tunnel's 50 bytes in tunnel mode)")
	fs.StringVar(&o.CNIVersion, "cni-version", "", "cniVersion of the conflist (default 1.1.0; containerd 1.6 needs 1.0.0)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "anet-install: unexpected arguments %q\n", fs.Args())
		return 2
	}
	r, err := installer.Install(o)
	if err != nil {
		fmt.Fprintf(stderr, "anet-install: %v\n", err)
		return 1
	}
	say := func(changed bool, p string) {
		if changed {
			fmt.Fprintf(stdout, "installed %s\n", p)
		} else {
			fmt.Fprintf(stdout, "unchanged %s\n", p)
		}
	}
	say(r.BinaryChanged, r.BinaryPath)
	say(r.ConflistChanged, r.ConflistPath)
	return 0
}

// defaultSource is anet-cni beside anet-install itself, where the
// DaemonSet's image and `make build` put it.
func defaultSource() string {
	exe, err := os.Executable()
	if err != nil {
		return cniconf.PluginType
	}
	return filepath.Join(filepath.Dir(exe), cniconf.PluginType)
}
