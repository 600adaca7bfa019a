//go:build linux

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab"
)

// Section 7, netpol: NetworkPolicy in a real 3-node lab (issue 9's
// benchmark items). (a) Pod-to-pod request/response rate over one TCP
// connection and new-connection latency (connect and one request) from a
// client pod to a server pod, across nodes and on one node, both under an
// allowing policy, with 0, 1 000 and 10 000 further rules in the cluster:
// policies of npRulesPer ingress rules each (distinct podSelectors and
// ports) in a namespace of their own, selecting a pod on every node, so
// that every node's policy maps hold the rules; as ratios to 0 rules.
// (b) The time from the create call of a NetworkPolicy to its
// enforcement on every node, over many policies: on each node a prober
// pod probes, in a loop of new connections, a target pod on the next
// node, held by a default-deny; each policy allows the probers in, and
// the time is until every prober has got through; then it is deleted,
// and the time until every prober is refused again is measured too. The
// counts take turns run by run, ascending then descending (the rules made
// or deleted in between), so that the machine's drift weighs on each
// alike; the enforcement runs come in the first round, with the fewest
// rules and with the most.

const (
	npNS       = "npbench"   // the measured pods
	npRulesNS  = "nprules"   // the rules
	npEnfNS    = "npenforce" // the enforcement probes
	npLabel    = "anet-bench-np"
	npPort     = 9000 // the measured server's echo
	npEnfPort  = 8081 // anet-testserver's TCP echo in the targets
	npRulesPer = 10   // ingress rules per policy of the rules namespace
	npRulePort = 1024 // rule i allows port npRulePort + 2i (no two adjacent: no ranges joined)
)

// npConfig is the section's part of the command line.
type npConfig struct {
	rules    string
	reps     int
	seconds  float64
	connects int
	policies int
	timeout  int // the probers' connect timeout, ms
	workers  int
	wait     time.Duration
}

func (c *npConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.rules, "np-rules", "0,1000,10000", "numbers of NetworkPolicy rules in the cluster in the netpol section, comma-separated, ascending, multiples of 10")
	fs.IntVar(&c.reps, "np-reps", 3, "runs per pair and number of rules in the netpol section")
	fs.Float64Var(&c.seconds, "np-rr-time", 3, "seconds of each request/response run in the netpol section")
	fs.IntVar(&c.connects, "np-connects", 1000, "timed new connections per run in the netpol section")
	fs.IntVar(&c.policies, "np-policies", 100, "policies whose enforcement is timed in the netpol section")
	fs.IntVar(&c.timeout, "np-probe-timeout", 10, "ms a prober waits for a connection in the netpol section (the resolution of the enforcement time)")
	fs.IntVar(&c.workers, "np-workers", 32, "API requests in flight when making the rules")
	fs.DurationVar(&c.wait, "np-timeout", 5*time.Minute, "how long the nodes may take to program the rules, or to enforce one policy")
}

// quick is -quick: 2 runs of 1 s and 200 connects per pair and count, 20 policies.
func (c *npConfig) quick() { c.reps, c.seconds, c.connects, c.policies = 2, 1, 200, 20 }

// parseRuleCounts reads -np-rules: ascending (the rules are added, never
// removed, from one count to the next), multiples of npRulesPer.
func parseRuleCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 50000 || n%npRulesPer != 0 || (len(out) > 0 && n <= out[len(out)-1]) {
			return nil, fmt.Errorf("-np-rules %q: want ascending multiples of %d from 0 to 50000", s, npRulesPer)
		}
		out = append(out, n)
	}
	return out, nil
}

// rulesPolicy is the j-th policy of the rules namespace: it selects the
// rules pods, with npRulesPer ingress rules, rule k from the pods without
// the label value rule=j-k (a podSelector of its own that still matches
// every pod there: NotIn matches pods without the key) on a port of its own.
func rulesPolicy(j int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("r-%05d", j), Namespace: npRulesNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "rules"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	for k := range npRulesPer {
		port := intstr.FromInt32(int32(npRulePort + 2*(j*npRulesPer+k)))
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "rule", Operator: metav1.LabelSelectorOpNotIn, Values: []string{fmt.Sprintf("%d-%d", j, k)}}}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
		})
	}
	return p
}

