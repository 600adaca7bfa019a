//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab"
	"github.com/anet-dev/anet/lab/controlplane"
)

// The services section: anet's kube-proxy replacement against the real
// kube-proxy in iptables and nftables modes, on one 3-node lab. Each node
// has one proxy: node1 anet's own (anetd's socket hooks), node2 kube-proxy
// in iptables mode and node3 in nftables mode, both beside an anetd started
// with --enable-services=false (anet then hands Service traffic to the
// host's netfilter, ANET_HOST_NAT in bpf/lxc.c). The three proxies serve the
// same Services, made through the API: selectorless Services, each with an
// EndpointSlice of its own pointing at the real backend pods of one node,
// so that a node's client reaches only local backends. For each count of
// Services, made fresh, the section times how long each proxy takes to
// serve them all, then the latency of a connect() from a client pod to a
// sample of their ClusterIPs and, the limit, to the backends' pod
// addresses, client and servers on one CPU; then anetd's and kube-proxy's
// resident memory.

const (
	svcNS        = "svcbench"
	svcLabel     = "anet-bench-svc"
	svcPort      = 80
	svcTarget    = 9000
	svcManagedBy = "anet-bench"
)

// svcConfig is the section's part of the command line.
type svcConfig struct {
	counts   string // numbers of Services, comma-separated
	connects int    // timed connects per run
	reps     int    // runs per setup and count
	probes   int    // Services whose ClusterIPs a client connects to
	backends int    // endpoints per Service (backend pods per node)
	workers  int    // API writers in flight
	timeout  time.Duration
}

func (c *svcConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.counts, "svc-counts", "100,1000,10000", "numbers of Services in the services section, comma-separated")
	fs.IntVar(&c.connects, "svc-connects", 1000, "timed connects per run in the services section")
	fs.IntVar(&c.reps, "svc-reps", 10, "runs per setup and number of Services")
	fs.IntVar(&c.probes, "svc-probes", 20, "Services (of each node's share) whose ClusterIPs the client connects to")
	fs.IntVar(&c.backends, "svc-backends", 5, "endpoints per Service (backend pods per node)")
	fs.IntVar(&c.workers, "svc-workers", 32, "API requests in flight when making and deleting the Services")
	fs.DurationVar(&c.timeout, "svc-timeout", 10*time.Minute, "how long a proxy may take to serve (or drop) every Service")
}

