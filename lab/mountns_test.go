//go:build linux

package lab

import (
	"reflect"
	"testing"
)

func TestHoles(t *testing.T) {
	have := map[string]bool{"/var": true, "/var/lib": true, "/var/log": true, "/run": true, "/run/containerd": true}
	exists := func(p string) bool { return have[p] }
	got, err := holes([]string{"/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/run/containerd", "/var/lib/a/b"}, exists)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"/var/lib": {"kubelet", "cni", "a/b"},
		"/var/log": {"containers"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("holes = %v, want %v", got, want)
	}
	if _, err := holes([]string{"/nothing/here"}, exists); err == nil {
		t.Error("a hole in / was accepted")
	}
}