// enforcePolicy is the i-th policy of the enforcement runs: the probers
// may reach the targets' echo port.
func enforcePolicy(i int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(npEnfPort)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("allow-%03d", i), Namespace: npEnfNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "target"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "prober"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

// npPair is a measured client and its server.
type npPair struct {
	name, client, clientNode, serverNode string
}

// npPoint is what was measured with a number of rules in the cluster.
type npPoint struct {
	rules      int
	programmed time.Duration // from the first create to every node's rules pod holding them all (0: none made)
	rate       map[string][]float64
	lat        map[string][]time.Duration
	loads      []string  // load average after each round
	anetd      []float64 // CPU of the three anetds together during each round, in CPUs
	failures   []string
}

// npEnforce is what the enforcement runs measured.
type npEnforce struct {
	rules     int                        // rules in the cluster meanwhile
	applied   []time.Duration            // per policy: create call → every prober through
	perNode   map[string][]time.Duration // per node of the target
	removed   []time.Duration            // delete call → every prober refused
	steps     []time.Duration            // per policy: the largest, over the probers, time from the probe before to the one that saw it
	failures  []string
	load      string
	timeoutMS int
}

type npResult struct {
	cfg              npConfig
	cpu              string
	pairs            []npPair
	points           []*npPoint
	enf              []*npEnforce // with the fewest rules and with the most
	up, down         time.Duration
	checks           []string
	began, loadStart string
}

// benchNetpol runs the section.
func (b *bench) benchNetpol(ctx context.Context) *npResult {
	cfg := b.cfg.np
	counts, err := parseRuleCounts(cfg.rules)
	if err != nil {
		b.t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		b.t.Fatal(err)
	}
	res := &npResult{cfg: cfg, cpu: b.cfg.cpu, began: time.Now().UTC().Format("2006-01-02 15:04 MST"), loadStart: loadAvg(),
		pairs: []npPair{{"across nodes", "client-far", lab.NodeName(1), lab.NodeName(2)}, {"same node", "client-same", lab.NodeName(2), lab.NodeName(2)}}}
	nodes := []string{lab.NodeName(1), lab.NodeName(2), lab.NodeName(3)}
	b.logf("netpol: bringing up a 3-node lab")
	sl := b.upSectionLab(ctx, "netpol", "n", lab.Options{Nodes: 3})
	l := sl.Lab
	res.up = sl.up
	cs, err := labClientset(l)
	if err != nil {
		b.t.Fatalf("netpol: %v", err)
	}
	ip := b.npPods(ctx, l, cs, nodes)
	server := ip["server"] + ":" + strconv.Itoa(npPort)

	// The measured pods under an allowing policy, both directions; the
	// targets of the enforcement runs under a default-deny.
	b.npCreate(ctx, cs, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-bench", Namespace: npNS},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}},
		},
	})
	b.npCreate(ctx, cs, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-targets", Namespace: npEnfNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "target"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	})
	if _, err := b.podHelper(ctx, l, npNS, "server", append(pinned(b.cfg.cpu), self),
		[]string{helperEnv + "=echo", fmt.Sprintf("%s=:%d", listenEnv, npPort)}, nil); err != nil {
		b.t.Fatalf("netpol: echo server: %v", err)
	}
	b.npChecks(ctx, l, res, nodes, self, server)

	// The counts take turns run by run, ascending then descending (the
	// rules made or deleted in between), so that the machine's drift over
	// the section weighs on every count alike; the enforcement runs come
	// in the first round, with the fewest rules and with the most.
	for _, count := range counts {
		res.points = append(res.points, &npPoint{rules: count, rate: map[string][]float64{}, lat: map[string][]time.Duration{}})
	}
	var have int // policies of the rules namespace now
	for rep := range cfg.reps {
		for k := range res.points {
			p := res.points[k]
			if rep%2 == 1 {
				p = res.points[len(res.points)-1-k]
			}
			if ctx.Err() != nil {
				b.t.Fatal(ctx.Err())
			}
			have = b.npSetRules(ctx, l, cs, nodes, p, have)
			b.npMeasure(l, res, p, self, server, rep)
			if rep == 0 && (k == 0 || k == len(res.points)-1) {
				res.enf = append(res.enf, b.npEnforcement(ctx, l, cs, nodes, ip, self, p.rules))
			}
		}
	}
	for _, p := range res.points {
		for _, pr := range res.pairs {
			us := micros(p.lat[pr.name])
			b.logf("netpol: %d rules: %s: %.0f round trips/s (median of %d runs); connect+request p50 %.1f µs, p99 %.1f µs", p.rules, pr.name,
				stats.Median(p.rate[pr.name]), len(p.rate[pr.name]), stats.Median(us), stats.Percentile(us, 99))
		}
	}
	for _, p := range res.points {
		for _, f := range p.failures {
			res.checks = append(res.checks, "FAIL: netpol: "+f)
		}
		if len(p.failures) == 0 {
			res.checks = append(res.checks, fmt.Sprintf("ok: netpol: %s: held by every node, and every run of every pair succeeded", intNum(p.rules)+" rules"))
		}
	}
	for _, e := range res.enf {
		for _, f := range e.failures {
			res.checks = append(res.checks, fmt.Sprintf("FAIL: netpol: enforcement with %s rules: %s", intNum(e.rules), f))
		}
		if len(e.failures) == 0 {
			res.checks = append(res.checks, fmt.Sprintf("ok: netpol: enforcement with %s rules: each of %d policies reached every prober, and each deletion refused every prober again", intNum(e.rules), len(e.applied)))
		}
	}
	b.stopAll() // the helpers, before their pods go
	sl.Down()
	res.down = sl.down
	b.logf("netpol: lab down in %s", res.down.Round(100*time.Millisecond))
	return res
}