// quick is -quick: 100 and 1 000 Services, 2 runs of 500 connects.
func (c *svcConfig) quick() {
	c.counts, c.connects, c.reps = "100,1000", 500, 2
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 30000 {
			return nil, fmt.Errorf("-svc-counts %q: want numbers from 1 to 30000", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// svcNode is one node of the lab and the proxy that serves its pods.
type svcNode struct {
	proxy    string // "anet", "iptables" or "nftables"
	node     string
	client   string   // the client pod, through the proxy
	direct   string   // the client pod of the direct connects (see svcPods)
	backends []string // backend pod names
	ips      []string // their addresses
}

// Latency setups: each proxy through a ClusterIP, and a direct connect to
// the backends from the same client (key "direct/<node>").
func directKey(node string) string { return "direct/" + node }

// svcPoint is what was measured with n Services.
type svcPoint struct {
	n        int
	create   time.Duration            // from the first create to the last answered
	served   map[string]time.Duration // proxy -> from the first create to every Service served (0: never)
	step     map[string]time.Duration // proxy -> time between the poll that saw it served and the one before
	dropped  map[string]time.Duration // proxy -> from the first delete to none left (0: not measured)
	dumped   map[string]time.Duration // kube-proxy mode -> from the first create to a dump of its rules holding them all
	lat      map[string][]time.Duration
	runs     map[string][]float64 // setup -> p50 of each run, µs
	rss      map[string]int64     // component -> VmRSS, KiB
	probed   int                  // Services probed per proxy
	failures []string
}

type svcResult struct {
	cfg       svcConfig
	cpu       string
	nodes     []*svcNode
	points    []*svcPoint
	plots     []string
	plotErr   error
	up, down  time.Duration
	checks    []string
	loadAvgs  []string // load average at each count, after the latency runs
	kpVersion string   // kube-proxy's, scripts/k8s/VERSION
	began     string   // when the section started (UTC) and the load average then
	loadStart string
}

// benchServices runs the section.
func (b *bench) benchServices(ctx context.Context) *svcResult {
	cfg := b.cfg.svc
	counts, err := parseCounts(cfg.counts)
	if err != nil {
		b.t.Fatal(err)
	}
	res := &svcResult{cfg: cfg, cpu: b.cfg.cpu, kpVersion: "(version unknown)",
		began: time.Now().UTC().Format("2006-01-02 15:04 MST"), loadStart: loadAvg()}
	if v, err := os.ReadFile("scripts/k8s/VERSION"); err == nil {
		res.kpVersion = strings.TrimSpace(string(v))
	}
	self, err := os.Executable()
	if err != nil {
		b.t.Fatal(err)
	}
	nodes := []*svcNode{{proxy: "anet", node: lab.NodeName(1)}, {proxy: "iptables", node: lab.NodeName(2)}, {proxy: "nftables", node: lab.NodeName(3)}}
	res.nodes = nodes
	b.logf("services: bringing up a 3-node lab (node1 anet; node2, node3 anetd --enable-services=false)")
	sl := b.upSectionLab(ctx, "services", "s", lab.Options{
		Nodes:     3,
		AnetdArgs: map[string][]string{nodes[1].node: {"--enable-services=false"}, nodes[2].node: {"--enable-services=false"}},
	})
	l := sl.Lab
	res.up = sl.up
	for _, n := range nodes[1:] {
		b.logf("services: kube-proxy %s mode on %s", n.proxy, n.node)
		if err := l.StartKubeProxy(n.node, n.proxy); err != nil {
			b.t.Fatalf("services: %v", err)
		}
	}

	cs := b.svcClientset(l)
	b.svcPods(ctx, l, cs, nodes, cfg.backends)
	for _, n := range nodes {
		for _, be := range n.backends {
			b.svcServer(ctx, l, self, be)
		}
	}
	// Each client reaches its node's backends directly before anything else.
	for _, n := range nodes {
		if _, err := b.connectRun(l, self, n.direct, targets(n.ips, svcTarget), 20); err != nil {
			b.t.Fatalf("services: %s: direct connect to the backends: %v", n.node, err)
		}
	}
	res.checks = append(res.checks, "ok: services: every node's client connects to its node's backends directly")

	kp := map[string]*svcNode{}
	for _, n := range nodes[1:] {
		kp[n.proxy] = n
	}
	counters := map[string]func(context.Context) (int, int, error){
		"anet":     func(ctx context.Context) (int, int, error) { return anetCount(ctx, l, nodes[0].node) },
		"iptables": func(ctx context.Context) (int, int, error) { return iptablesCount(ctx, l, kp["iptables"].node) },
		"nftables": func(ctx context.Context) (int, int, error) { return nftCount(ctx, l, kp["nftables"].node) },
	}
	for i, count := range counts {
		if ctx.Err() != nil {
			b.t.Fatal(ctx.Err())
		}
		p := &svcPoint{n: count, served: map[string]time.Duration{}, step: map[string]time.Duration{}, dropped: map[string]time.Duration{}, dumped: map[string]time.Duration{},
			lat: map[string][]time.Duration{}, runs: map[string][]float64{}, rss: map[string]int64{}}
		res.points = append(res.points, p)
		b.logf("services: %d Services with %d endpoints each: creating", count, cfg.backends)
		clusterIPs := b.svcCreate(ctx, l, cs, count, nodes, p, counters)

		// The sample: probes Services of each node's share, spread over it.
		share := map[string][]string{}
		for j, n := range nodes {
			var mine []string
			for k := j; k < len(clusterIPs); k += len(nodes) {
				mine = append(mine, clusterIPs[k])
			}
			var sample []string
			step := max(1, len(mine)/cfg.probes)
			for k := 0; k < len(mine) && len(sample) < cfg.probes; k += step {
				sample = append(sample, mine[k])
			}
			share[n.proxy] = targets(sample, svcPort)
			p.probed = len(sample)
		}
		// The runs: on anet's node one client alternates connects to a
		// ClusterIP and to a backend (paired samples; no conntrack there
		// to trip over), on the kube-proxy nodes the direct connects come
		// from a pod of their own (see svcPods). They rotate run by run.
		type run struct {
			name  string
			pod   string
			to    []string
			setup []string // of each target
			n     int
		}
		var runs []run
		var setups []string
		for _, x := range nodes {
			be := targets(x.ips, svcTarget)
			setups = append(setups, x.proxy, directKey(x.node))
			if x.proxy == "anet" {
				r := run{name: x.proxy + " + " + directKey(x.node), pod: x.client, n: 2 * cfg.connects}
				for k, fe := range share[x.proxy] {
					r.to = append(r.to, fe, be[k%len(be)])
					r.setup = append(r.setup, x.proxy, directKey(x.node))
				}
				runs = append(runs, r)
				continue
			}
			runs = append(runs, run{name: x.proxy, pod: x.client, to: share[x.proxy], setup: repeat(x.proxy, len(share[x.proxy])), n: cfg.connects},
				run{name: directKey(x.node), pod: x.direct, to: be, setup: repeat(directKey(x.node), len(be)), n: cfg.connects})
		}
		for rep := range cfg.reps {
			for k := range runs {
				r := runs[(k+rep)%len(runs)]
				per, err := b.connectRun(l, self, r.pod, r.to, r.n)
				if err != nil {
					p.failures = append(p.failures, fmt.Sprintf("%s, %d Services, run %d: %v", r.name, p.n, rep+1, err))
					b.logf("services: %s: %v", r.name, err)
					continue
				}
				got := map[string][]time.Duration{}
				for t, ds := range per {
					got[r.setup[t]] = append(got[r.setup[t]], ds...)
				}
				for s, ds := range got {
					p.lat[s] = append(p.lat[s], ds...)
					p.runs[s] = append(p.runs[s], stats.Median(micros(ds)))
				}
			}
		}
		for _, s := range setups {
			us := micros(p.lat[s])
			b.logf("services: %d Services: %s: p50 %.1f µs, p99 %.1f µs (%d connects)", count, s, stats.Median(us), stats.Percentile(us, 99), len(us))
		}
		for _, c := range []string{nodes[0].node + "/anetd", nodes[1].node + "/anetd", nodes[1].node + "/kube-proxy", nodes[2].node + "/kube-proxy"} {
			if pr, ok := l.Component(c); ok {
				if kb, err := vmRSS(pr.PID); err == nil {
					p.rss[c] = kb
				}
			}
		}
		res.loadAvgs = append(res.loadAvgs, loadAvg())
		if i < len(counts)-1 {
			b.svcDelete(ctx, cs, p, counters)
		}
	}

	for _, p := range res.points {
		if len(p.failures) > 0 {
			for _, f := range p.failures {
				res.checks = append(res.checks, "FAIL: services: "+f)
			}
		} else {
			res.checks = append(res.checks, fmt.Sprintf("ok: services: %d Services: every proxy served all of them (%d endpoints each), and every connect of every run succeeded", p.n, cfg.backends))
		}
	}
	b.stopAll() // the servers, before their pods go
	sl.Down()
	res.down = sl.down
	b.logf("services: lab down in %s", res.down.Round(100*time.Millisecond))
	res.plots, res.plotErr = writeSvcPlots(filepath.Dir(b.cfg.out), res)
	if res.plotErr != nil {
		res.checks = append(res.checks, "FAIL: services: plots: "+res.plotErr.Error())
	}
	return res
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func targets(ips []string, port int) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = fmt.Sprintf("%s:%d", ip, port)
	}
	return out
}

func micros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	return out
}

// svcClientset is labClientset, fatal on error.
func (b *bench) svcClientset(l *lab.Lab) *kubernetes.Clientset {
	cs, err := labClientset(l)
	if err != nil {
		b.t.Fatalf("services: %v", err)
	}
	return cs
}

// svcPods makes the namespace and, on each node, a client pod and the
// backend pods (anet-testserver pausing: the bench's own server runs in
// them), and waits for their addresses.
func (b *bench) svcPods(ctx context.Context, l *lab.Lab, cs *kubernetes.Clientset, nodes []*svcNode, backends int) {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNS}}, metav1.CreateOptions{}); err != nil {
		b.t.Fatalf("services: namespace: %v", err)
	}
	grace := int64(1)
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: svcNS, Labels: map[string]string{svcLabel: "pod"}},
			Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: &grace,
				Containers: []corev1.Container{{Name: "c", Image: "anet-testserver:latest", ImagePullPolicy: corev1.PullNever, Args: []string{"pause"}}}},
		}
	}
	for _, n := range nodes {
		// The direct connects come from a pod of their own: a connection
		// from the proxy's client to a backend could reuse the source port
		// of an earlier one through a ClusterIP whose conntrack entry
		// (CLOSE, 10 s) netfilter still holds. anet, beside a kube-proxy,
		// used to hand such a reply to the host stack, which
		// reverse-translated it and the connect failed (found here); it
		// now counts only live entries (bpf/lxc.c, netfilter_translated),
		// and the separate pod keeps the direct samples clear of
		// netfilter's table all the same.
		n.client, n.direct = "client-"+n.node, "direct-"+n.node
		pods := []*corev1.Pod{pod(n.client, n.node), pod(n.direct, n.node)}
		n.backends = nil
		for i := range backends {
			be := fmt.Sprintf("backend-%s-%d", n.node, i)
			n.backends = append(n.backends, be)
			pods = append(pods, pod(be, n.node))
		}
		for _, p := range pods {
			if _, err := cs.CoreV1().Pods(svcNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				b.t.Fatalf("services: pod %s: %v", p.Name, err)
			}
		}
	}
	if out, err := l.Kubectl("wait", "-n", svcNS, "--for=condition=Ready", "pod", "-l", svcLabel, "--timeout=180s"); err != nil {
		b.t.Fatalf("services: pods not Ready: %v\n%s", err, out)
	}
	list, err := cs.CoreV1().Pods(svcNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.t.Fatal(err)
	}
	ip := map[string]string{}
	for _, p := range list.Items {
		ip[p.Name] = p.Status.PodIP
	}
	for _, n := range nodes {
		n.ips = nil
		for _, be := range n.backends {
			if ip[be] == "" {
				b.t.Fatalf("services: pod %s has no address", be)
			}
			n.ips = append(n.ips, ip[be])
		}
	}
}

