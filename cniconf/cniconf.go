// Package cniconf is the network configuration of the anet-cni plugin:
// the types the plugin decodes from stdin, their validation and defaults,
// and the conflist that anet installs on a node.
//
// It is pure Go, needs no privileges and must stay dependency-light: the
// plugin is a short-lived binary and never imports client-go.
//
// # Configuration keys
//
// One plugin entry of a conflist, as the runtime passes it on stdin
// (libcni copies cniVersion and name from the list into it):
//
//	key          type      default                  rule
//	cniVersion   string    -                        required; the supported range is checked by skel
//	name         string    -                        required; ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$ (CNI spec)
//	type         string    -                        must be "anet-cni"
//	socket       string    /run/anet/anetd.sock     absolute path of anetd's unix socket, at most 107 bytes
//	bpfRoot      string    anetd's (asked)          absolute bpffs directory of anetd's pins; optional (older configs
//	                                                have it): without it the plugin asks anetd, and does without
//	                                                when anetd is away
//	mtu          integer   anetd's (asked)          0 (default: anetd chooses, the underlay's MTU less the
//	                                                tunnel's 50 bytes in tunnel mode) or 68..65535
//	dns          object    none                     {nameservers, domain, search, options}, copied into the ADD result;
//	                                                nameservers are IP addresses, the other strings have no whitespace
//
// Unknown keys are ignored, as the CNI specification asks. Keys are matched
// the way encoding/json matches them (case-insensitively), like skel and
// libcni do.
//
// # Errors
//
// Every failure of [Parse] and [Render] is a *[ConfigError] naming the key.
// The plugin should turn it into CNI error code 7:
//
//	conf, err := cniconf.Parse(args.StdinData)
//	if err != nil {
//		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
//	}
//
// Note that skel looks at the config before the plugin does: it answers
// code 6 (decoding failure) when stdin is not a JSON object or when "name"
// or "cniVersion" has the wrong JSON type, code 7 when the name is empty or
// malformed, and code 1 when cniVersion is outside the plugin's range. A
// missing cniVersion counts as "0.1.0" there, hence code 1.
// testdata/cni/bad/expect.tsv records the code for each bad example.
package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"
)

// PluginType is the value of "type" that selects our plugin.
const PluginType = "anet-cni"

// Defaults applied by Parse and Render to empty fields. An mtu of 0 stays
// 0: anetd chooses the pod MTU (it knows the underlay and the routing mode).
const (
	DefaultSocket      = "/run/anet/anetd.sock"
	DefaultBPFRoot     = "/sys/fs/bpf/anet"
	DefaultNetworkName = "anet"
)

// Limits of the mtu key. 68 is the minimum MTU of IPv4 (RFC 791); IPv6
// needs 1280, which is the kernel's business when it configures the veth.
const (
	minMTU = 68
	maxMTU = 65535
)

// maxSocketPath is the longest path a unix socket address holds portably:
// sun_path is 108 bytes on Linux, one of which C clients use for the NUL.
const maxSocketPath = 107

// NetConf is the plugin's config as it arrives on stdin (one plugin of a conflist).
//
// NetConf.DNS shadows the embedded PluginConf.DNS: Parse fills NetConf.DNS
// and leaves PluginConf.DNS empty. The raw prevResult stays in
// PluginConf.RawPrevResult; a plugin that needs it typed calls
// version.ParsePrevResult(&conf.PluginConf).
type NetConf struct {
	types.PluginConf           // cniVersion, name, type, prevResult, ...
	Socket           string    `json:"socket,omitempty"`  // anetd's unix socket
	BPFRoot          string    `json:"bpfRoot,omitempty"` // bpffs directory where anetd pins programs/maps and where the plugin pins its TCX links
	MTU              int       `json:"mtu,omitempty"`
	DNS              types.DNS `json:"dns,omitempty"` // nameservers, domain, search, options, copied into the result
}

// plainPluginConf has the fields of types.PluginConf but not its methods,
// so that embedding it does not promote PluginConf.MarshalJSON.
type plainPluginConf types.PluginConf

// netConfJSON is the wire form of NetConf used by MarshalJSON. The fields
// at depth 0 shadow the ones of the same JSON name in PluginConf so that
// empty objects are left out.
type netConfJSON struct {
	plainPluginConf
	IPAM    *types.IPAM `json:"ipam,omitempty"`
	DNS     *types.DNS  `json:"dns,omitempty"`
	Socket  string      `json:"socket,omitempty"`
	BPFRoot string      `json:"bpfRoot,omitempty"`
	MTU     int         `json:"mtu,omitempty"`
}

