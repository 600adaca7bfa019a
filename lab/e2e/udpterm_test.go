//go:build linux

package e2e

import (
	"os"
	"path/filepath"
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
// to the one backend there was; a second backend comes, the first leaves
// the Service (its labels change; it keeps running and echoing): anetd
// destroys the socket (the application's next receive fails with
// ECONNABORTED), the client connects again and reaches a backend of the
// Service. Without that the socket would keep talking to a pod that is no
// backend any more, for ever, as kube-proxy's users know from stale
// conntrack entries (which kube-proxy flushes for UDP). (A deleted backend
// would not tell: its server closes its socket, and the ICMP port
// unreachable makes the client reconnect on its own.)
func TestConnectedUDPMovesOn(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	l.ApplyForTest(t, udpHoldManifest, "--wait=false")
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
		"--address", vip+":53", "--hold", "12s", "--timeout", "2s")
	if err != nil {
		t.Fatal(err)
	}
	hold.Stdout, hold.Stderr = out, out
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hold.Wait() }()

	began := time.Now()
	time.Sleep(2 * time.Second)
	if _, err := l.Kubectl("scale", "deployment", "udphold", "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	both := l.WaitPods(t, "app=udphold", 2)
	t.Logf("at %.1fs: two backends ready: %+v", time.Since(began).Seconds(), both)
	// The first backend leaves the Service but keeps running and echoing
	// (a pod whose labels changed): a socket still connected to it would
	// go on getting answers, from a pod that is no backend any more.
	if _, err := l.Kubectl("label", "pod", first.Name, "app=udphold-away", "--overwrite"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "pod", "-l", "app=udphold-away", "--wait=false") })
	t.Logf("at %.1fs: %s (%s), the backend the socket was connected to, left the Service (relabelled), still running", time.Since(began).Seconds(), first.Name, first.IP)
	err = <-done
	got := out.String()
	t.Logf("client: %s", strings.TrimSpace(got))
	defer func() {
		if !t.Failed() {
			return
		}
		for _, n := range l.Nodes {
			b, _ := os.ReadFile(filepath.Join(n.Dir, "logs", "anetd.log"))
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "udphold") || strings.Contains(line, "UDP") || strings.Contains(line, "socket") {
					t.Logf("%s anetd: %s", n.Name, line)
				}
			}
		}
	}()
	if err != nil {
		t.Fatalf("the connected UDP client did not reach the live backend at the end: %v", err)
	}
	// A destroyed socket fails its next receive with ECONNABORTED, or,
	// disconnected by the destroy, its next send with EDESTADDRREQ.
	if !strings.Contains(got, "reconnect at ") || !(strings.Contains(got, "connection abort") || strings.Contains(got, "destination address required")) {
		t.Errorf("the client's socket was not destroyed (no ECONNABORTED or EDESTADDRREQ): %s", got)
	}
	// And anetd of the client's node says it destroyed it.
	n, ok := l.Node(client.Node)
	if !ok {
		t.Fatalf("no node %s", client.Node)
	}
	b, err := os.ReadFile(filepath.Join(n.Dir, "logs", "anetd.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `msg="destroyed UDP sockets connected to removed service backends"`) {
		t.Errorf("%s's anetd logged no destroyed UDP socket", client.Node)
	}
}