// svcServer runs the accept helper in a backend pod, on the clients' CPU;
// stopAll ends it.
func (b *bench) svcServer(ctx context.Context, l *lab.Lab, self, pod string) {
	if _, err := b.podHelper(ctx, l, svcNS, pod, append(pinned(b.cfg.cpu), self),
		[]string{helperEnv + "=accept", fmt.Sprintf("%s=:%d", listenEnv, svcTarget)}, nil); err != nil {
		b.t.Fatalf("services: server in %s: %v", pod, err)
	}
}

// connectRun runs the connect helper in a client pod (its netns and
// cgroup, on the benchmark's CPU) and returns the time of each connect,
// by target.
func (b *bench) connectRun(l *lab.Lab, self, pod string, to []string, n int) ([][]time.Duration, error) {
	return connectRunIn(l, svcNS, pod, append(pinned(b.cfg.cpu), self), to, n)
}

// connectRunIn runs the connect helper (argv: the bench's binary, and
// what runs it) in a pod of ns, with env added, and returns the time of
// each connect, by target.
func connectRunIn(l *lab.Lab, ns, pod string, argv, to []string, n int, env ...string) ([][]time.Duration, error) {
	out, err := runHelper(l, ns, pod, argv, append([]string{helperEnv + "=connect", targetsEnv + "=" + strings.Join(to, ","), connectsEnv + "=" + strconv.Itoa(n)}, env...))
	if err != nil {
		return nil, err
	}
	var got [][]int64
	if err := json.Unmarshal(out, &got); err != nil {
		return nil, fmt.Errorf("connect helper's output: %w", err)
	}
	if len(got) != len(to) {
		return nil, fmt.Errorf("connect helper timed %d targets, want %d", len(got), len(to))
	}
	per := make([][]time.Duration, len(got))
	total := 0
	for t, v := range got {
		for _, x := range v {
			per[t] = append(per[t], time.Duration(x))
		}
		total += len(v)
	}
	if total != n {
		return nil, fmt.Errorf("connect helper timed %d connects, want %d", total, n)
	}
	return per, nil
}

