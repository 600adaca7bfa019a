package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The plugin is short-lived and must start fast: it never links client-go
// or any other Kubernetes client library, nor what it does not need for an
// ADD and whose package initialization runs at every start: the eBPF
// library and anet's datapath (anetd checks and prunes attachments for
// CHECK and GC), net/http and TLS (package api's client speaks HTTP on the
// socket itself), nftables and iptables (which the reference plugins'
// pkg/ip pulls in).
func TestNoHeavyDependency(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	banned := []string{
		"k8s.io", "sigs.k8s.io", "github.com/cilium/ebpf", "github.com/anet-dev/anet/daemon/datapath",
		"github.com/anet-dev/anet/bpf", "net/http", "crypto/tls", "github.com/coreos/go-iptables",
		"github.com/containernetworking/plugins/pkg/ip",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("anet-cni depends on %s", dep)
			}
		}
	}
}
