//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"
)

// The networks a lab can wire its pods with (Options.CNI).
const (
	// CNIAnet: anet-install puts anet-cni and its conflist in every node's
	// CNI directories, and every node runs anetd. The default.
	CNIAnet = "anet"
	// CNIBridge: the reference plugins instead, for comparisons (make
	// bench): `bridge` (bridge cni0, isGateway, no masquerade) with
	// `host-local` IPAM on the node's pod CIDR from its Node object. No
	// anetd runs, so nothing routes between the nodes: pods reach the pods
	// of their own node and the node itself only.
	CNIBridge = "bridge"
)

// BridgeName is the Linux bridge of the reference plugin on every node of
// a CNIBridge lab.
const BridgeName = "cni0"

// installBridgePlugins puts the reference bridge, host-local and loopback
// plugins in a node's CNI bin directory. The conflist comes later
// (startBridgeCNI), once the node has a pod CIDR; until then containerd
// reports the network not ready and the node stays NotReady, as with anet.
func (l *Lab) installBridgePlugins(ctx context.Context, n *NodeRec, b *binaries) error {
	for _, p := range []struct{ name, pkg string }{
		{"bridge", "github.com/containernetworking/plugins/plugins/main/bridge"},
		{"host-local", "github.com/containernetworking/plugins/plugins/ipam/host-local"},
	} {
		src, err := l.refPlugin(ctx, p.name, p.pkg)
		if err != nil {
			return err
		}
		if err := copyExecutable(src, filepath.Join(n.CNIBinDir, p.name)); err != nil {
			return err
		}
	}
	return copyExecutable(b.loopback, filepath.Join(n.CNIBinDir, "loopback"))
}

// refPlugin finds a reference plugin in Options.AnetBinDir (make build puts
// bridge and host-local in bin/), else builds it into Dir/bin once.
func (l *Lab) refPlugin(ctx context.Context, name, pkg string) (string, error) {
	if l.opts.AnetBinDir != "" {
		if f := filepath.Join(l.opts.AnetBinDir, name); isFile(f) {
			return f, nil
		}
	}
	out := filepath.Join(l.Dir, "bin", name)
	if isFile(out) {
		return out, nil
	}
	root, err := l.repoRoot()
	if err != nil {
		return "", fmt.Errorf("no %s plugin (set ANET_BIN to a directory holding it) and cannot build it: %w", name, err)
	}
	l.say("building %s", name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, o)
	}
	return out, nil
}

// startBridgeCNI is startAnetd's counterpart in a CNIBridge lab: it waits
// for the node's pod CIDR (kube-controller-manager allocates it once the
// kubelet registered the Node) and writes the bridge + host-local conflist,
// atomically; containerd picks it up and the node turns Ready.
func (l *Lab) startBridgeCNI(ctx context.Context, n *NodeRec, _ *binaries) error {
	var cidr string
	if err := waitFor(ctx, 90*time.Second, func() error {
		c, err := l.PodCIDR(n.Name)
		if err != nil {
			return err
		}
		if c == "" {
			return fmt.Errorf("node %s has no pod CIDR yet", n.Name)
		}
		cidr = c
		return nil
	}); err != nil {
		return err
	}
	dataDir := filepath.Join(n.Dir, "host-local")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return err
	}
	conf, err := bridgeConflist(cidr, dataDir)
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(filepath.Join(n.CNIConfDir, "10-bridge.conflist"), conf, 0o644); err != nil {
		return err
	}
	// containerd 1.6 reloads its CNI config on a write, rename or remove
	// in the conf dir (not on a create), and the reload that the rename
	// above triggers was seen to find no config at all, leaving the node
	// NotReady for good. A later remove of a scratch file (not *.conf*,
	// never loaded) makes it reload again and find the conflist. anet's
	// conflist is written before containerd starts, so it never needs this.
	time.Sleep(100 * time.Millisecond)
	poke := filepath.Join(n.CNIConfDir, ".anet-lab-reload")
	if err := os.WriteFile(poke, nil, 0o644); err != nil {
		return err
	}
	if err := os.Remove(poke); err != nil {
		return err
	}
	l.say("%s: bridge + host-local on %s (bridge %s)", n.Name, cidr, BridgeName)
	return nil
}

// bridgeConflist is the reference network of a node: cniVersion 1.0.0
// (Debian's containerd 1.6 refuses 1.1.0 results), the bridge plugin as the
// pods' gateway without masquerade, host-local on the node's pod CIDR with
// its state in dataDir; no portmap (no hostPort in the lab).
func bridgeConflist(podCIDR, dataDir string) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "lab-bridge",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      BridgeName,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": podCIDR}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": dataDir,
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
