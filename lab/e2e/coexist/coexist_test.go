//go:build linux

// Package coexist runs the Service tests of lab/e2e in a cluster that keeps
// its kube-proxy: a 3-node lab with the real kube-proxy in iptables mode on
// every node and every anetd started with --enable-services=false
// (lab.Options.KubeProxy), so that netfilter translates Service traffic and
// anet's pod programs must hand what it translated to the host stack
// (bpf/lxc.c, netfilter_translated). One lab is shared by the package's
// tests (TestMain); the whole run prints its time.
package coexist

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

func TestMain(m *testing.M) {
	t0 := time.Now()
	code := lab.RunShared(m, lab.Options{Nodes: 3, DNS: true, KubeProxy: "iptables"})
	fmt.Fprintf(os.Stderr, "coexist: lab up, tests and down took %s\n", time.Since(t0).Round(time.Second))
	os.Exit(code)
}

// TestSetup: every node runs kube-proxy (its KUBE-SERVICES chain is there)
// and an anetd with its own service handling off and without
// --purge-kube-proxy-rules, which would remove kube-proxy's live rules.
func TestSetup(t *testing.T) {
	l, _, _ := lab.SharedEcho(t)
	for _, n := range l.Nodes {
		kp, ok := l.Component(n.Name + "/kube-proxy")
		if !ok {
			t.Errorf("%s: no kube-proxy recorded", n.Name)
		} else if _, err := os.Stat("/proc/" + strconv.Itoa(kp.PID)); err != nil {
			t.Errorf("%s: kube-proxy (pid %d) is not running", n.Name, kp.PID)
		}
		cmd, err := l.NodeCmd(n.Name, "iptables", "-t", "nat", "-S", "KUBE-SERVICES")
		if err != nil {
			t.Fatal(err)
		}
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "KUBE-SVC-") {
			t.Errorf("%s: no Service rules of kube-proxy in the nat table: %v: %s", n.Name, err, out)
		}
		a, ok := l.Component(n.Name + "/anetd")
		if !ok {
			t.Fatalf("%s: no anetd recorded", n.Name)
		}
		if !slices.Contains(a.Argv, "--enable-services=false") {
			t.Errorf("%s: anetd %v: want --enable-services=false", n.Name, a.Argv)
		}
		if slices.Contains(a.Argv, "--purge-kube-proxy-rules") {
			t.Errorf("%s: anetd %v purges kube-proxy's rules", n.Name, a.Argv)
		}
	}
}

// backendService runs one anet-testserver pod named name on node and a
// ClusterIP Service of the same name for it alone (80 -> HTTP 8080, 81/TCP
// and 53/UDP -> the echo on 8081), and returns the pod and the Service's
// address.
func backendService(t *testing.T, l *lab.Lab, name, node string) (lab.Pod, string) {
	t.Helper()
	l.TestPodOn(t, name, node)
	m := fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp, port: 81, targetPort: 8081, protocol: TCP}
  - {name: udp, port: 53, targetPort: 8081, protocol: UDP}
`, name)
	l.ApplyForTest(t, m)
	return l.WaitPods(t, "app="+name, 1)[0], l.ClusterIP(t, name)
}

// TestClusterIP: a pod on node1 reaches a ClusterIP over TCP (HTTP, and a
// raw TCP echo) and UDP, served by kube-proxy's DNAT, with a backend on its
// own node (the replies come back through the host stack to be
// reverse-translated: what timed out before) and with one on another
// node; the backend sees the pod's own address (kube-proxy does not
// masquerade pod traffic). The echo Service is balanced over all three
// nodes' backends.
func TestClusterIP(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	for _, c := range []struct{ name, node string }{{"same-node", "node1"}, {"cross-node", "node2"}} {
		t.Run(c.name, func(t *testing.T) {
			be, vip := backendService(t, l, "be-"+c.name, c.node)
			l.WaitBackends(t, client.Name, vip+":80", []string{be.Name}, 30*time.Second)
			a, err := l.HTTPAnswer(client.Name, vip+":80")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(a.Client, client.IP+":") {
				t.Errorf("the backend saw client %s, not the pod's own address %s", a.Client, client.IP)
			}
			for _, p := range []struct{ proto, port string }{{"tcp", "81"}, {"udp", "53"}} {
				if out, err := l.Probe(client.Name, p.proto, vip+":"+p.port); err != nil {
					t.Errorf("%s echo through %s:%s: %v: %s", p.proto, vip, p.port, err, out)
				}
			}
			// Many connections in a row: none may hang on a reply that
			// missed the reverse NAT.
			if out, err := l.Kubectl("exec", client.Name, "--", "/anet-testserver", "connect", "--protocol", "tcp",
				"--address", vip+":81", "--timeout", "2s", "--repeat", "50"); err != nil {
				t.Errorf("50 TCP connections through %s:81: %v: %s", vip, err, out)
			}
		})
	}
	l.WaitBackends(t, client.Name, l.ClusterIP(t, "echo")+":80", lab.PodNames(echo), 30*time.Second)
}

// TestDirectAfterService: the client connects to a same-node backend
// through its ClusterIP, then straight to the backend's address from the
// same source port while netfilter still holds the closed connection's
// entry (TIME_WAIT). anet forwards the direct connection by eBPF, and must
// not hand its replies, which match the old entry's reply tuple, to the
// host stack (it reverse-translated them, and the connect failed: found by
// the services benchmark).
func TestDirectAfterService(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	be, vip := backendService(t, l, "be-direct", "node1")
	l.WaitBackends(t, client.Name, vip+":80", []string{be.Name}, 30*time.Second)
	const sport = "40999"
	for _, addr := range []string{vip + ":81", be.IP + ":8081", vip + ":81", be.IP + ":8081"} {
		out, err := l.Kubectl("exec", client.Name, "--", "/anet-testserver", "connect", "--protocol", "tcp",
			"--address", addr, "--source-port", sport, "--timeout", "2s")
		if err != nil {
			t.Fatalf("from port %s to %s: %v: %s", sport, addr, err, out)
		}
	}
}

// TestHairpin: a pod reaches itself through its own Service (kube-proxy
// masquerades it).
func TestHairpin(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {app: client}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	l.ApplyForTest(t, m)
	l.WaitBackends(t, client.Name, l.ClusterIP(t, "self")+":80", []string{client.Name}, 30*time.Second)
}

// TestNodePortFromOutside: a NodePort on a node's address, from the outside
// namespace, reaches every backend, those on other nodes too.
func TestNodePortFromOutside(t *testing.T) {
	l, echo, _ := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
`
	l.ApplyForTest(t, m)
	for _, node := range []string{"node1", "node2"} {
		l.WaitOutside(t, l.NodeAddress(t, node)+":30080", lab.PodNames(echo), 30*time.Second)
	}
}

// TestServiceByName: the pod's resolver reaches CoreDNS through the
// kube-dns Service (kube-proxy's DNAT, UDP, to a pod that may be on the
// client's node), and the name's ClusterIP reaches every backend.
func TestServiceByName(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	for _, name := range []string{"echo", "echo.default.svc.cluster.local"} {
		l.WaitBackends(t, client.Name, name+":80", lab.PodNames(echo), 30*time.Second)
	}
}