// MarshalJSON encodes c with all its keys. Without it, json.Marshal(&c)
// would call the MarshalJSON promoted from the embedded *types.PluginConf
// and silently drop socket, bpfRoot, mtu and dns.
func (c NetConf) MarshalJSON() ([]byte, error) {
	w := netConfJSON{
		plainPluginConf: plainPluginConf(c.PluginConf),
		Socket:          c.Socket,
		BPFRoot:         c.BPFRoot,
		MTU:             c.MTU,
	}
	if !c.PluginConf.IPAM.IsEmpty() {
		w.IPAM = &c.PluginConf.IPAM
	}
	if !c.DNS.IsEmpty() {
		w.DNS = &c.DNS
	}
	return json.Marshal(w)
}

// ConfigError is an invalid network configuration. Key is the JSON key at
// fault ("mtu", "dns.nameservers"), or "" when the input as a whole is
// wrong (not JSON, not an object).
type ConfigError struct {
	Key    string
	Reason string
}

func (e *ConfigError) Error() string {
	if e.Key == "" {
		return "invalid config: " + e.Reason
	}
	return fmt.Sprintf("invalid config: key %q: %s", e.Key, e.Reason)
}

func configErrorf(key, format string, args ...any) *ConfigError {
	return &ConfigError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// Parse decodes stdin bytes, applies defaults (Socket, MTU), and
// validates. Every failure is a *ConfigError naming the key. Unknown keys
// are ignored. The cniVersion range is left to skel; only an empty
// cniVersion is rejected here.
func Parse(data []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, decodeError(data, err)
	}
	// json.Unmarshal accepts a top-level null and leaves c untouched.
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, configErrorf("", "config must be a JSON object, got %s", jsonKind(trimmed))
	}
	c.normalize()
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// normalize makes empty collections nil, so that a parsed config equals the
// parse of its own encoding (which leaves empty collections out).
func (c *NetConf) normalize() {
	if len(c.Capabilities) == 0 {
		c.Capabilities = nil
	}
	if len(c.RawPrevResult) == 0 {
		c.RawPrevResult = nil
	}
	if len(c.ValidAttachments) == 0 {
		c.ValidAttachments = nil
	}
	if len(c.DNS.Nameservers) == 0 {
		c.DNS.Nameservers = nil
	}
	if len(c.DNS.Search) == 0 {
		c.DNS.Search = nil
	}
	if len(c.DNS.Options) == 0 {
		c.DNS.Options = nil
	}
}

func (c *NetConf) applyDefaults() {
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
}

func (c *NetConf) validate() *ConfigError {
	switch {
	case c.Type == "":
		return configErrorf("type", "missing, must be %q", PluginType)
	case c.Type != PluginType:
		return configErrorf("type", "must be %q, got %s", PluginType, quote(c.Type))
	}
	if c.CNIVersion == "" {
		return configErrorf("cniVersion", "missing")
	}
	if err := validateName(c.Name); err != nil {
		return err
	}
	if err := validatePath("socket", c.Socket); err != nil {
		return err
	}
	if len(c.Socket) > maxSocketPath {
		return configErrorf("socket", "must be at most %d bytes (the limit of a unix socket address), got %d", maxSocketPath, len(c.Socket))
	}
	if strings.HasSuffix(c.Socket, "/") {
		return configErrorf("socket", "must name a socket file, not a directory, got %s", quote(c.Socket))
	}
	if c.BPFRoot != "" {
		if err := validatePath("bpfRoot", c.BPFRoot); err != nil {
			return err
		}
	}
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > maxMTU) {
		return configErrorf("mtu", "must be between %d and %d, got %d", minMTU, maxMTU, c.MTU)
	}
	return validateDNS(&c.DNS)
}

// validateName applies the CNI spec rule for network names,
// ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$ (the one libcni and skel apply).
func validateName(name string) *ConfigError {
	if name == "" {
		return configErrorf("name", "missing")
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		if alnum || i > 0 && (b == '_' || b == '.' || b == '-') {
			continue
		}
		return configErrorf("name", "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$, got %s", quote(name))
	}
	return nil
}

func validatePath(key, p string) *ConfigError {
	if strings.IndexByte(p, 0) >= 0 {
		return configErrorf(key, "must not contain a NUL byte")
	}
	if !filepath.IsAbs(p) {
		return configErrorf(key, "must be an absolute path, got %s", quote(p))
	}
	return nil
}

