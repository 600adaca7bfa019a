package cniconf

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

var update = flag.Bool("update", false, "rewrite the golden file testdata/cni/anet.conflist")

const (
	testdataDir = "../testdata/cni"
	goldenPath  = testdataDir + "/anet.conflist"
)

func conf(version, name string, c NetConf) *NetConf {
	c.CNIVersion = version
	c.Name = name
	c.Type = PluginType
	return &c
}

func TestParseGood(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *NetConf
	}{{
		name: "minimal, defaults applied",
		in:   `{"cniVersion":"1.1.0","name":"anet","type":"anet-cni"}`,
		want: conf("1.1.0", "anet", NetConf{Socket: DefaultSocket}),
	}, {
		name: "zero values and null take the defaults",
		in:   `{"cniVersion":"1.0.0","name":"anet","type":"anet-cni","socket":"","bpfRoot":null,"mtu":0,"dns":{}}`,
		want: conf("1.0.0", "anet", NetConf{Socket: DefaultSocket}),
	}, {
		name: "full",
		in: `{"cniVersion":"1.1.0","name":"anet-lab.node_1","type":"anet-cni",
			"socket":"/run/lab/n1/anetd.sock","bpfRoot":"/sys/fs/bpf/lab/n1","mtu":1450,
			"dns":{"nameservers":["10.96.0.10","fd00::a"],"domain":"cluster.local",
				"search":["svc.cluster.local","cluster.local"],"options":["ndots:5"]}}`,
		want: conf("1.1.0", "anet-lab.node_1", NetConf{
			Socket: "/run/lab/n1/anetd.sock", BPFRoot: "/sys/fs/bpf/lab/n1", MTU: 1450,
			DNS: types.DNS{
				Nameservers: []string{"10.96.0.10", "fd00::a"},
				Domain:      "cluster.local",
				Search:      []string{"svc.cluster.local", "cluster.local"},
				Options:     []string{"ndots:5"},
			},
		}),
	}, {
		name: "mtu bounds",
		in:   `{"cniVersion":"1.1.0","name":"0","type":"anet-cni","mtu":68}`,
		want: conf("1.1.0", "0", NetConf{Socket: DefaultSocket, MTU: 68}),
	}, {
		name: "mtu max",
		in:   `{"cniVersion":"1.1.0","name":"a-","type":"anet-cni","mtu":65535}`,
		want: conf("1.1.0", "a-", NetConf{Socket: DefaultSocket, MTU: 65535}),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseUnknownKeysIgnored(t *testing.T) {
	in := `{"cniVersion":"1.1.0","name":"anet","type":"anet-cni","mtu":9000,
		"runtimeConfig":{"portMappings":[{"hostPort":80}]},"args":{"cni":{}},"futureKey":[1,{"x":null}],
		"capabilities":{"portMappings":true},"ipam":{"type":"host-local"}}`
	got, err := Parse([]byte(in))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := conf("1.1.0", "anet", NetConf{Socket: DefaultSocket, MTU: 9000})
	want.Capabilities = map[string]bool{"portMappings": true}
	want.IPAM.Type = "host-local"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
	}
}

func TestParseGoodFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testdataDir, "good", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Parse(data); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const head = `"cniVersion":"1.1.0","name":"anet","type":"anet-cni"`
	tests := []struct {
		name, in, key string
	}{
		{"not json", `{"cniVersion":`, ""},
		{"empty input", ``, ""},
		{"whitespace only", " \n\t", ""},
		{"null", `null`, ""},
		{"array", `[]`, ""},
		{"string", `"anet"`, ""},
		{"number", `7`, ""},
		{"trailing garbage", `{` + head + `} x`, ""},

		{"missing type", `{"cniVersion":"1.1.0","name":"anet"}`, "type"},
		{"other type", `{"cniVersion":"1.1.0","name":"anet","type":"bridge"}`, "type"},
		{"type case", `{"cniVersion":"1.1.0","name":"anet","type":"ANET-CNI"}`, "type"},
		{"type wrong JSON type", `{"cniVersion":"1.1.0","name":"anet","type":true}`, "type"},

		{"missing cniVersion", `{"name":"anet","type":"anet-cni"}`, "cniVersion"},
		{"empty cniVersion", `{"cniVersion":"","name":"anet","type":"anet-cni"}`, "cniVersion"},
		{"cniVersion number", `{"cniVersion":1.1,"name":"anet","type":"anet-cni"}`, "cniVersion"},

		{"missing name", `{"cniVersion":"1.1.0","type":"anet-cni"}`, "name"},
		{"empty name", `{"cniVersion":"1.1.0","name":"","type":"anet-cni"}`, "name"},
		{"name with space", `{"cniVersion":"1.1.0","name":"my net","type":"anet-cni"}`, "name"},
		{"name starts with dash", `{"cniVersion":"1.1.0","name":"-anet","type":"anet-cni"}`, "name"},
		{"name starts with dot", `{"cniVersion":"1.1.0","name":".anet","type":"anet-cni"}`, "name"},
		{"name with slash", `{"cniVersion":"1.1.0","name":"a/b","type":"anet-cni"}`, "name"},
		{"name non-ascii", `{"cniVersion":"1.1.0","name":"anét","type":"anet-cni"}`, "name"},
		{"name number", `{"cniVersion":"1.1.0","name":5,"type":"anet-cni"}`, "name"},

		{"socket relative", `{` + head + `,"socket":"anetd.sock"}`, "socket"},
		{"socket dot relative", `{` + head + `,"socket":"./anetd.sock"}`, "socket"},
		{"socket directory", `{` + head + `,"socket":"/run/anet/"}`, "socket"},
		{"socket NUL", `{` + head + `,"socket":"/run/anet\u0000/anetd.sock"}`, "socket"},
		{"socket too long", `{` + head + `,"socket":"/` + strings.Repeat("s", maxSocketPath) + `"}`, "socket"},
		{"socket number", `{` + head + `,"socket":5}`, "socket"},
		{"socket object", `{` + head + `,"socket":{}}`, "socket"},

		{"bpfRoot relative", `{` + head + `,"bpfRoot":"sys/fs/bpf"}`, "bpfRoot"},
		{"bpfRoot NUL", `{` + head + `,"bpfRoot":"/sys/fs/bpf\u0000"}`, "bpfRoot"},
		{"bpfRoot array", `{` + head + `,"bpfRoot":["/sys/fs/bpf"]}`, "bpfRoot"},

		{"mtu too big", `{` + head + `,"mtu":70000}`, "mtu"},
		{"mtu 65536", `{` + head + `,"mtu":65536}`, "mtu"},
		{"mtu too small", `{` + head + `,"mtu":67}`, "mtu"},
		{"mtu negative", `{` + head + `,"mtu":-1}`, "mtu"},
		{"mtu string", `{` + head + `,"mtu":"1500"}`, "mtu"},
		{"mtu fraction", `{` + head + `,"mtu":1500.5}`, "mtu"},
		{"mtu exponent", `{` + head + `,"mtu":1e3}`, "mtu"},
		{"mtu overflow", `{` + head + `,"mtu":99999999999999999999999}`, "mtu"},
		{"mtu bool", `{` + head + `,"mtu":true}`, "mtu"},

		{"dns array", `{` + head + `,"dns":[]}`, "dns"},
		{"dns string", `{` + head + `,"dns":"10.96.0.10"}`, "dns"},
		{"nameserver not ip", `{` + head + `,"dns":{"nameservers":["10.96.0.10","kube-dns"]}}`, "dns.nameservers"},
		{"nameserver empty", `{` + head + `,"dns":{"nameservers":[""]}}`, "dns.nameservers"},
		{"nameserver octet", `{` + head + `,"dns":{"nameservers":["10.96.0.256"]}}`, "dns.nameservers"},
		{"nameserver cidr", `{` + head + `,"dns":{"nameservers":["10.96.0.10/32"]}}`, "dns.nameservers"},
		{"nameserver zone", `{` + head + `,"dns":{"nameservers":["fe80::1%eth0"]}}`, "dns.nameservers"},
		{"nameserver with port", `{` + head + `,"dns":{"nameservers":["10.96.0.10:53"]}}`, "dns.nameservers"},
		{"nameservers string", `{` + head + `,"dns":{"nameservers":"10.96.0.10"}}`, "dns.nameservers"},
		{"nameservers number entry", `{` + head + `,"dns":{"nameservers":[53]}}`, "dns.nameservers"},
		{"domain whitespace", `{` + head + `,"dns":{"domain":"cluster local"}}`, "dns.domain"},
		{"domain newline", `{` + head + `,"dns":{"domain":"cluster.local\nnameserver 1.1.1.1"}}`, "dns.domain"},
		{"domain number", `{` + head + `,"dns":{"domain":1}}`, "dns.domain"},
		{"search empty entry", `{` + head + `,"dns":{"search":["a",""]}}`, "dns.search"},
		{"search whitespace", `{` + head + `,"dns":{"search":["a b"]}}`, "dns.search"},
		{"search tab", `{` + head + `,"dns":{"search":["a\tb"]}}`, "dns.search"},
		{"search string", `{` + head + `,"dns":{"search":"a"}}`, "dns.search"},
		{"options whitespace", `{` + head + `,"dns":{"options":["ndots: 5"]}}`, "dns.options"},
		{"options empty entry", `{` + head + `,"dns":{"options":[""]}}`, "dns.options"},

		{"ipam type number", `{` + head + `,"ipam":{"type":1}}`, "ipam.type"},
		{"capabilities value", `{` + head + `,"capabilities":{"portMappings":"yes"}}`, "capabilities"},
		{"prevResult array", `{` + head + `,"prevResult":[]}`, "prevResult"},
		{"prevResult huge number", `{` + head + `,"prevResult":{"x":1e400}}`, "prevResult"},
		{"valid-attachments entry", `{` + head + `,"cni.dev/valid-attachments":[{"ifname":3}]}`, "cni.dev/valid-attachments.ifname"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", got)
			}
			if got != nil {
				t.Errorf("Parse returned a config with its error: %+v", got)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if ce.Key != tt.key {
				t.Errorf("Key = %q, want %q (error: %v)", ce.Key, tt.key, err)
			}
			if ce.Reason == "" {
				t.Errorf("empty Reason")
			}
			if tt.key != "" && !strings.Contains(err.Error(), strconv.Quote(tt.key)) {
				t.Errorf("message %q does not name the key %q", err, tt.key)
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	const head = `"cniVersion":"1.1.0","name":"anet","type":"anet-cni"`
	tests := []struct{ in, want string }{
		{`{` + head + `,"mtu":70000}`, `invalid config: key "mtu": must be between 68 and 65535, got 70000`},
		{`{` + head + `,"mtu":"1500"}`, `invalid config: key "mtu": must be an integer, got string`},
		{`{` + head + `,"dns":[]}`, `invalid config: key "dns": must be an object, got array`},
		{`{` + head + `,"dns":{"nameservers":[53]}}`, `invalid config: key "dns.nameservers": must be an array of strings, got number as an entry`},
		{`{` + head + `,"capabilities":{"portMappings":"yes"}}`, `invalid config: key "capabilities": must be an object of booleans, got string as an entry`},
		{`{` + head + `,"cni.dev/valid-attachments":[{"ifname":3}]}`, `invalid config: key "cni.dev/valid-attachments.ifname": must be a string, got number`},
		{`{` + head + `,"cni.dev/valid-attachments":{}}`, `invalid config: key "cni.dev/valid-attachments": must be an array of objects, got object`},
		{`{` + head + `,"prevResult":{"x":1e400}}`, `invalid config: key "prevResult": must be a number within the range of float64, got number 1e400`},
		{`{` + head + `,"mtu":1e3}`, `invalid config: key "mtu": must be an integer, got number 1e3`},
		{`{` + head + `,"dns":{"nameservers":["1.1.1.1","x"]}}`, `invalid config: key "dns.nameservers": entry 1 must be an IP address, got "x"`},
		{`{` + head + `,"socket":"a.sock"}`, `invalid config: key "socket": must be an absolute path, got "a.sock"`},
		{`{"cniVersion":"1.1.0","name":"anet","type":"bridge"}`, `invalid config: key "type": must be "anet-cni", got "bridge"`},
		{`[1]`, `invalid config: config must be a JSON object, got array`},
		{`null`, `invalid config: config must be a JSON object, got null`},
		{"{\n  \"cniVersion\": \"1.1.0\",\n  \"name\": }", `invalid config: not valid JSON: syntax error at line 3, column 11: invalid character '}' looking for beginning of value`},
		{"", `invalid config: not valid JSON: syntax error at line 1, column 1: unexpected end of JSON input`},
		{`{"a":1`, `invalid config: not valid JSON: syntax error at line 1, column 6: unexpected end of JSON input`},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.in))
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q):\n got %v\nwant %s", tt.in, err, tt.want)
		}
	}
}

