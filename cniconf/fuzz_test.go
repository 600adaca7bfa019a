package cniconf

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every failure is a
// *ConfigError, and that an accepted config survives a trip through its
// own JSON encoding unchanged. Seeds: every file under testdata/cni.
func FuzzParse(f *testing.F) {
	err := filepath.WalkDir(testdataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f.Add(data)
		return nil
	})
	if err != nil {
		f.Fatalf("seeding from %s: %v", testdataDir, err)
	}
	// Inputs that do not survive a naive round trip: empty collections
	// (left out when encoding), shadowed and case-folded keys, invalid
	// UTF-8, numbers that are not integers.
	const head = `"cniVersion":"1.1.0","name":"anet","type":"anet-cni"`
	for _, s := range []string{
		`{` + head + `,"capabilities":{},"prevResult":{},"cni.dev/valid-attachments":[],"ipam":{}}`,
		`{` + head + `,"dns":{"nameservers":[],"search":[],"options":[],"domain":""}}`,
		`{` + head + `,"DNS":{"Domain":"a"},"MTU":9000,"Socket":"/s","bpfroot":"/b","dns":{"domain":"b"}}`,
		`{` + head + `,"prevResult":{"x":-0,"y":1e-7,"z":[{}],"\xff":"\xfe"},"capabilities":{"a":false}}`,
		`{` + head + `,"cni.dev/valid-attachments":[{}],"ipam":{"type":""},"mtu":null}`,
		`{` + head + `,"dns":{"search":["a"],"options":["ndots:5"],"nameservers":["::ffff:1.2.3.4"]}}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if c != nil {
				t.Fatalf("Parse returned a config with its error")
			}
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshaling the parsed config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(Parse(in))): %v\nin:  %q\nout: %s", err, data, out)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the config\nin:    %q\nout:   %s\nfirst: %+v\nagain: %+v", data, out, c, c2)
		}
	})
}