// npMeasure runs one run of both kinds per pair into p, the pairs' order
// turning with rep.
func (b *bench) npMeasure(l *lab.Lab, res *npResult, p *npPoint, self, server string, rep int) {
	cfg := b.cfg.np
	cpu0, t0 := anetdCPU(l), time.Now()
	defer func() {
		if cpu1 := anetdCPU(l); cpu0 >= 0 && cpu1 >= cpu0 {
			p.anetd = append(p.anetd, (cpu1-cpu0).Seconds()/time.Since(t0).Seconds())
		}
	}()
	for k := range res.pairs {
		pr := res.pairs[(k+rep)%len(res.pairs)]
		argv := append(pinned(b.cfg.cpu), self)
		out, err := runHelper(l, npNS, pr.client, argv, []string{helperEnv + "=rr", targetsEnv + "=" + server,
			secondsEnv + "=" + strconv.FormatFloat(cfg.seconds, 'f', -1, 64)})
		var rr rrCount
		if err == nil {
			err = json.Unmarshal(out, &rr)
		}
		if err != nil {
			p.failures = append(p.failures, fmt.Sprintf("%s, %d rules, rr run %d: %v", pr.name, p.rules, rep+1, err))
		} else {
			p.rate[pr.name] = append(p.rate[pr.name], rr.Rate())
		}
		per, err := connectRunIn(l, npNS, pr.client, argv, []string{server}, cfg.connects, roundtripEnv+"=1")
		if err != nil {
			p.failures = append(p.failures, fmt.Sprintf("%s, %d rules, connect run %d: %v", pr.name, p.rules, rep+1, err))
			continue
		}
		p.lat[pr.name] = append(p.lat[pr.name], per[0]...)
	}
	p.loads = append(p.loads, loadAvg())
}

// anetdCPU is the CPU time the lab's anetds have used so far (-1 if one
// cannot be read).
func anetdCPU(l *lab.Lab) time.Duration {
	var sum time.Duration
	for _, n := range l.Nodes {
		pr, ok := l.Component(n.Name + "/anetd")
		if !ok {
			return -1
		}
		d, err := procCPU(pr.PID)
		if err != nil {
			return -1
		}
		sum += d
	}
	return sum
}

// procCPU is a process's user and system time from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15, in clock ticks of
// 1/100 s, USER_HZ) of a /proc/PID/stat line.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state): utime is f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %q: too few fields", stat)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("stat %q: bad utime or stime", stat)
	}
	return time.Duration(u+k) * 10 * time.Millisecond, nil
}

