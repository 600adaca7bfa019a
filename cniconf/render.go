package cniconf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultRenderVersion is the cniVersion of the conflist anet installs
// unless told otherwise: the newest version the plugin implements (STATUS
// and GC need 1.1.0). Older runtimes need older versions: containerd 1.6
// rejects 1.1.0 results.
const DefaultRenderVersion = "1.1.0"

// RenderVersions are the cniVersions Render writes.
var RenderVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// RenderOptions are the node-specific parts of the conflist. Empty fields
// take the defaults (DefaultNetworkName, DefaultSocket); an empty BPFRoot,
// a zero MTU and an empty DNS are left out (the plugin asks anetd where its
// pins are, and anetd chooses the pod MTU).
type RenderOptions struct {
	CNIVersion            string // one of RenderVersions; empty is DefaultRenderVersion
	Name, Socket, BPFRoot string
	MTU                   int
	DNS                   types.DNS
}

// conflist and pluginEntry fix the key order of the rendered file.
type conflist struct {
	CNIVersion string        `json:"cniVersion"`
	Name       string        `json:"name"`
	Plugins    []pluginEntry `json:"plugins"`
}

type pluginEntry struct {
	Type    string     `json:"type"`
	Socket  string     `json:"socket"`
	BPFRoot string     `json:"bpfRoot,omitempty"`
	MTU     int        `json:"mtu,omitempty"`
	DNS     *types.DNS `json:"dns,omitempty"`
}

// Render produces the conflist that anet installs on a node, as indented
// JSON with a trailing newline. It validates the result the way the plugin
// will: the plugin entry, with cniVersion and name copied in as libcni does,
// must pass Parse; a failure is a *ConfigError.
func Render(o RenderOptions) ([]byte, error) {
	if o.CNIVersion == "" {
		o.CNIVersion = DefaultRenderVersion
	}
	if !slices.Contains(RenderVersions, o.CNIVersion) {
		return nil, configErrorf("cniVersion", "must be one of %v, got %s", RenderVersions, quote(o.CNIVersion))
	}
	if o.Name == "" {
		o.Name = DefaultNetworkName
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	entry := pluginEntry{
		Type:    PluginType,
		Socket:  o.Socket,
		BPFRoot: o.BPFRoot,
		MTU:     o.MTU,
	}
	if !o.DNS.IsEmpty() {
		dns := o.DNS
		entry.DNS = &dns
	}

	// What libcni hands the plugin: the entry plus the list's version and name.
	asStdin := NetConf{Socket: entry.Socket, BPFRoot: entry.BPFRoot, MTU: entry.MTU, DNS: o.DNS}
	asStdin.CNIVersion = o.CNIVersion
	asStdin.Name = o.Name
	asStdin.Type = PluginType
	stdin, err := json.Marshal(asStdin)
	if err != nil {
		return nil, fmt.Errorf("encoding plugin config: %w", err)
	}
	if _, err := Parse(stdin); err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(conflist{CNIVersion: o.CNIVersion, Name: o.Name, Plugins: []pluginEntry{entry}}); err != nil {
		return nil, fmt.Errorf("encoding conflist: %w", err)
	}
	return buf.Bytes(), nil
}