func validateDNS(d *types.DNS) *ConfigError {
	for i, ns := range d.Nameservers {
		a, err := netip.ParseAddr(ns)
		if err != nil || a.Zone() != "" {
			return configErrorf("dns.nameservers", "entry %d must be an IP address, got %s", i, quote(ns))
		}
	}
	if d.Domain != "" && hasSpaceOrControl(d.Domain) {
		return configErrorf("dns.domain", "must not contain whitespace, got %s", quote(d.Domain))
	}
	if err := validateWords("dns.search", d.Search); err != nil {
		return err
	}
	// Not a rule of the CNI spec, but options end up on one resolv.conf
	// line, where whitespace would split them.
	return validateWords("dns.options", d.Options)
}

func validateWords(key string, words []string) *ConfigError {
	for i, w := range words {
		if w == "" {
			return configErrorf(key, "entry %d is empty", i)
		}
		if hasSpaceOrControl(w) {
			return configErrorf(key, "entry %d must not contain whitespace, got %s", i, quote(w))
		}
	}
	return nil
}

func hasSpaceOrControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0
}

// quote quotes a user-supplied value for an error message, shortened so that
// a hostile input cannot make the message arbitrarily long.
func quote(s string) string {
	const max = 64
	if utf8.RuneCountInString(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	r := []rune(s)
	return fmt.Sprintf("%q...", string(r[:max]))
}

// decodeError turns an error of json.Unmarshal into a *ConfigError.
func decodeError(data []byte, err error) *ConfigError {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		// Offset counts the bytes read, the offending one included.
		line, col := position(data, syntaxErr.Offset-1)
		return configErrorf("", "not valid JSON: syntax error at line %d, column %d: %v", line, col, err)
	case errors.As(err, &typeErr):
		key := fieldPath(typeErr.Field)
		if key == "" {
			return configErrorf("", "config must be a JSON object, got %s", typeErr.Value)
		}
		if t := typeErr.Type; t != nil && (t.Kind() == reflect.Float64 || t.Kind() == reflect.Float32) &&
			strings.HasPrefix(typeErr.Value, "number") {
			// A JSON number that does not fit, e.g. 1e400 inside prevResult.
			return configErrorf(key, "must be a number within the range of %s, got %s", t.Kind(), typeErr.Value)
		}
		if whole, ok := collections[key]; ok && typeErr.Type != nil &&
			typeErr.Type.Kind() != reflect.Slice && typeErr.Type.Kind() != reflect.Map {
			return configErrorf(key, "must be %s, got %s as an entry", whole, typeErr.Value)
		}
		return configErrorf(key, "must be %s, got %s", describeType(typeErr.Type), typeErr.Value)
	default:
		// No field of NetConf has its own UnmarshalJSON, so this is not
		// expected; keep the message of encoding/json.
		return configErrorf("", "%v", err)
	}
}

// collections are the keys holding an array or object of one type, with
// what their value must be. For an entry of the wrong type, encoding/json
// reports the entry's type, which alone would read as if the key itself
// had to be, say, a string.
var collections = map[string]string{
	"capabilities":              "an object of booleans",
	"cni.dev/valid-attachments": "an array of objects",
	"dns.nameservers":           "an array of strings",
	"dns.search":                "an array of strings",
	"dns.options":               "an array of strings",
}

// embeddedPrefix is the Go name encoding/json puts in front of the keys of
// the embedded PluginConf in UnmarshalTypeError.Field.
var embeddedPrefix = reflect.TypeFor[types.PluginConf]().Name() + "."

// fieldPath turns UnmarshalTypeError.Field ("PluginConf.ipam.type",
// "dns.nameservers") into the JSON key path ("ipam.type", "dns.nameservers").
func fieldPath(field string) string {
	return strings.TrimPrefix(field, embeddedPrefix)
}

func describeType(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if e := t.Elem(); e.Kind() != reflect.Interface {
			return "an array of " + strings.TrimPrefix(strings.TrimPrefix(describeType(e), "a "), "an ") + "s"
		}
		return "an array"
	case reflect.Map:
		if e := t.Elem(); e.Kind() != reflect.Interface {
			return "an object of " + strings.TrimPrefix(strings.TrimPrefix(describeType(e), "a "), "an ") + "s"
		}
		return "an object"
	case reflect.Struct:
		return "an object"
	default:
		return "a " + t.String()
	}
}

// jsonKind names the kind of the JSON value that starts data.
func jsonKind(data []byte) string {
	if len(data) == 0 {
		return "nothing"
	}
	switch data[0] {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// position converts a byte offset into a 1-based line and column; an offset
// past the end points at the last byte.
func position(data []byte, offset int64) (line, col int) {
	if offset < 0 {
		offset = 0
	}
	if offset >= int64(len(data)) {
		offset = max(int64(len(data))-1, 0)
	}
	before := data[:offset]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
