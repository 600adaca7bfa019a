//go:build linux

package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

const udpHoldManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: udphold}
spec:
  replicas: 1
  selector: {matchLabels: {app: udphold}}
  template:
    metadata: {labels: {app: udphold}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: anet-testserver:latest
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: echo-udp, containerPort: 8081, protocol: UDP}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: udphold}
spec:
  selector: {app: udphold}
  ports:
  - {name: udp, port: 53, targetPort: echo-udp, protocol: UDP}
`

// TestConnectedUDPMovesOn: a pod's UDP socket connected to a ClusterIP went
// to the one backend there was; a second backend comes, the first is
// deleted: anetd destroys the socket (the application's next receive fails
// with ECONNABORTED), the client connects again and reaches the live
// backend. Without that the socket would keep sending to the gone pod's
// address, for ever, as kube-proxy's users know from stale conntrack
// entries (which kube-proxy flushes for UDP).
func TestConnectedUDPMovesOn(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	if err := l.Apply(udpHoldManifest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = l.KubectlStdin(udpHoldManifest, "delete", "-f", "-", "--ignore-not-found", "--wait=false")
	})
	first := l.WaitPods(t, "app=udphold", 1)[0]
	vip := l.ClusterIP(t, "udphold")
	// The Service answers before the hold starts (its frontend is written).
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := l.Probe(client.Name, "udp", vip+":53")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("UDP echo through %s:53 before the hold: %v: %s", vip, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}

	out := &strings.Builder{}
	hold, err := l.ExecCmd("default", client.Name, testserver(t), "connect", "--protocol", "udp",
		"--address", vip+":53", "--hold", "30s", "--timeout", "2s")
	if err != nil {
		t.Fatal(err)
	}
	hold.Stdout, hold.Stderr = out, out
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hold.Wait() }()

	time.Sleep(2 * time.Second)
	if _, err := l.Kubectl("scale", "deployment", "udphold", "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	l.WaitPods(t, "app=udphold", 2)
	if _, err := l.Kubectl("delete", "pod", first.Name, "--wait=false"); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %s (%s), the backend the socket was connected to", first.Name, first.IP)
	err = <-done
	got := out.String()
	t.Logf("client: %s", strings.TrimSpace(got))
	if err != nil {
		t.Fatalf("the connected UDP client did not reach the live backend at the end: %v", err)
	}
	if !strings.Contains(got, "reconnect after ") || !strings.Contains(got, "connection abort") {
		t.Errorf("the client's socket was not destroyed (no ECONNABORTED): %s", got)
	}
}
