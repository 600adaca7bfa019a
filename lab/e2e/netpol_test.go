//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab"
)

// netpolNS is the namespace of TestNetworkPolicy: its policies select
// nothing outside it.
const netpolNS = "netpol"

// netpolPod is an anet-testserver pod of netpolNS on node (HTTP 8080,
// TCP/UDP echo 8081), labelled app=name plus extra (or only extra when it
// starts with "app:"). Its readiness probe
// (kubelet, from the node) fails it after one missed second.
func netpolPod(name, node, extra string) string { return netpolPodIn(netpolNS, name, node, extra) }

// netpolPodIn is netpolPod in namespace ns.
func netpolPodIn(ns, name, node, extra string) string {
	labels := "app: " + name + extra
	if strings.HasPrefix(extra, "app:") {
		labels = extra
	}
	return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[4]s, labels: {%[3]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    env: [{name: POD_NAME, value: %[1]s}]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
---
`, name, node, labels, ns)
}

// reach is one expected verdict: from pod from, a TCP connection to addr.
type reach struct {
	from, addr, what string
	ok               bool
}

// netpolProbe connects from a pod of netpolNS over TCP, 1 s timeout.
func netpolProbe(l *lab.Lab, ns, from, addr string) error {
	out, err := l.Kubectl("exec", "-n", ns, from, "--", "/anet-testserver", "connect",
		"--protocol", "tcp", "--address", addr, "--timeout", "1s")
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// expectReach probes every case in parallel until all give their verdict
// (policy takes a moment to reach every node), then once more: the second
// round must agree entirely (nothing flaps).
func expectReach(t *testing.T, l *lab.Lab, stage string, cases []reach) {
	t.Helper()
	expectReachIn(t, l, netpolNS, stage, cases)
}

// expectReachIn is expectReach for pods of namespace ns.
func expectReachIn(t *testing.T, l *lab.Lab, ns, stage string, cases []reach) {
	t.Helper()
	start := time.Now()
	round := func() []string {
		var mu sync.Mutex
		var wrong []string
		var wg sync.WaitGroup
		for _, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := netpolProbe(l, ns, c.from, c.addr)
				if (err == nil) != c.ok {
					mu.Lock()
					wrong = append(wrong, fmt.Sprintf("%s -> %s (%s): want reachable=%v, err=%v", c.from, c.addr, c.what, c.ok, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return wrong
	}
	converged, _ := convergeThenConfirm(t, stage, func() ([]string, string) {
		wrong := round()
		return wrong, "\n  " + strings.Join(wrong, "\n  ")
	})
	t.Logf("%s: %d probes right after %v (confirmed in %v)", stage, len(cases), converged.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// convergeThenConfirm runs check (wrong verdicts, and what to show of
// them) until nothing is wrong, 30 s at most (policy takes a moment to
// reach every node), then once more, which must agree entirely (nothing
// flaps). It returns how long it took to converge, and in how many rounds.
func convergeThenConfirm(t *testing.T, what string, check func() (wrong []string, detail string)) (time.Duration, int) {
	t.Helper()
	start := time.Now()
	rounds := 0
	for {
		rounds++
		wrong, detail := check()
		if len(wrong) == 0 {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%s: after %v and %d rounds, %d wrong: %s", what, time.Since(start).Round(time.Millisecond), rounds, len(wrong), detail)
		}
	}
	converged := time.Since(start)
	if wrong, detail := check(); len(wrong) > 0 {
		t.Fatalf("%s: the verdicts changed after they were all right once, %d wrong: %s", what, len(wrong), detail)
	}
	return converged, rounds
}

// TestNetworkPolicy: NetworkPolicy enforced by anetd, same node and
// across nodes, directly and through a ClusterIP Service (judged on the
// backend): (a) no policy, all open; (b) default-deny ingress on the
// server refuses every client while kubelet's readiness probe keeps it
// Ready (the host is always allowed in) and its own connections out still
// work (replies pass); (c) an allow from a podSelector lets the labelled
// clients in, same node and remote, and no other; (d) an egress deny on a
// client stops everything it sends; a policy anet cannot enforce as
// written yields a PolicyNotEnforced Event on it naming the field, and the
// other verdicts stay; (e) deleting the policies opens everything again.
func TestNetworkPolicy(t *testing.T) {
	start := time.Now()
	l := lab.SharedLab(t)
	m := "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + netpolNS + "}\n---\n" +
		netpolPod("server", lab.NodeName(2), "") +
		netpolPod("ok-same", lab.NodeName(2), ", access: \"yes\"") +
		netpolPod("ok-far", lab.NodeName(1), ", access: \"yes\"") +
		netpolPod("no-same", lab.NodeName(2), "") +
		netpolPod("no-far", lab.NodeName(3), "") +
		netpolPod("twin-a", lab.NodeName(1), "app: twin") +
		netpolPod("twin-b", lab.NodeName(3), "app: twin") + `
apiVersion: v1
kind: Service
metadata: {name: server, namespace: ` + netpolNS + `}
spec:
  selector: {app: server}
  ports:
  - {name: tcp, port: 80, targetPort: 8081, protocol: TCP}
`
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "namespace", netpolNS, "--wait=false") })
	if out, err := l.Kubectl("wait", "-n", netpolNS, "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	ip := func(pod string) string {
		out, err := l.Kubectl("get", "pod", "-n", netpolNS, pod, "-o", "jsonpath={.status.podIP}")
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("pod %s: %v %q", pod, err, out)
		}
		return strings.TrimSpace(out)
	}
	srv := ip("server") + ":8081"
	vipOut, err := l.Kubectl("get", "service", "-n", netpolNS, "server", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		t.Fatal(err)
	}
	vip := strings.TrimSpace(vipOut) + ":80"
	noFar := ip("no-far") + ":8081"
	okFar := ip("ok-far") + ":8081"
	clients := []string{"ok-same", "ok-far", "no-same", "no-far"}
	toServer := func(allowed func(string) bool) []reach {
		var cs []reach
		for _, c := range clients {
			cs = append(cs, reach{c, srv, "server", allowed(c)}, reach{c, vip, "server through its ClusterIP", allowed(c)})
		}
		return cs
	}
	apply := func(y string) {
		t.Helper()
		if err := l.Apply(y); err != nil {
			t.Fatal(err)
		}
	}
	all := func(string) bool { return true }

	// (a) No policy: everything is open.
	expectReach(t, l, "(a) no policy", append(toServer(all), reach{"server", okFar, "ok-far", true}))

	// (b) Default-deny ingress on the server.
	apply(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-server, namespace: ` + netpolNS + `}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
`)
	expectReach(t, l, "(b) default-deny ingress", append(toServer(func(string) bool { return false }),
		reach{"server", okFar, "ok-far (the server's own connection out)", true}))
	// Readiness probes every second with failureThreshold 1: three more
	// seconds under the policy would have failed it if the node's probes
	// were refused.
	time.Sleep(3 * time.Second)
	ready, err := l.Kubectl("get", "pod", "-n", netpolNS, "server", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	if err != nil || strings.TrimSpace(ready) != "True" {
		t.Errorf("server not Ready under default-deny ingress (kubelet's probes must pass): %q %v", ready, err)
	}

	// (c) Allow from pods labelled access=yes, on the echo port.
	apply(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-access, namespace: ` + netpolNS + `}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "yes"}}}]
    ports: [{protocol: TCP, port: 8081}]
