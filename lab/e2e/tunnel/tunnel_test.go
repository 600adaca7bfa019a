//go:build linux

// Package tunnel tests the Geneve overlay end to end: a 3-node lab whose
// anetds run --routing-mode tunnel, with IP forwarding off on every node
// and no route to another node's pod CIDR.
package tunnel

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab"
)

func TestMain(m *testing.M) {
	os.Exit(lab.RunShared(m, lab.Options{Nodes: 3, RoutingMode: "tunnel"}))
}

func pod(name, node string) string { return podIn("tunnel", name, node) }

func podIn(namespace, name, node string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[3]s, labels: {app: %[1]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
---
`, name, node, namespace)
}

// nodeRun runs a command in a node's namespaces.
func nodeRun(t *testing.T, l *lab.Lab, node string, argv ...string) string {
	t.Helper()
	cmd, err := l.NodeCmd(node, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s on %s: %v: %s", argv, node, err, out)
	}
	return string(out)
}

// TestPodToPodOverTunnel: pods on different nodes reach each other with
// TCP, UDP and ICMP through the overlay alone: every node has IP
// forwarding off, no route to another node's pod CIDR and no tunnel
// device; a capture on the receiving node's underlay shows Geneve on UDP
// 6081 whose VNI is the sending pod's security identity, with the inner
// packet between the two pods' addresses.
func TestPodToPodOverTunnel(t *testing.T) {
	l := lab.SharedLab(t)
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: tunnel}\n---\n"+
		pod("a", lab.NodeName(1))+pod("b", lab.NodeName(2))+pod("c", lab.NodeName(3)), "namespace", "tunnel", "--wait=false")
	if out, err := l.Kubectl("wait", "-n", "tunnel", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	ip := func(p string) string {
		out, err := l.Kubectl("get", "pod", "-n", "tunnel", p, "-o", "jsonpath={.status.podIP}")
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("pod %s: %v %q", p, err, out)
		}
		return strings.TrimSpace(out)
	}
	a, b, c := ip("a"), ip("b"), ip("c")

	for _, n := range l.Nodes {
		if v := strings.TrimSpace(nodeRun(t, l, n.Name, "sysctl", "-n", "net.ipv4.ip_forward")); v != "0" {
			t.Errorf("%s: net.ipv4.ip_forward = %s, want 0", n.Name, v)
		}
		if out := nodeRun(t, l, n.Name, "ip", "-d", "link", "show"); strings.Contains(out, "geneve") || strings.Contains(out, "vxlan") {
			t.Errorf("%s has a tunnel device:\n%s", n.Name, out)
		}
		for _, other := range l.Nodes {
			if other.Name == n.Name {
				continue
			}
			cidr, err := l.PodCIDR(other.Name)
			if err != nil {
				t.Fatal(err)
			}
			if out := nodeRun(t, l, n.Name, "ip", "-4", "route", "show", cidr); strings.TrimSpace(out) != "" {
				t.Errorf("%s routes %s's pod CIDR %s: %s", n.Name, other.Name, cidr, out)
			}
		}
	}

	ts, err := l.Testserver()
	if err != nil {
		t.Fatal(err)
	}
	probe := func(from, proto, addr string) {
		t.Helper()
		var err error
		var out string
		for range 20 { // the peers reach every node's map within moments of its start
			if out, err = l.Exec("tunnel", from, ts, "connect", "--protocol", proto, "--address", addr, "--timeout", "1s"); err == nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Errorf("%s from %s to %s: %v: %s", proto, from, addr, err, out)
	}
	probe("a", "tcp", b+":8081")
	probe("b", "tcp", a+":8081")
	probe("a", "udp", c+":8081")
	probe("c", "http", a+":8080")
	if out, err := l.Exec("tunnel", "a", "ping", "-c", "3", "-W", "1", b); err != nil {
		t.Errorf("ping a → b: %v: %s", err, out)
	}

	// The capture: on node2's underlay, while a sends b datagrams.
	dir := t.TempDir()
	pcap := filepath.Join(dir, "geneve.pcap")
	capture, err := l.NodeCmd(lab.NodeName(2), "tcpdump", "-Z", "root", "-i", "eth0", "-n", "-U", "-c", "3", "-w", pcap, "udp", "port", "6081")
	if err != nil {
		t.Fatal(err)
	}
	var capOut strings.Builder
	capture.Stdout, capture.Stderr = &capOut, &capOut
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- capture.Wait() }()
	time.Sleep(time.Second) // tcpdump's filter in place
	deadline := time.After(20 * time.Second)
	sending := true
	for sending {
		_, _ = l.Exec("tunnel", "a", ts, "connect", "--protocol", "udp", "--address", b+":8081", "--timeout", "300ms")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("tcpdump: %v: %s", err, capOut.String())
			}
			t.Logf("tcpdump: %s", strings.TrimSpace(capOut.String()))
			sending = false
		case <-deadline:
			_ = capture.Process.Kill()
			t.Fatal("no Geneve packet captured on node2's underlay in 20 s")
		default:
		}
	}
	if st, err := os.Stat(pcap); err != nil || st.Size() <= 24 {
		t.Fatalf("the capture %s: %v (size %v): tcpdump said %s", pcap, err, st, capOut.String())
	}
	fields := nodeRun(t, l, lab.NodeName(2), "tshark", "-r", pcap, "-T", "fields", "-E", "separator=,", "-E", "aggregator=/",
		"-e", "udp.dstport", "-e", "geneve.vni", "-e", "ip.src")
	n, ok := l.Node(lab.NodeName(1))
	if !ok {
		t.Fatal("no node1")
	}
	actl, err := l.NodeCmd(lab.NodeName(1), filepath.Join(l.State().AnetBinDir, "anetctl"), "--socket", n.Socket, "policy", "tunnel/a", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	out, err := actl.Output()
	if err != nil {
		t.Fatalf("anetctl policy tunnel/a: %v: %s", err, out)
	}
	var ep api.EndpointPolicy
	if err := json.Unmarshal(out, &ep); err != nil || ep.Identity.ID == 0 {
		t.Fatalf("a's identity: %v %s", err, out)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(fields), "\n") {
		// (tshark prints the aggregator "/" as "\\" in some versions.)
		f := strings.Split(strings.ReplaceAll(line, "\\", "/"), ",")
		// udp.dstport and ip.src list the outer, then the inner header's.
		if len(f) >= 3 && strings.HasPrefix(f[0], "6081/") && strings.HasSuffix(f[2], "/"+a) {
			var vni uint32
			if _, err := fmt.Sscanf(strings.TrimPrefix(f[1], "0x"), "%x", &vni); err != nil {
				if _, err := fmt.Sscanf(f[1], "%d", &vni); err != nil {
					t.Fatalf("VNI %q: %v", f[1], err)
				}
			}
			if vni != ep.Identity.ID {
				t.Errorf("Geneve VNI %d (%s), want a's identity %d", vni, f[1], ep.Identity.ID)
			}
			found = true
		}
	}
	if !found {
		t.Errorf("no Geneve packet from a (%s) in the capture:\n%s", a, fields)
	}
	t.Logf("captured on node2's underlay (udp.dstport, geneve.vni, ip.src):\n%s", fields)
}

var mtuRE = regexp.MustCompile(` mtu ([0-9]+) `)

// linkMTU is the MTU that `ip -o link show DEV` prints.
func linkMTU(t *testing.T, out string) int {
	t.Helper()
	m := mtuRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no mtu in %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestBulkTransferDefaultMTU: with the conflist naming no MTU (the lab's
// anet-install writes none), anetd gives pods in tunnel mode the
// underlay's MTU less the 50 bytes of encapsulation, and 100 MB sent over
// one TCP connection between pods on different nodes arrives intact
// (SHA-256 compared). With the kernel's default of 1500 in the pods, a
// full-size segment sent without GSO (a retransmission) would not fit the
// underlay once encapsulated.
func TestBulkTransferDefaultMTU(t *testing.T) {
	l := lab.SharedLab(t)
	const nsName = "tunnel-bulk"
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+nsName+"}\n---\n"+
		podIn(nsName, "src", lab.NodeName(1))+podIn(nsName, "dst", lab.NodeName(3)), "namespace", nsName, "--wait=false")
	if out, err := l.Kubectl("wait", "-n", nsName, "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	underlay := linkMTU(t, nodeRun(t, l, lab.NodeName(1), "ip", "-o", "link", "show", "eth0"))
	for _, p := range []string{"src", "dst"} {
		out, err := l.Exec(nsName, p, "ip", "-o", "link", "show", "eth0")
		if err != nil {
			t.Fatalf("%s: %v: %s", p, err, out)
		}
		if got, want := linkMTU(t, out), underlay-50; got != want {
			t.Errorf("pod %s: eth0 mtu %d, want %d (the underlay's %d less 50)", p, got, want, underlay)
		}
	}
	srcNS, err := l.PodNetns(nsName, "src")
	if err != nil {
		t.Fatal(err)
	}
	dstNS, err := l.PodNetns(nsName, "dst")
	if err != nil {
		t.Fatal(err)
	}
	out, err := l.Kubectl("get", "pod", "-n", nsName, "dst", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		t.Fatal(err)
	}
	dstIP := strings.TrimSpace(out)

	// The sockets are made in the pods' namespaces (a socket stays in the
	// namespace it was made in); the test's goroutines then use them.
	var ln net.Listener
	if err := ns.WithNetNSPath(dstNS, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", ":9100")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	var conn net.Conn
	if err := ns.WithNetNSPath(srcNS, func(ns.NetNS) error {
		var err error
		for range 20 { // the peers reach every node's map within moments
			if conn, err = net.DialTimeout("tcp4", net.JoinHostPort(dstIP, "9100"), time.Second); err == nil {
				return nil
			}
			time.Sleep(500 * time.Millisecond)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const size = 100 << 20
	_ = conn.SetDeadline(time.Now().Add(3 * time.Minute))
	h := sha256.New()
	rnd := rand.NewChaCha8([32]byte{'a', 'n', 'e', 't'})
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := 0; sent < size; sent += len(buf) {
		_, _ = rnd.Read(buf)
		h.Write(buf)
		if _, err := conn.Write(buf); err != nil {
			t.Fatalf("after %d bytes: %v", sent, err)
		}
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := <-got
	conn.Close()
	if r.err != nil {
		t.Fatalf("receiving: %v (after %d bytes)", r.err, r.n)
	}
	if r.n != size || !bytes.Equal(r.sum[:], h.Sum(nil)) {
		t.Fatalf("received %d bytes, sha256 %x; sent %d, sha256 %x", r.n, r.sum, size, h.Sum(nil))
	}
	t.Logf("100 MB from %s to %s over the tunnel in %v", lab.NodeName(1), lab.NodeName(3), time.Since(start).Round(time.Millisecond))
}
