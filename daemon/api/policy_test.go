package api

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePod(t *testing.T) {
	for _, ok := range []string{"x/a", "kube-system/coredns-7db6d8ff4d-x2x9z", "a1/web.v2", strings.Repeat("n", 63) + "/" + strings.Repeat("p", 253)} {
		if _, _, err := ParsePod(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, msg := range map[string]string{
		"foo":                                   "not NAMESPACE/POD",
		"/a":                                    "namespace",
		"x/":                                    "pod name",
		"X/a":                                   "namespace",
		"x/a/b":                                 "pod name",
		"x/A":                                   "pod name",
		"x/-a":                                  "pod name",
		strings.Repeat("n", 64) + "/a":          "namespace",
		"x/" + strings.Repeat("p", 254):         "pod name",
		"x.y/a":                                 "namespace",
		"x/a..b":                                "pod name",
		"x/a b":                                 "pod name",
		"../../v1/status":                       "namespace",
		"x/" + strings.Repeat("p", 10) + "%2Fa": "pod name",
	} {
		if _, _, err := ParsePod(bad); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want an error about the %s", bad, err, msg)
		}
	}
	if err := ValidPod("X", "a"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ValidPod: %v, want ErrInvalid", err)
	}
}

// TestIdentityJSON: the names scripts read; a prefix only on CIDR
// identities.
func TestIdentityJSON(t *testing.T) {
	b, _ := json.Marshal([]IdentityEntry{
		{Identity: Identity{ID: 1, Kind: IdentityReserved, Name: "host"}},
		{Identity: Identity{ID: 256, Kind: IdentityPod, Namespace: "x", Labels: map[string]string{"app": "a"}}, Endpoints: 2},
		{Identity: Identity{ID: 0x800001, Kind: IdentityCIDR, CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
	})
	want := `[{"id":1,"kind":"reserved","name":"host","endpoints":0},` +
		`{"id":256,"kind":"pod","namespace":"x","labels":{"app":"a"},"endpoints":2},` +
		`{"id":8388609,"kind":"cidr","cidr":"10.0.0.0/8","endpoints":0}]`
	if string(b) != want {
		t.Errorf("json\n got %s\nwant %s", b, want)
	}
}