`)
	okOnly := func(c string) bool { return strings.HasPrefix(c, "ok-") }
	expectReach(t, l, "(c) allow from access=yes", toServer(okOnly))
	checkAnetctlPolicy(t, l)

	// (d) Egress deny on ok-far: it reaches nothing, the others are as in (c).
	apply(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: ` + netpolNS + `}
spec:
  podSelector: {matchLabels: {app: ok-far}}
  policyTypes: [Egress]
`)
	expectReach(t, l, "(d) egress deny on ok-far", append(toServer(func(c string) bool { return c == "ok-same" }),
		reach{"ok-far", noFar, "no-far (not isolated)", false}))

	// A policy anet cannot enforce as written (an ipBlock holding one of
	// two pods of one identity: rules are per identity) is reported as an
	// Event on it, and the other policies stay as they are.
	apply(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: split-block, namespace: ` + netpolNS + `}
spec:
  podSelector: {matchLabels: {app: no-far}}
  ingress:
  - from: [{ipBlock: {cidr: ` + ip("twin-a") + `/32}}]
`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := l.Kubectl("get", "events", "-n", netpolNS, "--field-selector",
			"involvedObject.kind=NetworkPolicy,involvedObject.name=split-block,reason=PolicyNotEnforced",
			"-o", "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}")
		if err == nil && strings.Contains(out, "ingress[0].from[0]") {
			t.Logf("Event on the policy: %s", strings.SplitN(strings.TrimSpace(out), "\n", 2)[0])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PolicyNotEnforced Event on split-block naming the field after 30s: %v %q", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	expectReach(t, l, "(d) with a policy anet reports", append(toServer(func(c string) bool { return c == "ok-same" }),
		reach{"ok-far", noFar, "no-far", false}))

	// (e) Policies deleted: open again.
	if _, err := l.Kubectl("delete", "networkpolicy", "-n", netpolNS, "--all"); err != nil {
		t.Fatal(err)
	}
	expectReach(t, l, "(e) policies deleted", append(toServer(all), reach{"ok-far", noFar, "no-far", true}))
	t.Logf("TestNetworkPolicy took %v", time.Since(start).Round(time.Millisecond))
}

// anetctl runs anetctl on node against that node's anetd.
func anetctl(t *testing.T, l *lab.Lab, node string, args ...string) (string, error) {
	t.Helper()
	n, ok := l.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	cmd, err := l.NodeCmd(node, append([]string{filepath.Join(l.State().AnetBinDir, "anetctl"), "--socket", n.Socket}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// anetctlJSON runs anetctl with -o json and decodes its output into v.
func anetctlJSON(t *testing.T, l *lab.Lab, node string, v any, args ...string) {
	t.Helper()
	out, err := anetctl(t, l, node, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("anetctl %v on %s: %v: %s", args, node, err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("anetctl %v on %s: %v: %s", args, node, err, out)
	}
}

// checkAnetctlPolicy, in stage (c) of TestNetworkPolicy: anetctl policy
// on the server's node shows ingress isolated by both policies, one rule
// (TCP 8081) whose peers are exactly the identities of the two access=yes
// clients, with the numbers their own nodes give them (identities are
// cluster-wide); egress open. anetctl identity list shows the server's
// identity held by one endpoint there, and the reserved ones. An unknown
// pod is an error.
func checkAnetctlPolicy(t *testing.T, l *lab.Lab) {
	t.Helper()
	var srv api.EndpointPolicy
	anetctlJSON(t, l, lab.NodeName(2), &srv, "policy", netpolNS+"/server")
	if srv.Node != lab.NodeName(2) || !srv.Programmed || srv.Identity.ID == 0 || srv.Identity.Labels["app"] != "server" {
		t.Errorf("anetctl policy %s/server: node %q, programmed %v, identity %+v", netpolNS, srv.Node, srv.Programmed, srv.Identity)
	}
	if want := []string{netpolNS + "/allow-access", netpolNS + "/deny-server"}; !srv.Ingress.Isolated || !slices.Equal(srv.Ingress.Policies, want) {
		t.Errorf("ingress isolated %v by %v, want isolated by %v", srv.Ingress.Isolated, srv.Ingress.Policies, want)
	}
	if srv.Egress.Isolated || len(srv.Egress.Rules) != 0 {
		t.Errorf("egress %+v, want open", srv.Egress)
	}
	var peers []uint32
	if len(srv.Ingress.Rules) != 1 {
		t.Errorf("ingress rules %+v, want one", srv.Ingress.Rules)
	} else if r := srv.Ingress.Rules[0]; r.Protocol != "TCP" || r.Port != 8081 || r.EndPort != 8081 {
		t.Errorf("ingress rule %+v, want TCP 8081", r)
	} else {
		for _, p := range r.Peers {
			if p.Kind != api.IdentityPod || p.Labels["access"] != "yes" {
				t.Errorf("peer %+v of the rule is not an access=yes pod", p)
			}
			peers = append(peers, p.ID)
		}
	}
	var want []uint32
	for _, c := range []struct{ pod, node string }{{"ok-same", lab.NodeName(2)}, {"ok-far", lab.NodeName(1)}} {
		var ep api.EndpointPolicy
		anetctlJSON(t, l, c.node, &ep, "policy", netpolNS+"/"+c.pod)
		want = append(want, ep.Identity.ID)
	}
	slices.Sort(want)
	slices.Sort(peers)
	if !slices.Equal(peers, want) {
		t.Errorf("the rule's peers %v, want the clients' identities as their nodes number them %v", peers, want)
	}
	var ids []api.IdentityEntry
	anetctlJSON(t, l, lab.NodeName(2), &ids, "identity", "list")
	found := map[string]bool{}
	for _, id := range ids {
		if id.ID == srv.Identity.ID && id.Endpoints == 1 {
			found["server"] = true
		}
		if id.Kind == api.IdentityReserved {
			found[id.Name] = true
		}
	}
	for _, k := range []string{"server", "host", "world", "remote-node"} {
		if !found[k] {
			t.Errorf("anetctl identity list on %s: no %s identity (the server's held by 1 endpoint): %+v", lab.NodeName(2), k, ids)
		}
	}
	out, err := anetctl(t, l, lab.NodeName(2), "policy", netpolNS+"/server")
	if err != nil || !strings.Contains(out, netpolNS+"/allow-access") || !strings.Contains(out, "8081") {
		t.Errorf("anetctl policy (text): %v: %s", err, out)
	}
	if out, err := anetctl(t, l, lab.NodeName(2), "policy", netpolNS+"/no-such-pod"); err == nil {
		t.Errorf("anetctl policy of an unknown pod succeeded: %s", out)
	}
	t.Logf("anetctl policy %s/server on %s: identity %d, ingress by %v, peers %v", netpolNS, srv.Node, srv.Identity.ID, srv.Ingress.Policies, peers)
}

// TestNetworkPolicyAnetdKilled: anetd of the server's node SIGKILLed under
// a default-deny policy with one allow: while it is down, denied clients
// stay denied and allowed ones (same node and remote) get in, the long
// connection of an allowed client keeps echoing throughout, and all of it
// holds after anetd is back (the policy maps are pinned; the restarted
// reconciler rewrites only what changed).
func TestNetworkPolicyAnetdKilled(t *testing.T) {
	const ns = "netpol-kill"
	l := lab.SharedLab(t)
	server := lab.NodeName(2)
	m := "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "}\n---\n" +
		netpolPodIn(ns, "server", server, "") +
		netpolPodIn(ns, "ok-same", server, ", access: \"yes\"") +
		netpolPodIn(ns, "ok-far", lab.NodeName(1), ", access: \"yes\"") +
		netpolPodIn(ns, "no-same", server, "") +
		netpolPodIn(ns, "no-far", lab.NodeName(3), "") + `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-access, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "yes"}}}]
