//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/installer/manifests"
	"github.com/anet-dev/anet/lab"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// rbacUnusedOK are the grants of anetd's ClusterRole that a lab run does
// not exercise on its own, each with the reason it is there.
var rbacUnusedOK = map[string]string{
	// client-go's informers start with a streaming list (a watch with
	// sendInitialEvents) and fall back to a plain list where the API
	// server does not serve one: the grant is for that fallback.
	"/nodes list":                            informerList,
	"/services list":                         informerList,
	"discovery.k8s.io/endpointslices list":   informerList,
	"networking.k8s.io/networkpolicies list": informerList,
	"/pods get":                              "the endpoint collector checks a pod that has left the informer's cache before collecting its endpoint (a pod gone without a CNI DEL)",
	"/events patch":                          "the event recorder patches an Event that repeats",
	"anet.dev/securityidentities delete":     "the identity collector (every 15 min) and the loser of a race for one key",
}

const informerList = "an informer's list where the API server serves no streaming list"

// auditEvent is the part of an audit.k8s.io/v1 Event the test reads.
type auditEvent struct {
	Stage      string `json:"stage"`
	Verb       string `json:"verb"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		APIGroup    string `json:"apiGroup"`
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// TestAnetdRBAC: every anetd of the lab runs under the ServiceAccount of
// installer/manifests/rbac.yaml. After making anetd use its permissions
// (a pod of new labels: an identity; a policy it cannot enforce: an
// Event), the API server's audit log of anetd's requests shows no request
// refused and every grant of the ClusterRole used, but for the few listed
// in rbacUnusedOK with their reasons.
func TestAnetdRBAC(t *testing.T) {
	l := lab.SharedLab(t)
	const ns = "rbac-check"
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n---\n"+
		netpolPodIn(ns, "twin-a", lab.NodeName(1), "app: twin, rbac-check: \"1\"")+
		netpolPodIn(ns, "twin-b", lab.NodeName(2), "app: twin, rbac-check: \"1\""), "namespace", ns, "--wait=false")
	if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	ip, err := l.Kubectl("get", "pod", "-n", ns, "twin-a", "-o", "jsonpath={.status.podIP}")
	if err != nil || strings.TrimSpace(ip) == "" {
		t.Fatalf("twin-a's address: %v %q", err, ip)
	}
	// An ipBlock holding one of two pods of one identity: anet reports it
	// (TestNetworkPolicy), as an Event.
	if err := l.Apply(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: split-block, namespace: ` + ns + `}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: ` + strings.TrimSpace(ip) + `/32}}]
`); err != nil {
		t.Fatal(err)
	}
	// The Event (an anetd's create) and the identity of the new labels.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev, _ := l.Kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=split-block,reason=PolicyNotEnforced", "-o", "name")
		id, _ := l.Kubectl("get", "securityidentities", "-o", "jsonpath={range .items[*]}{.spec.key}{\"\\n\"}{end}")
		if strings.TrimSpace(ev) != "" && strings.Contains(id, "rbac-check") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: events %q; no identity with rbac-check in its key", ev)
		}
		time.Sleep(500 * time.Millisecond)
	}

	granted := map[string]bool{}
	for _, doc := range strings.Split(string(manifests.RBAC), "\n---\n") {
		var cr rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &cr); err != nil {
			t.Fatalf("installer/manifests/rbac.yaml: %v", err)
		}
		if cr.Kind != "ClusterRole" {
			continue
		}
		for _, r := range cr.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						granted[g+"/"+res+" "+v] = true
					}
				}
			}
		}
	}
	if len(granted) == 0 {
		t.Fatal("no ClusterRole rules in installer/manifests/rbac.yaml")
	}
	for k := range rbacUnusedOK {
		if !granted[k] {
			t.Errorf("rbacUnusedOK names %q, which the ClusterRole does not grant", k)
		}
	}

	f, err := os.Open(l.AuditLogPath())
	if err != nil {
		t.Fatalf("the API server's audit log: %v", err)
	}
	defer f.Close()
	used := map[string]int{}
	var refused []string
	requests := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit log line %q: %v", sc.Text(), err)
		}
		if e.User.Username != manifests.User {
			t.Fatalf("audit log holds a request of %q: the policy logs only anetd's", e.User.Username)
		}
		if e.Stage != "ResponseComplete" && e.Stage != "ResponseStarted" {
			continue
		}
		what := e.RequestURI
		if o := e.ObjectRef; o != nil {
			res := o.Resource
			if o.Subresource != "" {
				res += "/" + o.Subresource
			}
			what = o.APIGroup + "/" + res + " " + e.Verb
		}
		if e.ResponseStatus != nil && e.ResponseStatus.Code == 403 {
			refused = append(refused, fmt.Sprintf("%s (%s)", what, e.RequestURI))
		}
		if e.Stage == "ResponseComplete" || e.Verb == "watch" {
			requests++
			used[what]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if requests < 10 {
		t.Fatalf("only %d requests of %s in the audit log: anetd does not run under its ServiceAccount", requests, manifests.User)
	}
	if len(refused) > 0 {
		t.Errorf("requests of anetd refused (403): %v", refused)
	}
	for _, k := range slices.Sorted(maps.Keys(granted)) {
		if used[k] == 0 {
			if why, ok := rbacUnusedOK[k]; ok {
				t.Logf("granted, not used in this run: %s (%s)", k, why)
			} else {
				t.Errorf("granted, never used: %s (drop it from installer/manifests/rbac.yaml, or say why it is needed)", k)
			}
		}
	}
	var seen []string
	for k, n := range used {
		seen = append(seen, fmt.Sprintf("%s ×%d", k, n))
	}
	slices.Sort(seen)
	t.Logf("%d requests of %s: %s", requests, manifests.User, strings.Join(seen, ", "))
}
