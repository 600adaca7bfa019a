//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/anet-dev/anet/lab"
)

// TestNewPodUnderPolicyFromItsFirstPacket: a pod created under an egress
// default-deny is isolated from its first packet on. Its init container
// (the first thing to run after the CNI ADD) connects to a server in the
// same namespace and must be refused, so the pod fails (restartPolicy
// Never); the same pod without the selected label connects, which shows
// the probe runs while the pod's network is up.
func TestNewPodUnderPolicyFromItsFirstPacket(t *testing.T) {
	const ns = "netpol-new"
	l := lab.SharedLab(t)
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n---\n"+
		netpolPodIn(ns, "server", lab.NodeName(2), "")+`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {isolated: "yes"}}
  policyTypes: [Egress]
`, "namespace", ns, "--wait=false")
	if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "server", "--timeout=120s"); err != nil {
		t.Fatalf("server not ready: %v: %s", err, out)
	}
	out, err := l.Kubectl("get", "pod", "-n", ns, "server", "-o", "jsonpath={.status.podIP}")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("server's address: %v %q", err, out)
	}
	srv := strings.TrimSpace(out) + ":8081"
	client := func(name, labels string) string {
		return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {%s}}
spec:
  nodeName: %s
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: first
    image: anet-testserver:latest
    imagePullPolicy: Never
    command: [/anet-testserver, connect, --protocol, tcp, --address, %s, --timeout, 1s]
  containers:
  - name: pause
    image: anet-testserver:latest
    imagePullPolicy: Never
    command: [/anet-testserver, pause]
---
`, name, ns, labels, lab.NodeName(1), srv)
	}
	// Several isolated pods at once, on a node busy starting them: each
	// one's first connection must be refused.
	var m strings.Builder
	m.WriteString(client("open", "app: open"))
	const isolated = 4
	for i := range isolated {
		m.WriteString(client(fmt.Sprintf("iso-%d", i), `isolated: "yes"`))
	}
	if err := l.Apply(m.String()); err != nil {
		t.Fatal(err)
	}
	phase := func(pod string) string {
		out, _ := l.Kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.status.phase}/{.status.initContainerStatuses[0].state.terminated.exitCode}")
		return strings.TrimSpace(out)
	}
	waitPhase := func(pod string) string {
		t.Helper()
		for range 240 {
			if p := phase(pod); strings.HasPrefix(p, "Running/") || strings.HasPrefix(p, "Failed/") || strings.HasPrefix(p, "Succeeded/") {
				return p
			}
			if _, err := l.Kubectl("wait", "-n", ns, "pod", pod, "--for=jsonpath={.status.initContainerStatuses[0].state.terminated.reason}", "--timeout=1s"); err == nil {
				continue
			}
		}
		t.Fatalf("pod %s: no outcome of its init container: %q", pod, phase(pod))
		return ""
	}
	if p := waitPhase("open"); p != "Running/0" {
		t.Errorf("the pod not under policy: %q, want its first connection through (Running/0)", p)
	}
	for i := range isolated {
		pod := fmt.Sprintf("iso-%d", i)
		if p := waitPhase(pod); p != "Failed/1" {
			t.Errorf("pod %s under egress deny: %q, want its first connection refused (Failed/1)", pod, p)
		}
	}
}
