package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The plugin is short-lived and must start fast: it never links client-go
// or any other Kubernetes client library.
func TestNoKubernetesClientDependency(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/controller-runtime") {
			t.Errorf("anet-cni depends on %s", dep)
		}
	}
}