func svcName(i int) string { return fmt.Sprintf("s-%05d", i) }

// pinned runs a helper on one CPU, SCHED_FIFO: the machine's other jobs
// (the lab's own, and whatever else shares it) then delay a connect only
// when they hold the CPU in the kernel, which keeps the p99 from
// measuring them (measured: a busy loop on the CPU moved the p99 of a
// bare veth connect from 20 µs to over 200 µs at SCHED_OTHER, not at
// FIFO). Client and servers share the priority, so a server woken by a
// connection runs when the client blocks, not in the middle of its
// connect().
func pinned(cpu string) []string {
	return []string{"chrt", "--fifo", "10", "taskset", "-c", cpu}
}

// svcCreate makes n Services, the i-th with one EndpointSlice of the
// backends of node i mod 3, with cfg.workers requests in flight, while
// every proxy's counter is polled; it fills p.create, p.served and p.step
// and returns the ClusterIPs in order.
func (b *bench) svcCreate(ctx context.Context, l *lab.Lab, cs *kubernetes.Clientset, n int, nodes []*svcNode, p *svcPoint,
	counters map[string]func(context.Context) (int, int, error)) []string {
	cfg := b.cfg.svc
	ips := make([]string, n)
	// kube-proxy counts each EndpointSlice change it has programmed (its
	// network programming latency histogram, observed once the rules are
	// written): a cheap and exact signal, where a dump of the rules takes
	// tens of seconds with 10 000 Services. The dumps confirm it after.
	programmed := map[string]func(context.Context) (int, int, error){"anet": counters["anet"]}
	for _, nd := range nodes {
		if nd.proxy == "anet" {
			continue
		}
		base, err := kpProgrammed(ctx, l, nd.node)
		if err != nil {
			b.t.Fatalf("services: kube-proxy's metrics on %s: %v", nd.node, err)
		}
		programmed[nd.proxy] = func(ctx context.Context) (int, int, error) {
			c, err := kpProgrammed(ctx, l, nd.node)
			d := int(c - base)
			return d, d * cfg.backends, err
		}
	}
	t0 := time.Now()
	err := forEach(ctx, n, cfg.workers, func(i int) error {
		nd := nodes[i%len(nodes)]
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: svcName(i), Namespace: svcNS, Labels: map[string]string{svcLabel: "svc"}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{
				Protocol: corev1.ProtocolTCP, Port: svcPort, TargetPort: intstr.FromInt32(svcTarget)}}},
		}
		got, err := cs.CoreV1().Services(svcNS).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("service %s: %w", svc.Name, err)
		}
		ips[i] = got.Spec.ClusterIP
		ready, proto, port, portName := true, corev1.ProtocolTCP, int32(svcTarget), ""
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-1", Namespace: svcNS, Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: svcManagedBy, svcLabel: "slice"},
				// As the EndpointSlice controller stamps its slices: kube-proxy
				// observes its network programming latency from it.
				Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
		}
		for _, ip := range nd.ips {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &nd.node})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("endpointslice %s: %w", sl.Name, err)
		}
		return nil
	})
	p.create = time.Since(t0)
	if err != nil {
		b.t.Fatalf("services: creating: %v", err)
	}
	b.logf("services: %d Services and EndpointSlices created in %s", n, p.create.Round(10*time.Millisecond))
	// No proxy serves them all before the last exists: polling starts
	// then, and leaves the CPUs to the API server and the proxies until.
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	polled := b.pollAll(pctx, programmed, n, n*cfg.backends, t0)
	for name, r := range b.waitPolls(ctx, polled, cfg.timeout) {
		p.served[name], p.step[name] = r.at, r.step
		b.logf("services: %s serves all %d after %s (poll step %s)", name, n, r.at.Round(10*time.Millisecond), r.step.Round(10*time.Millisecond))
	}
	dumps := map[string]func(context.Context) (int, int, error){}
	for name, c := range counters {
		if name != "anet" {
			dumps[name] = c
		}
	}
	for name, r := range b.waitPolls(ctx, b.pollAll(pctx, dumps, n, n*cfg.backends, t0), cfg.timeout) {
		p.dumped[name] = r.at
		b.logf("services: %s: a dump of its rules shows all %d at %s", name, n, r.at.Round(10*time.Millisecond))
	}
	return ips
}

