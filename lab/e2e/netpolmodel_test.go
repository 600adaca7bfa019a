//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anet-dev/anet/internal/netpolmodel"
	"github.com/anet-dev/anet/lab"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestUpstreamNetpolModel runs every non-SCTP case of upstream
// Kubernetes' NetworkPolicy e2e suite (internal/netpolmodel, the same
// cases daemon/policy runs on the compiled state) in the lab: namespaces
// x, y and z, pods a, b and c in each spread over the three nodes, each
// serving TCP and UDP on 80 and 81 from two containers with named ports,
// a ClusterIP Service per pod. Each Validate probes all 72 pairs (every
// pod to every other pod's Service) from inside the pods, all at once,
// until the matrix is the expected one (policy takes a moment to reach
// every node) and then once more, which must agree. Between cases the
// policies go and the labels come back, and the matrix must be all open
// again before the next case starts, so that no case is judged on what
// the one before left.
func TestUpstreamNetpolModel(t *testing.T) {
	start := time.Now()
	l := lab.SharedLab(t)
	ts, err := l.Testserver()
	if err != nil {
		t.Fatal(err)
	}
	c := &labCluster{l: l, testserver: ts, ip: map[string]netip.Addr{}, vip: map[string]string{},
		labels: map[string]map[string]string{}, nsLabels: map[string][]string{}}
	c.t = t
	c.setUp()
	t.Logf("model up (%d pods over 3 nodes, %d Services) in %v", len(netpolmodel.Pods()), len(netpolmodel.Pods()), time.Since(start).Round(time.Millisecond))
	for _, tc := range netpolmodel.All() {
		t.Run(tc.Name, func(t *testing.T) {
			caseStart := time.Now()
			c.t = t
			t.Cleanup(func() { c.t = t; c.reset() })
			c.Validate(80, corev1.ProtocolTCP, netpolmodel.NewReachability(true))
			c.validates = 0
			tc.Run(c)
			t.Logf("%d matrices right in %v", c.validates, time.Since(caseStart).Round(time.Millisecond))
		})
	}
	t.Logf("TestUpstreamNetpolModel took %v", time.Since(start).Round(time.Millisecond))
}

// labCluster is netpolmodel.Cluster on the shared lab.
type labCluster struct {
	t          *testing.T
	l          *lab.Lab
	testserver string
	ip         map[string]netip.Addr // "ns/name": its pod address
	vip        map[string]string     // "ns/name": its Service's ClusterIP
	labels     map[string]map[string]string
	nsLabels   map[string][]string // labels the case added, by namespace
	validates  int
}

// setUp creates the model (namespaces, pods, Services) and waits for the
// pods to be Ready. The namespaces go at the end of the test.
func (c *labCluster) setUp() {
	t := c.t
	var docs []any
	for _, ns := range netpolmodel.Namespaces {
		docs = append(docs, &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: netpolmodel.NamespaceLabels(ns)}})
	}
	grace := int64(1)
	i := 0
	for _, ns := range netpolmodel.Namespaces {
		for _, name := range netpolmodel.PodNames {
			readiness := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
			containers := netpolmodel.Containers("anet-testserver:latest", func(port int32) []string {
				http := ""
				if port == netpolmodel.Ports[0] {
					http = ":8080"
				}
				addr := fmt.Sprintf(":%d", port)
				return []string{"/anet-testserver", "serve", "--http", http, "--tcp-echo", addr, "--udp-echo", addr}
			}, readiness)
			docs = append(docs, &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: netpolmodel.PodLabels(name)},
				Spec: corev1.PodSpec{NodeName: lab.NodeName(1 + i%3), TerminationGracePeriodSeconds: &grace,
					Containers: containers}},
				netpolmodel.Service(ns, name))
			c.labels[ns+"/"+name] = netpolmodel.PodLabels(name)
			i++
		}
	}
	var m strings.Builder
	for _, d := range docs {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		m.Write(b)
		m.WriteString("\n---\n")
	}
	t.Cleanup(func() {
		_, _ = c.l.Kubectl(append([]string{"delete", "namespace", "--wait=false"}, netpolmodel.Namespaces...)...)
	})
	if err := c.l.Apply(m.String()); err != nil {
		t.Fatal(err)
	}
	for _, ns := range netpolmodel.Namespaces {
		if out, err := c.l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "--all", "--timeout=180s"); err != nil {
			t.Fatalf("pods of %s not ready: %v: %s", ns, err, out)
		}
	}
	for _, pod := range netpolmodel.Pods() {
		ns, name, _ := strings.Cut(pod, "/")
		out, err := c.l.Kubectl("get", "pod", "-n", ns, name, "-o", "jsonpath={.status.podIP}")
		if err != nil {
			t.Fatalf("pod %s: %v: %s", pod, err, out)
		}
		a, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("pod %s address %q: %v", pod, out, err)
		}
		c.ip[pod] = a
		out, err = c.l.Kubectl("get", "service", "-n", ns, netpolmodel.Service(ns, name).Name, "-o", "jsonpath={.spec.clusterIP}")
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("service of %s: %v: %q", pod, err, out)
		}
		c.vip[pod] = strings.TrimSpace(out)
	}
}

