package identity

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/anet-dev/anet/lab/controlplane"
)

// apiServer is a real control plane in a netns of its own, for the CRD
// tests.
type apiServer struct {
	rc   *rest.Config
	dyn  dynamic.Interface
	kube kubernetes.Interface
}

func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, a control plane); CI runs as root")
	}
	bin, err := controlplane.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.Command("nsenter", "--net="+netns.Path(), "--", "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v\n%s", err, out)
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{
		NetnsPath: netns.Path(), Address: "127.0.0.1", Dir: filepath.Join(dir, "cp"), BinDir: bin,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	rc, err := clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Dial = cp.Dial
	rc.Timeout = 20 * time.Second
	rc.QPS, rc.Burst = 1000, 2000
	s := &apiServer{rc: rc}
	if s.dyn, err = dynamic.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	if s.kube, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	return s
}

// newClient is another node's client: its own connections.
func (s *apiServer) newClient(t *testing.T) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(rest.CopyConfig(s.rc))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// syncBuffer is a log buffer safe to read while an allocator writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newAlloc starts an allocator (a node's) that stops when the test ends.
func newAlloc(t *testing.T, s *apiServer, cfg CRDConfig) (*CRD, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	buf := &syncBuffer{}
	cfg.Client = s.newClient(t)
	cfg.Log = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := NewCRD(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("allocator log:\n%s", buf.String())
		}
	})
	return a, buf
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// objectsOf lists the SecurityIdentity objects holding key.
func objectsOf(t *testing.T, s *apiServer, key Key) []string {
	t.Helper()
	l, err := s.dyn.Resource(GVR).List(context.Background(), metav1.ListOptions{LabelSelector: KeyHashLabel + "=" + KeyHash(key)})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range l.Items {
		if k, _, _ := unstructured.NestedString(u.Object, "spec", "key"); k == string(key) {
			names = append(names, u.GetName())
		}
	}
	return names
}