// svcDelete deletes the section's Services and EndpointSlices and waits
// until no proxy serves any of them.
func (b *bench) svcDelete(ctx context.Context, cs *kubernetes.Clientset, p *svcPoint, counters map[string]func(context.Context) (int, int, error)) {
	cfg := b.cfg.svc
	t0 := time.Now()
	if err := cs.DiscoveryV1().EndpointSlices(svcNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: svcLabel + "=slice"}); err != nil {
		b.t.Fatalf("services: deleting the EndpointSlices: %v", err)
	}
	err := forEach(ctx, p.n, cfg.workers, func(i int) error {
		err := cs.CoreV1().Services(svcNS).Delete(ctx, svcName(i), metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		b.t.Fatalf("services: deleting: %v", err)
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	polled := b.pollAll(pctx, counters, 0, 0, t0)
	for name, r := range b.waitPolls(ctx, polled, cfg.timeout) {
		p.dropped[name] = r.at
	}
	b.logf("services: %d Services deleted; dropped by anet after %s, iptables %s, nftables %s", p.n,
		p.dropped["anet"].Round(10*time.Millisecond), p.dropped["iptables"].Round(10*time.Millisecond), p.dropped["nftables"].Round(10*time.Millisecond))
}

// forEach runs f(0..n-1) with w calls in flight; the first error stops it.
func forEach(ctx context.Context, n, w int, f func(int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// pollResult is when a proxy's counter first showed what was wanted: the
// start of that poll, from t0, and the time since the poll before it (the
// measurement's resolution).
type pollResult struct {
	at, step time.Duration
	err      error
}

// pollAll polls each counter, one poll at a time per proxy, at least
// pollEvery and twice the last poll's duration apart, until it counts wantSvcs Services served with wantEps
// endpoints in all; each proxy's result arrives on its channel.
func (b *bench) pollAll(ctx context.Context, counters map[string]func(context.Context) (int, int, error), wantSvcs, wantEps int, t0 time.Time) map[string]chan pollResult {
	out := map[string]chan pollResult{}
	began := time.Now()
	for name, count := range counters {
		ch := make(chan pollResult, 1)
		out[name] = ch
		go func() {
			prev := began
			var last error
			for {
				start := time.Now()
				s, e, err := count(ctx)
				if ctx.Err() != nil {
					ch <- pollResult{err: fmt.Errorf("%s: last count %d Services, %d endpoints: %w", name, s, e, errors.Join(ctx.Err(), last))}
					return
				}
				last = err
				if err == nil && s == wantSvcs && e == wantEps {
					ch <- pollResult{at: start.Sub(t0), step: start.Sub(prev)}
					return
				}
				prev = start
				// A dump of many rules takes long: at most half the time polling.
				wait := max(pollEvery, 2*time.Since(start))
				select {
				case <-ctx.Done():
				case <-time.After(time.Until(start.Add(wait))):
				}
			}
		}()
	}
	return out
}

const pollEvery = 250 * time.Millisecond

func (b *bench) waitPolls(ctx context.Context, polled map[string]chan pollResult, timeout time.Duration) map[string]pollResult {
	out := map[string]pollResult{}
	deadline := time.After(timeout)
	for name, ch := range polled {
		select {
		case r := <-ch:
			if r.err != nil {
				b.t.Fatalf("services: %v", r.err)
			}
			out[name] = r
		case <-deadline:
			b.t.Fatalf("services: %s not done within %s", name, timeout)
		case <-ctx.Done():
			b.t.Fatal(ctx.Err())
		}
	}
	return out
}

// anetCount counts the section's ClusterIP frontends that node's anetd
// has programmed into its maps, and their active backends.
func anetCount(ctx context.Context, l *lab.Lab, node string) (svcs, eps int, err error) {
	n, ok := l.Node(node)
	if !ok {
		return 0, 0, fmt.Errorf("no node %s", node)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	fs, err := api.NewClient(n.Socket).ListServices(cctx)
	if err != nil {
		return 0, 0, err
	}
	for _, f := range fs {
		if f.Namespace == svcNS && f.Kind == "ClusterIP" && f.Programmed {
			svcs++
			eps += f.Active
		}
	}
	return svcs, eps, nil
}

func nodeOutput(ctx context.Context, l *lab.Lab, node string, argv ...string) (string, error) {
	cmd, err := l.NodeCmd(node, argv...)
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c := exec.CommandContext(cctx, cmd.Path, cmd.Args[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var errb bytes.Buffer
	c.Stderr = &errb
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return string(out), nil
}

// iptablesCount counts, in the node's nat table, the section's Services
// that kube-proxy sends to a KUBE-SVC chain and their KUBE-SEP jumps.
func iptablesCount(ctx context.Context, l *lab.Lab, node string) (int, int, error) {
	out, err := nodeOutput(ctx, l, node, "iptables-save", "-t", "nat")
	if err != nil {
		return 0, 0, err
	}
	s, e := countIptables(out, svcNS)
	return s, e, nil
}

// The KUBE-SERVICES rules name the Service in a comment; the rules of the
// KUBE-SVC chains have none once the node has over 1 000 endpoints
// (kube-proxy's large cluster mode), so they are counted by chain.
func countIptables(save, ns string) (svcs, eps int) {
	tag := `"` + ns + `/`
	lines := strings.Split(save, "\n")
	chains := map[string]bool{}
	for _, line := range lines {
		if !strings.HasPrefix(line, "-A KUBE-SERVICES ") || !strings.Contains(line, tag) {
			continue
		}
		if _, c, ok := strings.Cut(line, " -j KUBE-SVC-"); ok {
			chains[firstField(c)] = true
			svcs++
		}
	}
	for _, line := range lines {
		if rest, ok := strings.CutPrefix(line, "-A KUBE-SVC-"); ok && strings.Contains(line, " -j KUBE-SEP-") {
			if chains[firstField(rest)] {
				eps++
			}
		}
	}
	return svcs, eps
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// nftCount counts, in the node's kube-proxy nftables table, the
// section's Services in the service-ips map and their endpoint jumps.
func nftCount(ctx context.Context, l *lab.Lab, node string) (int, int, error) {
	out, err := nodeOutput(ctx, l, node, "nft", "list", "table", "ip", "kube-proxy")
	if err != nil {
		return 0, 0, err
	}
	s, e := countNft(out, svcNS)
	return s, e, nil
}

func countNft(table, ns string) (svcs, eps int) {
	q := regexp.QuoteMeta(ns)
	svcRE := regexp.MustCompile(`goto service-[A-Z0-9]+-` + q + `/`)
	epRE := regexp.MustCompile(`goto endpoint-[A-Z0-9]+-` + q + `/`)
	return len(svcRE.FindAllStringIndex(table, -1)), len(epRE.FindAllStringIndex(table, -1))
}

// kpProgrammed reads, from a node's kube-proxy metrics, how many
// EndpointSlice changes it has programmed since it started (the count of
// kubeproxy_network_programming_duration_seconds: one observation per
// change stamped with endpoints.kubernetes.io/last-change-trigger-time,
// made once the sync that wrote it has finished).
func kpProgrammed(ctx context.Context, l *lab.Lab, node string) (float64, error) {
	n, ok := l.Node(node)
	if !ok {
		return 0, fmt.Errorf("no node %s", node)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: controlplane.DialIn("/run/netns/" + n.Netns), DisableKeepAlives: true, Proxy: nil}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", n.Address, lab.KubeProxyMetricsPort), nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("kube-proxy metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return promValue(string(body), "kubeproxy_network_programming_duration_seconds_count")
}

// promValue sums a metric's samples (every label set) in Prometheus'
// text format; a metric with no sample yet counts 0.
func promValue(text, name string) (float64, error) {
	sum := 0.0
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			return 0, fmt.Errorf("%s: no value in %q", name, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		sum += v
	}
	return sum, nil
}

// vmRSS is a process's resident set (VmRSS in /proc/PID/status), KiB.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}
