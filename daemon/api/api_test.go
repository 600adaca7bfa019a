package api

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDecodeEndpointRequest(t *testing.T) {
	good := `{"containerID":"abc","ifName":"eth0","ip":"10.244.1.5","hostIfName":"anet0123456789a","hostIfindex":7,"hostMAC":"02:00:00:00:00:01","podMAC":"02:00:00:00:00:02","netns":"/run/netns/x","attachMode":"tcx","pod":{"namespace":"default","name":"p"}}`
	var r EndpointRequest
	if err := Decode(strings.NewReader(good), &r); err != nil {
		t.Fatal(err)
	}
	if r.IP != netip.MustParseAddr("10.244.1.5") || r.Pod.Name != "p" {
		t.Fatalf("decoded %+v", r)
	}
	bad := map[string]string{
		"not json":          `{`,
		"unknown field":     strings.Replace(good, `"netns"`, `"bogus"`, 1),
		"trailing data":     good + `{}`,
		"ipv6":              strings.Replace(good, "10.244.1.5", "fd00::5", 1),
		"bad container id":  strings.Replace(good, `"abc"`, `"-x/y"`, 1),
		"ifname too long":   strings.Replace(good, `"eth0"`, `"eth0123456789012"`, 1),
		"ifname with slash": strings.Replace(good, `"eth0"`, `"et/h"`, 1),
		"no ifindex":        strings.Replace(good, `"hostIfindex":7`, `"hostIfindex":0`, 1),
		"bad mac":           strings.Replace(good, `02:00:00:00:00:01`, `02:00`, 1),
		"wrong type":        strings.Replace(good, `"hostIfindex":7`, `"hostIfindex":"7"`, 1),
		"too big":           `{"containerID":"` + strings.Repeat("a", MaxBody) + `"}`,
	}
	for name, body := range bad {
		var r EndpointRequest
		if err := Decode(strings.NewReader(body), &r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func TestValidIfName(t *testing.T) {
	for _, ok := range []string{"eth0", "net1", "a", "x_y-z.1", "123456789012345"} {
		if err := ValidIfName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a b", "a/b", "a:b", "1234567890123456", "tab\t"} {
		if ValidIfName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzDecode feeds arbitrary bodies to the decoder of every request type:
// it must never panic, and what it accepts must be valid.
func FuzzDecode(f *testing.F) {
	f.Add(`{"containerID":"abc","ifName":"eth0","pod":{"namespace":"n","name":"p","uid":"u"}}`)
	f.Add(`{"containerID":"abc","ifName":"eth0","ip":"10.244.1.5","hostIfName":"anet0123456789a","hostIfindex":7,"hostMAC":"02:00:00:00:00:01","podMAC":"02:00:00:00:00:02"}`)
	f.Add(`{"valid":[{"containerID":"a","ifName":"eth0"}]}`)
	f.Add(`{"ip":"::1"}`)
	f.Add(`[]`)
	f.Add(`{"containerID":"a","ifName":"eth0"} x`)
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []Validator{&AllocateRequest{}, &EndpointRequest{}, &GCRequest{}} {
			if err := Decode(strings.NewReader(body), v); err == nil {
				if verr := v.Validate(); verr != nil {
					t.Fatalf("accepted an invalid request %T: %v", v, verr)
				}
			} else if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
		}
	})
}