// reset deletes the policies and puts the labels back as setUp made them.
func (c *labCluster) reset() {
	c.DeleteAllPolicies()
	for ns, keys := range c.nsLabels {
		args := []string{"label", "namespace", ns}
		for _, k := range keys {
			args = append(args, k+"-")
		}
		if out, err := c.l.Kubectl(args...); err != nil {
			c.t.Errorf("resetting the labels of namespace %s: %v: %s", ns, err, out)
		}
	}
	c.nsLabels = map[string][]string{}
	for _, pod := range netpolmodel.Pods() {
		_, name, _ := strings.Cut(pod, "/")
		if want := netpolmodel.PodLabels(name); !maps.Equal(c.labels[pod], want) {
			c.SetPodLabels(pod, want)
		}
	}
}

func (c *labCluster) apply(ns string, p *networkingv1.NetworkPolicy) {
	c.t.Helper()
	p = p.DeepCopy()
	p.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
	p.Namespace = ns
	b, err := json.Marshal(p)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.l.Apply(string(b)); err != nil {
		c.t.Fatalf("applying %s/%s: %v", ns, p.Name, err)
	}
}

func (c *labCluster) Create(ns string, p *networkingv1.NetworkPolicy) { c.t.Helper(); c.apply(ns, p) }
func (c *labCluster) Update(ns string, p *networkingv1.NetworkPolicy) { c.t.Helper(); c.apply(ns, p) }

func (c *labCluster) DeleteAllPolicies() {
	c.t.Helper()
	for _, ns := range netpolmodel.Namespaces {
		if out, err := c.l.Kubectl("delete", "networkpolicy", "-n", ns, "--all"); err != nil {
			c.t.Fatalf("deleting the policies of %s: %v: %s", ns, err, out)
		}
	}
}

func (c *labCluster) AddNamespaceLabel(ns, key, value string) {
	c.t.Helper()
	if out, err := c.l.Kubectl("label", "namespace", ns, "--overwrite", key+"="+value); err != nil {
		c.t.Fatalf("labelling namespace %s: %v: %s", ns, err, out)
	}
	c.nsLabels[ns] = append(c.nsLabels[ns], key)
}

func (c *labCluster) SetPodLabels(pod string, labels map[string]string) {
	c.t.Helper()
	ns, name, _ := strings.Cut(pod, "/")
	args := []string{"label", "pod", "-n", ns, name, "--overwrite"}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		args = append(args, k+"="+labels[k])
	}
	for k := range c.labels[pod] {
		if _, ok := labels[k]; !ok {
			args = append(args, k+"-")
		}
	}
	if out, err := c.l.Kubectl(args...); err != nil {
		c.t.Fatalf("labelling pod %s: %v: %s", pod, err, out)
	}
	c.labels[pod] = maps.Clone(labels)
}

func (c *labCluster) IP(pod string) netip.Addr { return c.ip[pod] }

// probeTimeout is each probe's timeout: a denied connection is dropped,
// so a round of probes with a denial in it takes this long.
const probeTimeout = "1s"

// round probes every pair once, all source pods at the same time, each
// with one probe process for all its destinations: reached[from][to].
func (c *labCluster) round(port int32, proto corev1.Protocol) (map[[2]string]bool, error) {
	pods := netpolmodel.Pods()
	reached := map[[2]string]bool{}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, from := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns, name, _ := strings.Cut(from, "/")
			args := []string{c.testserver, "probe", "--protocol", strings.ToLower(string(proto)), "--timeout", probeTimeout}
			byAddr := map[string]string{}
			for _, to := range pods {
				if to != from {
					a := fmt.Sprintf("%s:%d", c.vip[to], port)
					args = append(args, a)
					byAddr[a] = to
				}
			}
			out, err := c.l.Exec(ns, name, args...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("probing from %s: %v: %s", from, err, out))
				return
			}
			n := 0
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 || byAddr[f[0]] == "" {
					errs = append(errs, fmt.Errorf("probing from %s: line %q", from, line))
					return
				}
				reached[[2]string{from, byAddr[f[0]]}] = f[1] == "ok"
				n++
			}
			if n != len(byAddr) {
				errs = append(errs, fmt.Errorf("probing from %s: %d verdicts for %d addresses: %s", from, n, len(byAddr), out))
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return reached, nil
}

// Validate probes until the matrix is r (30 s at most), then once more.
func (c *labCluster) Validate(port int32, proto corev1.Protocol, r *netpolmodel.Reachability) {
	c.t.Helper()
	start := time.Now()
	what := fmt.Sprintf("%s/%d", proto, port)
	converged, rounds := convergeThenConfirm(c.t, what, func() ([]string, string) {
		reached, err := c.round(port, proto)
		if err != nil {
			c.t.Fatal(err)
		}
		wrong, table := r.Compare(func(from, to string) bool { return reached[[2]string{from, to}] })
		return wrong, fmt.Sprintf("%v of %d pairs\nobserved (* = unexpected):\n%s", wrong, netpolmodel.Pairs(), table)
	})
	c.validates++
	c.t.Logf("%s: %d pairs right after %v, %d rounds (confirmed in %v)", what, netpolmodel.Pairs(),
		converged.Round(time.Millisecond), rounds, time.Since(start).Round(time.Millisecond))
}