// npSetRules makes or deletes policies of the rules namespace until it
// holds p.rules rules, given that it holds have policies, and waits until
// every node holds them; it returns the policies there now. The first
// time p's rules are made (from fewer) is p.programmed.
func (b *bench) npSetRules(ctx context.Context, l *lab.Lab, cs *kubernetes.Clientset, nodes []string, p *npPoint, have int) int {
	cfg := b.cfg.np
	want := p.rules / npRulesPer
	if want == have {
		return have
	}
	t0 := time.Now()
	var err error
	if want > have {
		b.logf("netpol: %d rules: creating policies %d to %d", p.rules, have, want-1)
		err = forEach(ctx, want-have, cfg.workers, func(i int) error {
			_, err := cs.NetworkingV1().NetworkPolicies(npRulesNS).Create(ctx, rulesPolicy(have+i), metav1.CreateOptions{})
			return err
		})
	} else {
		b.logf("netpol: %d rules: deleting policies %d to %d", p.rules, want, have-1)
		err = forEach(ctx, have-want, cfg.workers, func(i int) error {
			err := cs.NetworkingV1().NetworkPolicies(npRulesNS).Delete(ctx, rulesPolicy(want+i).Name, metav1.DeleteOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		})
	}
	if err != nil {
		b.t.Fatalf("netpol: %d rules: %v", p.rules, err)
	}
	if err := b.npWaitRules(ctx, l, nodes, p.rules, cfg.wait); err != nil {
		p.failures = append(p.failures, err.Error())
		b.logf("netpol: %v", err)
		return want
	}
	d := time.Since(t0)
	b.logf("netpol: %d rules held by every node after %s", p.rules, d.Round(10*time.Millisecond))
	if want > have && p.programmed == 0 {
		p.programmed = d
	}
	return want
}

func (b *bench) npCreate(ctx context.Context, cs *kubernetes.Clientset, p *networkingv1.NetworkPolicy) {
	if _, err := cs.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		b.t.Fatalf("netpol: policy %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// npPods makes the section's namespaces and pods and returns their
// addresses by name: in npNS the server on node2 and its clients on node1
// and node2 (anet-testserver pausing: the bench's helpers run in them); in
// npRulesNS one pod per node that the rules select; in npEnfNS per node a
// target (anet-testserver serving) and a prober (pausing).
func (b *bench) npPods(ctx context.Context, l *lab.Lab, cs *kubernetes.Clientset, nodes []string) map[string]string {
	grace := int64(1)
	pod := func(ns, name, node string, labels map[string]string, args ...string) *corev1.Pod {
		lb := map[string]string{npLabel: "pod"}
		for k, v := range labels {
			lb[k] = v
		}
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lb},
			Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: &grace,
				Containers: []corev1.Container{{Name: "c", Image: "anet-testserver:latest", ImagePullPolicy: corev1.PullNever, Args: args}}},
		}
	}
	pods := []*corev1.Pod{
		pod(npNS, "server", nodes[1], nil, "pause"),
		pod(npNS, "client-far", nodes[0], nil, "pause"),
		pod(npNS, "client-same", nodes[1], nil, "pause"),
	}
	for _, n := range nodes {
		pods = append(pods,
			pod(npRulesNS, "rules-"+n, n, map[string]string{"app": "rules"}, "pause"),
			pod(npEnfNS, "target-"+n, n, map[string]string{"role": "target"}),
			pod(npEnfNS, "prober-"+n, n, map[string]string{"role": "prober"}, "pause"))
	}
	for _, ns := range []string{npNS, npRulesNS, npEnfNS} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.t.Fatalf("netpol: namespace %s: %v", ns, err)
		}
	}
	for _, p := range pods {
		if _, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.t.Fatalf("netpol: pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
	ip := map[string]string{}
	for _, ns := range []string{npNS, npRulesNS, npEnfNS} {
		if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "-l", npLabel, "--timeout=180s"); err != nil {
			b.t.Fatalf("netpol: pods of %s not Ready: %v\n%s", ns, err, out)
		}
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			b.t.Fatal(err)
		}
		for _, p := range list.Items {
			if p.Status.PodIP == "" {
				b.t.Fatalf("netpol: pod %s/%s has no address", ns, p.Name)
			}
			ip[p.Name] = p.Status.PodIP
		}
	}
	return ip
}