func TestErrorMessageQuotesLongValues(t *testing.T) {
	long := strings.Repeat("x", 10000)
	_, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"anet","type":"` + long + `"}`))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	if n := len(err.Error()); n > 200 {
		t.Errorf("error message is %d bytes long: %.100s...", n, err)
	}
}

// TestExpectTSV checks the bad examples used by the integration tests
// against Parse. Codes 6 and 7 are config errors that Parse must reject with
// a message containing the substring (for code 6, skel rejects them before
// the plugin runs; see TestExpectTSVWithSkel). Code 1 cases are skel's
// version check: Parse may accept them but must not fail any other way.
func TestExpectTSV(t *testing.T) {
	cases := readExpect(t)
	files, err := filepath.Glob(filepath.Join(testdataDir, "bad", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, c := range cases {
		listed[c.name] = true
	}
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".json"); !listed[name] {
			t.Errorf("%s has no line in expect.tsv", f)
		}
	}
	for _, required := range []string{"not-json", "wrong-type", "empty-name", "bad-name", "mtu-too-big",
		"mtu-wrong-type", "socket-relative", "bpfroot-relative", "dns-bad-nameserver", "dns-wrong-type",
		"missing-cniversion", "unsupported-cniversion"} {
		if !listed[required] {
			t.Errorf("expect.tsv lacks case %s", required)
		}
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.data)
			var ce *ConfigError
			switch c.code {
			case 6, 7:
				if err == nil {
					t.Fatalf("Parse succeeded: %+v", got)
				}
				if !errors.As(err, &ce) {
					t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
				}
				if !strings.Contains(err.Error(), c.substring) {
					t.Errorf("error %q does not contain %q", err, c.substring)
				}
			case 1:
				if err != nil && !errors.As(err, &ce) {
					t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
				}
			default:
				t.Fatalf("unexpected code %d", c.code)
			}
		})
	}
}

type expectCase struct {
	name      string
	code      int
	substring string
	data      []byte
}

func readExpect(t *testing.T) []expectCase {
	t.Helper()
	dir := filepath.Join(testdataDir, "bad")
	f, err := os.Open(filepath.Join(dir, "expect.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []expectCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if n == 1 {
			if sc.Text() != "case\tcode\tsubstring" {
				t.Fatalf("expect.tsv: header is %q", sc.Text())
			}
			continue
		}
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) != 3 || fields[0] == "" || fields[2] == "" {
			t.Fatalf("expect.tsv:%d: want case<TAB>code<TAB>substring, got %q", n, sc.Text())
		}
		code, err := strconv.Atoi(fields[1])
		if err != nil {
			t.Fatalf("expect.tsv:%d: code: %v", n, err)
		}
		data, err := os.ReadFile(filepath.Join(dir, fields[0]+".json"))
		if err != nil {
			t.Fatalf("expect.tsv:%d: %v", n, err)
		}
		cases = append(cases, expectCase{name: fields[0], code: code, substring: fields[2], data: data})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("expect.tsv has no cases")
	}
	return cases
}

// TestMarshalJSON guards against the MarshalJSON promoted from the embedded
// *types.PluginConf, which would drop our own keys.
func TestMarshalJSON(t *testing.T) {
	c := conf("1.1.0", "anet", NetConf{Socket: "/s", BPFRoot: "/b", MTU: 9000, DNS: types.DNS{Domain: "cluster.local"}})
	for _, v := range []any{c, *c, []NetConf{*c}} {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"socket":"/s"`, `"bpfRoot":"/b"`, `"mtu":9000`, `"dns":{"domain":"cluster.local"}`, `"type":"anet-cni"`} {
			if !bytes.Contains(data, []byte(want)) {
				t.Errorf("json.Marshal(%T) = %s, lacks %s", v, data, want)
			}
		}
		if bytes.Contains(data, []byte(`"ipam"`)) {
			t.Errorf("json.Marshal(%T) = %s, has an empty ipam", v, data)
		}
	}
}