func TestCRD(t *testing.T) {
	s := startAPIServer(t)
	ctx := context.Background()
	for range 2 { // applying is idempotent
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		err := ApplyCRD(actx, s.dyn)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("SpecImmutable", func(t *testing.T) {
		key := KeyOf("imm", nil, map[string]string{"app": "a"})
		u, err := s.dyn.Resource(GVR).Create(ctx, newObject(MaxPod, key), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = s.dyn.Resource(GVR).Delete(ctx, u.GetName(), metav1.DeleteOptions{}) }()
		if err := unstructured.SetNestedField(u.Object, string(KeyOf("imm", nil, nil)), "spec", "key"); err != nil {
			t.Fatal(err)
		}
		_, err = s.dyn.Resource(GVR).Update(ctx, u, metav1.UpdateOptions{})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "immutable") {
			t.Fatalf("changing spec.key: %v, want Invalid (immutable)", err)
		}
	})

	t.Run("Race", func(t *testing.T) {
		// Two nodes allocate the same 200 keys at once, each from 8
		// goroutines in its own order, in a range of 300 numbers (so that
		// they often pick the same free number for different keys).
		cfg := CRDConfig{Min: 1000, Max: 1299}
		a, alog := newAlloc(t, s, cfg)
		b, blog := newAlloc(t, s, cfg)
		var keys []Key
		for i := range 200 {
			keys = append(keys, KeyOf("race", nil, map[string]string{"app": fmt.Sprint("k", i)}))
		}
		got := map[*CRD]map[Key]uint32{a: {}, b: {}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for _, al := range []*CRD{a, b} {
			order := make(chan Key, len(keys))
			for _, i := range rand.Perm(len(keys)) {
				order <- keys[i]
			}
			close(order)
			for range 8 {
				wg.Go(func() {
					for k := range order {
						id, err := al.Allocate(k)
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						got[al][k] = id
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		owner := map[uint32]Key{}
		for _, k := range keys {
			ia, ib := got[a][k], got[b][k]
			if ia != ib {
				t.Errorf("%s: node a has %d, node b %d", k, ia, ib)
			}
			if o, dup := owner[ia]; dup {
				t.Errorf("%d is both %s and %s", ia, o, k)
			}
			owner[ia] = k
			if ia < cfg.Min || ia > cfg.Max {
				t.Errorf("%s: %d outside %d..%d", k, ia, cfg.Min, cfg.Max)
			}
			// The losers deleted their objects: one object per key.
			if names := objectsOf(t, s, k); len(names) != 1 || names[0] != fmt.Sprint(ia) {
				t.Errorf("%s: objects %v, want [%d]", k, names, ia)
			}
		}
		// Every number a Lookup and KeyOfID agree with, on both nodes.
		eventually(t, "caches agree", func() error {
			for _, al := range []*CRD{a, b} {
				for _, k := range keys {
					if id, ok := al.Lookup(k); !ok || id != got[a][k] {
						return fmt.Errorf("Lookup(%s) = %d, %v", k, id, ok)
					}
					if kk, ok := al.KeyOfID(got[a][k]); !ok || kk != k {
						return fmt.Errorf("KeyOfID(%d) = %q, %v", got[a][k], kk, ok)
					}
				}
			}
			return nil
		})

		// A restarted node (a new allocator) finds the same numbers and
		// creates nothing.
		before, err := s.dyn.Resource(GVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := newAlloc(t, s, cfg)
		for _, k := range keys {
			id, err := c.Allocate(k)
			if err != nil || id != got[a][k] {
				t.Fatalf("after restart: Allocate(%s) = %d, %v; want %d", k, id, err, got[a][k])
			}
		}
		after, err := s.dyn.Resource(GVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(after.Items) != len(before.Items) {
			t.Errorf("the restarted allocator changed the object count from %d to %d", len(before.Items), len(after.Items))
		}
		ids := c.Identities()
		for _, k := range keys {
			if ids[got[a][k]] != k {
				t.Errorf("Identities()[%d] = %q, want %q", got[a][k], ids[got[a][k]], k)
			}
		}
		lost := strings.Count(alog.String(), "lost an identity race") + strings.Count(blog.String(), "lost an identity race")
		t.Logf("200 keys, 2 racing nodes: %d objects in all; %d same-key races lost (and their objects deleted)", len(after.Items), lost)
	})

	t.Run("BadObjects", func(t *testing.T) {
		good := KeyOf("bad", nil, map[string]string{"app": "good"})
		mk := func(name string, key Key, hash string, withSpec bool) {
			u := newObject(MinPod, key)
			u.SetName(name)
			if hash != "" {
				u.SetLabels(map[string]string{KeyHashLabel: hash})
			}
			if !withSpec {
				delete(u.Object, "spec")
			}
			if _, err := s.dyn.Resource(GVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("creating %s by hand: %v", name, err)
			}
		}
		mk("web", good, "", true)                                    // not a number
		mk("300", good, "", false)                                   // no key
		mk("301", good, "00", true)                                  // wrong hash label
		mk("12", good, "", true)                                     // a reserved number
		mk("302", Key("not a key"), KeyHash(Key("not a key")), true) // not canonical
		a, log := newAlloc(t, s, CRDConfig{Min: 300, Max: 303})
		for _, want := range []string{
			`name=web reason="name is not a decimal identity number"`,
			`name=300 reason="spec.key is missing"`,
			`name=301 reason="label anet.dev/key-hash is \"00\", not the hash of spec.key"`,
			`name=12 reason="number 12 is outside the pod identity range 256..8388607"`,
			`name=302 reason="spec.key is not a canonical identity key"`,
		} {
			eventually(t, "log of "+want, func() error {
				if !strings.Contains(log.String(), want) {
					return fmt.Errorf("not logged")
				}
				return nil
			})
		}
		// Only 303 is free in 300..303: the bad objects' numbers are taken.
		id, err := a.Allocate(good)
		if err != nil || id != 303 {
			t.Fatalf("Allocate = %d, %v; want 303", id, err)
		}
		if _, err := a.Allocate(KeyOf("bad", nil, map[string]string{"app": "other"})); err != ErrExhausted {
			t.Fatalf("Allocate in a full range: %v, want ErrExhausted", err)
		}
		for _, n := range []uint32{12, 300, 301, 302} {
			if k, ok := a.KeyOfID(n); ok {
				t.Errorf("KeyOfID(%d) = %q from a bad object", n, k)
			}
		}
		for _, name := range []string{"web", "300", "301", "12", "302", "303"} {
			_ = s.dyn.Resource(GVR).Delete(ctx, name, metav1.DeleteOptions{})
		}
	})

	t.Run("Recreate", func(t *testing.T) {
		// An object deleted (by hand, or by a collector racing a new pod)
		// while a node holds it comes back with the same number.
		a, _ := newAlloc(t, s, CRDConfig{})
		key := KeyOf("recreate", nil, map[string]string{"app": "held"})
		id, err := a.Allocate(key)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.dyn.Resource(GVR).Delete(ctx, fmt.Sprint(id), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "re-created", func() error {
			if names := objectsOf(t, s, key); len(names) != 1 || names[0] != fmt.Sprint(id) {
				return fmt.Errorf("objects %v, want [%d]", names, id)
			}
			return nil
		})
	})

	t.Run("GC", func(t *testing.T) {
		a, _ := newAlloc(t, s, CRDConfig{})
		nsObj, err := s.kube.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		podLabels := map[string]string{"app": "gc-used"}
		used := KeyOf("default", nsObj.Labels, podLabels)
		unused := KeyOf("default", nsObj.Labels, map[string]string{"app": "gc-unused"})
		held := KeyOf("default", nsObj.Labels, map[string]string{"app": "gc-held"})
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "gc-used", Namespace: "default", Labels: podLabels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "none"}}},
		}
		if _, err := s.kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ids := map[Key]uint32{}
		for _, k := range []Key{used, unused, held} {
			if ids[k], err = a.Allocate(k); err != nil {
				t.Fatal(err)
			}
		}
		for _, k := range []Key{used, unused} {
			if err := a.Release(k); err != nil {
				t.Fatal(err)
			}
		}
		const grace = time.Hour
		now := time.Now()
		clock := func() time.Time { return now }
		g := &Collector{Alloc: a, Kube: s.kube, Grace: grace, Now: clock}
		mine := func(del []uint32) []uint32 {
			var r []uint32
			for _, id := range del {
				for _, v := range ids {
					if id == v {
						r = append(r, id)
					}
				}
			}
			return r
		}
		run := func(g *Collector) []uint32 {
			t.Helper()
			del, err := g.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return mine(del)
		}
		if del := run(g); len(del) != 0 {
			t.Fatalf("first run deleted %v", del)
		}
		now = now.Add(grace / 2)
		if del := run(g); len(del) != 0 {
			t.Fatalf("run within the grace deleted %v", del)
		}
		now = now.Add(grace/2 + time.Second)
		if del := run(g); len(del) != 1 || del[0] != ids[unused] {
			t.Fatalf("run after the grace deleted %v, want [%d] (unused)", del, ids[unused])
		}
		if names := objectsOf(t, s, used); len(names) != 1 {
			t.Fatalf("used identity's objects: %v", names)
		}
		if names := objectsOf(t, s, held); len(names) != 1 {
			t.Fatalf("held identity's objects: %v", names)
		}
		if names := objectsOf(t, s, unused); len(names) != 0 {
			t.Fatalf("unused identity's objects: %v", names)
		}
		// The pod goes: two collectors (two nodes) at once, each past its
		// grace, remove the used identity exactly once between them.
		if err := s.kube.CoreV1().Pods("default").Delete(ctx, "gc-used", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		g1 := &Collector{Alloc: a, Kube: s.kube, Grace: grace, Now: clock}
		g2 := &Collector{Alloc: a, Kube: s.kube, Grace: grace, Now: clock}
		for _, g := range []*Collector{g1, g2} {
			if del := run(g); len(del) != 0 {
				t.Fatalf("a new collector's first run deleted %v", del)
			}
		}
		now = now.Add(grace + time.Second)
		var wg sync.WaitGroup
		dels := make([][]uint32, 2)
		errs := make([]error, 2)
		for i, g := range []*Collector{g1, g2} {
			wg.Go(func() { dels[i], errs[i] = g.Run(ctx) })
		}
		wg.Wait()
		total := append(mine(dels[0]), mine(dels[1])...)
		if errs[0] != nil || errs[1] != nil || len(total) != 1 || total[0] != ids[used] {
			t.Fatalf("two collectors: deleted %v (%v, %v), want [%d] once", total, errs[0], errs[1], ids[used])
		}
		if names := objectsOf(t, s, held); len(names) != 1 {
			t.Fatalf("held identity's objects: %v", names)
		}
	})
}