// npChecks makes sure that what is measured is what it claims: the
// server's node has it under the allowing policy, both clients get
// through, and a pod of another namespace (not allowed) does not.
func (b *bench) npChecks(ctx context.Context, l *lab.Lab, res *npResult, nodes []string, self, server string) {
	deadline := time.Now().Add(time.Minute)
	for {
		ep, err := npEndpointPolicy(ctx, l, nodes[1], npNS, "server")
		if err == nil && ep.Programmed && ep.Ingress.Isolated && ep.Egress.Isolated && slices.Contains(ep.Ingress.Policies, npNS+"/allow-bench") {
			break
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("netpol: the server is not under allow-bench after a minute: %+v %v", ep, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, pr := range res.pairs {
		if _, err := connectRunIn(l, npNS, pr.client, []string{self}, []string{server}, 10, roundtripEnv+"=1"); err != nil {
			b.t.Fatalf("netpol: %s does not reach the server under allow-bench: %v", pr.client, err)
		}
	}
	deadline = time.Now().Add(time.Minute)
	for {
		_, err := connectRunIn(l, npEnfNS, "prober-"+nodes[0], []string{self}, []string{server}, 1)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("netpol: a pod of %s still reaches the server after a minute: allow-bench is not enforced", npEnfNS)
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.checks = append(res.checks, "ok: netpol: the server's node has it isolated both ways under allow-bench; both clients reach it, and a pod of another namespace is refused")
}

func npEndpointPolicy(ctx context.Context, l *lab.Lab, node, ns, pod string) (*api.EndpointPolicy, error) {
	n, ok := l.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %s", node)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return api.NewClient(n.Socket).EndpointPolicy(cctx, ns, pod)
}

// npWaitRules waits until every node's anetd reports its rules pod
// programmed with all count ingress rules.
func (b *bench) npWaitRules(ctx context.Context, l *lab.Lab, nodes []string, count int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		for {
			ep, err := npEndpointPolicy(ctx, l, n, npRulesNS, "rules-"+n)
			got := -1
			if err == nil {
				got = len(ep.Ingress.Rules)
				// No rules left: the pod is not isolated any more.
				if (ep.Programmed && got == count) || (count == 0 && !ep.Ingress.Isolated) {
					break
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d rules: %s holds %d rules for rules-%s after %s (%v)", count, n, got, n, timeout, err)
			}
			time.Sleep(pollEvery)
		}
	}
	return nil
}

// watchEvent is one watch helper's report, from the prober of a node.
type watchEvent struct {
	node, verdict string
	at, prev      time.Time
}

// verdicts keeps the probers' reports, by node.
type verdicts struct {
	seen map[string][]watchEvent
}

func newVerdicts() *verdicts { return &verdicts{seen: map[string][]watchEvent{}} }

func (v *verdicts) see(ev watchEvent) { v.seen[ev.node] = append(v.seen[ev.node], ev) }

// last is each node's latest report.
func (v *verdicts) last() map[string]string {
	out := map[string]string{}
	for n, evs := range v.seen {
		out[n] = evs[len(evs)-1].verdict
	}
	return out
}

// all tells whether every node's prober has reported want: with since
// zero, as its latest report; else at a probe after since (the first such
// report counts, whatever came after it). Then the time from since to it
// per node, and the largest gap between such a probe and the probe
// before it (the resolution).
func (v *verdicts) all(nodes []string, want string, since time.Time) (bool, map[string]time.Duration, time.Duration) {
	per := map[string]time.Duration{}
	var step time.Duration
	for _, n := range nodes {
		evs := v.seen[n]
		var got *watchEvent
		if since.IsZero() {
			if len(evs) > 0 && evs[len(evs)-1].verdict == want {
				got = &evs[len(evs)-1]
			}
		} else {
			for k := range evs {
				if evs[k].verdict == want && evs[k].at.After(since) {
					got = &evs[k]
					break
				}
			}
		}
		if got == nil {
			return false, nil, 0
		}
		if !since.IsZero() {
			per[n] = got.at.Sub(since)
		}
		step = max(step, got.at.Sub(got.prev))
	}
	return true, per, step
}

// maxOf is the largest of a map's durations.
func maxOf(m map[string]time.Duration) time.Duration {
	var d time.Duration
	for _, x := range m {
		d = max(d, x)
	}
	return d
}

// npEnforcement times the enforcement of cfg.policies policies.
func (b *bench) npEnforcement(ctx context.Context, l *lab.Lab, cs *kubernetes.Clientset, nodes []string, ip map[string]string, self string, rules int) *npEnforce {
	cfg := b.cfg.np
	e := &npEnforce{rules: rules, perNode: map[string][]time.Duration{}, timeoutMS: cfg.timeout}
	events := make(chan watchEvent, 64)
	done := make(chan struct{})
	defer close(done)
	var probers []*proc
	// The probers end with the phase: they would load the rate runs.
	defer func() {
		for _, p := range probers {
			p.stop()
		}
	}()
	// Prober of node i probes the target of node i+1: the target's node
	// judges the ingress; the report keys by that node.
	target := map[string]string{}
	for i, n := range nodes {
		t := nodes[(i+1)%len(nodes)]
		target[n] = t
		lines := make(chan string, 16)
		pr, err := b.podHelper(ctx, l, npEnfNS, "prober-"+n, []string{self},
			[]string{helperEnv + "=watch", targetsEnv + "=" + ip["target-"+t] + ":" + strconv.Itoa(npEnfPort), timeoutEnv + "=" + strconv.Itoa(cfg.timeout)}, lines)
		if err != nil {
			b.t.Fatalf("netpol: prober on %s: %v", n, err)
		}
		probers = append(probers, pr)
		go func() {
			for line := range lines {
				v, at, prev, err := parseWatchLine(line)
				if err != nil {
					b.logf("netpol: %v", err)
					continue
				}
				select {
				case events <- watchEvent{node: t, verdict: v, at: at, prev: prev}:
				case <-done:
				}
			}
		}()
	}
	targets := make([]string, 0, len(nodes))
	for _, n := range nodes {
		targets = append(targets, target[n])
	}
	v := newVerdicts()
	wait := func(want string, since time.Time, limit time.Duration) (map[string]time.Duration, time.Duration, error) {
		timer := time.NewTimer(limit)
		defer timer.Stop()
		for {
			if ok, per, step := v.all(targets, want, since); ok {
				return per, step, nil
			}
			select {
			case ev := <-events:
				v.see(ev)
			case <-timer.C:
				return nil, 0, fmt.Errorf("not every prober %s after %s (latest: %v)", want, limit, v.last())
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
	}
	if _, _, err := wait("denied", time.Time{}, time.Minute); err != nil {
		e.failures = append(e.failures, "before the first policy: "+err.Error())
		return e
	}
	b.logf("netpol: enforcement with %d rules: every prober refused under deny-targets; timing %d policies", rules, cfg.policies)
	for i := range cfg.policies {
		if ok, _, _ := v.all(targets, "denied", time.Time{}); !ok {
			e.failures = append(e.failures, fmt.Sprintf("policy %d: not every prober refused before it (latest: %v)", i, v.last()))
			break
		}
		t0 := time.Now()
		b.npCreate(ctx, cs, enforcePolicy(i))
		per, step, err := wait("allowed", t0, cfg.wait)
		if err != nil {
			e.failures = append(e.failures, fmt.Sprintf("policy %d: %v", i, err))
			break
		}
		e.applied = append(e.applied, maxOf(per))
		e.steps = append(e.steps, step)
		for n, d := range per {
			e.perNode[n] = append(e.perNode[n], d)
		}
		t1 := time.Now()
		if err := cs.NetworkingV1().NetworkPolicies(npEnfNS).Delete(ctx, enforcePolicy(i).Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			b.t.Fatalf("netpol: deleting policy %d: %v", i, err)
		}
		per, _, err = wait("denied", t1, cfg.wait)
		if err != nil {
			e.failures = append(e.failures, fmt.Sprintf("policy %d deleted: %v", i, err))
			break
		}
		e.removed = append(e.removed, maxOf(per))
		if (i+1)%10 == 0 {
			b.logf("netpol: enforcement with %d rules: %d policies; p50 %s to every node", rules, i+1, time.Duration(stats.Median(stats.Millis(e.applied))*float64(time.Millisecond)).Round(time.Millisecond))
		}
	}
	e.load = loadAvg()
	return e
}