func TestRenderGolden(t *testing.T) {
	got, err := Render(RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(goldenPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (run go test ./cniconf -run TestRenderGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Render output differs from %s (rerun with -update if intended):\n got:\n%s\nwant:\n%s", goldenPath, got, want)
	}
	if !bytes.HasSuffix(got, []byte("}\n")) {
		t.Errorf("Render output lacks a trailing newline")
	}
	again, _ := Render(RenderOptions{})
	if !bytes.Equal(got, again) {
		t.Errorf("Render is not deterministic")
	}
}

// TestRenderRoundTrip loads the rendered conflist the way a runtime does
// (libcni), builds each plugin's stdin the way libcni does (cniVersion and
// name copied in) and parses it.
func TestRenderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		opts RenderOptions
		want *NetConf
	}{{
		name: "defaults",
		want: conf("1.1.0", DefaultNetworkName, NetConf{Socket: DefaultSocket}),
	}, {
		name: "all set",
		opts: RenderOptions{
			Name: "lab.node-2", Socket: "/run/lab/node2/anetd.sock", BPFRoot: "/sys/fs/bpf/lab/node2", MTU: 1450,
			DNS: types.DNS{Nameservers: []string{"10.96.0.10"}, Domain: "cluster.local",
				Search: []string{"svc.cluster.local"}, Options: []string{"ndots:5"}},
		},
		want: conf("1.1.0", "lab.node-2", NetConf{
			Socket: "/run/lab/node2/anetd.sock", BPFRoot: "/sys/fs/bpf/lab/node2", MTU: 1450,
			DNS: types.DNS{Nameservers: []string{"10.96.0.10"}, Domain: "cluster.local",
				Search: []string{"svc.cluster.local"}, Options: []string{"ndots:5"}},
		}),
	}, {
		name: "paths with HTML characters are not escaped",
		opts: RenderOptions{Socket: "/run/a&b/<x>.sock"},
		want: conf("1.1.0", DefaultNetworkName, NetConf{Socket: "/run/a&b/<x>.sock"}),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Render(tt.opts)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			list, err := libcni.ConfListFromBytes(out)
			if err != nil {
				t.Fatalf("libcni rejects the conflist: %v\n%s", err, out)
			}
			if len(list.Plugins) != 1 {
				t.Fatalf("conflist has %d plugins, want 1", len(list.Plugins))
			}
			stdin, err := libcni.InjectConf(list.Plugins[0], map[string]any{"cniVersion": list.CNIVersion, "name": list.Name})
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(stdin.Bytes)
			if err != nil {
				t.Fatalf("Parse(plugin entry): %v\n%s", err, stdin.Bytes)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name string
		opts RenderOptions
		key  string
	}{
		{"bad name", RenderOptions{Name: "my net"}, "name"},
		{"relative socket", RenderOptions{Socket: "anetd.sock"}, "socket"},
		{"relative bpfRoot", RenderOptions{BPFRoot: "bpf"}, "bpfRoot"},
		{"mtu too big", RenderOptions{MTU: 65536}, "mtu"},
		{"mtu negative", RenderOptions{MTU: -1}, "mtu"},
		{"bad nameserver", RenderOptions{DNS: types.DNS{Nameservers: []string{"dns"}}}, "dns.nameservers"},
		{"bad search", RenderOptions{DNS: types.DNS{Search: []string{""}}}, "dns.search"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Render(tt.opts)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Render = %q, %v; want a *ConfigError", out, err)
			}
			if ce.Key != tt.key {
				t.Errorf("Key = %q, want %q (%v)", ce.Key, tt.key, err)
			}
			if out != nil {
				t.Errorf("Render returned output with its error")
			}
		})
	}
}

func TestRenderCNIVersion(t *testing.T) {
	for _, v := range RenderVersions {
		b, err := Render(RenderOptions{CNIVersion: v})
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if !strings.Contains(string(b), `"cniVersion": "`+v+`"`) {
			t.Errorf("%s: rendered %s", v, b)
		}
	}
	_, err := Render(RenderOptions{CNIVersion: "0.3.1"})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "cniVersion" {
		t.Fatalf("unsupported version: %v", err)
	}
}