`
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "namespace", ns, "--wait=false") })
	if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	out, err := l.Kubectl("get", "pod", "-n", ns, "server", "-o", "jsonpath={.status.podIP}")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("server's address: %v %q", err, out)
	}
	srv := strings.TrimSpace(out) + ":8081"
	cases := []reach{
		{"ok-same", srv, "allowed, same node", true}, {"ok-far", srv, "allowed, other node", true},
		{"no-same", srv, "denied, same node", false}, {"no-far", srv, "denied, other node", false},
	}
	expectReachIn(t, l, ns, "under the policy", cases)

	// A long connection of an allowed client, held across the kill.
	holdOut := &strings.Builder{}
	hold := l.KubectlCmd("exec", "-n", ns, "ok-far", "--", "/anet-testserver", "connect", "--protocol", "tcp",
		"--address", srv, "--hold", "15s", "--timeout", "2s")
	hold.Stdout, hold.Stderr = holdOut, holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	holdDone := make(chan error, 1)
	go func() { holdDone <- hold.Wait() }()

	time.Sleep(time.Second)
	if err := l.Kill(server+"/anetd", syscall.SIGKILL); err != nil {
		t.Fatalf("killing %s's anetd: %v", server, err)
	}
	t.Logf("%s's anetd killed", server)
	// While it is down: the same verdicts (each probe once; the pinned
	// programs and maps keep working without anetd).
	var wrong []string
	for _, c := range cases {
		if err := netpolProbe(l, ns, c.from, c.addr); (err == nil) != c.ok {
			wrong = append(wrong, fmt.Sprintf("%s -> %s (%s): want reachable=%v, err=%v", c.from, c.addr, c.what, c.ok, err))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("with anetd down:\n  %s", strings.Join(wrong, "\n  "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Start(ctx, server+"/anetd"); err != nil {
		t.Fatalf("starting %s's anetd again: %v", server, err)
	}
	t.Logf("%s's anetd back", server)
	expectReachIn(t, l, ns, "after the restart", cases)
	if err := <-holdDone; err != nil {
		t.Errorf("the allowed long connection broke across the kill: %v: %s", err, holdOut)
	}
}
