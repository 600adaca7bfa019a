package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/anet-dev/anet/daemon/api"
)

// Policy answers the policy routes: anetd's NetworkPolicy reconciler
// (policy.Reconciler), safe to call from any goroutine.
type Policy interface {
	EndpointPolicy(namespace, name string) (api.EndpointPolicy, error)
	Identities() ([]api.IdentityEntry, error)
	// WaitEndpoint returns once the new pod's policy is in the maps
	// (policy.Reconciler.WaitEndpoint).
	WaitEndpoint(ctx context.Context, namespace, name string) error
}

// SetPolicy makes GET /v1/policy/{namespace}/{name} and GET
// /v1/identities answer from p. Until it is called the answer is 404:
// this anetd does not enforce NetworkPolicy.
func (s *Server) SetPolicy(p Policy) { s.policy.Store(&p) }

// SetPolicyWait makes every ADD wait up to d, after the endpoint is made
// and before it answers, for the new pod's policy to be written
// (Policy.WaitEndpoint), so that a pod that a policy isolates is isolated
// from its first packet. When d runs out the ADD succeeds all the same
// and anetd logs it: the pod is open until its policy is written. 0: no
// wait.
func (s *Server) SetPolicyWait(d time.Duration) { s.policyWait.Store(int64(d)) }

// waitPolicy waits for the policy of the pod of an ADD (SetPolicyWait).
// It reports whether it waited, and how long.
func (s *Server) waitPolicy(r *http.Request, pod api.PodRef) (bool, time.Duration) {
	p := s.policy.Load()
	d := time.Duration(s.policyWait.Load())
	if p == nil || *p == nil || d <= 0 || pod.Name == "" {
		return false, 0
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), d)
	defer cancel()
	if err := (*p).WaitEndpoint(ctx, pod.Namespace, pod.Name); err != nil {
		s.log.Warn("the new pod's network policy was not written in time; it is open until it is",
			"pod", pod.Namespace+"/"+pod.Name, "waited", d, "err", err)
	}
	return true, time.Since(start)
}

// errPolicyOff is the answer of an anetd that enforces no policy: said
// plainly, since an empty answer would read as "nothing isolated".
var errPolicyOff = fmt.Errorf("%w: network policy is off on this anetd (--enable-network-policy=false, or no Kubernetes API): no policy is enforced, every pod is open", api.ErrNotFound)

func (s *Server) policySource(w http.ResponseWriter, r *http.Request) Policy {
	p := s.policy.Load()
	if p == nil || *p == nil {
		s.fail(w, r, errPolicyOff)
		return nil
	}
	return *p
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("namespace"), r.PathValue("name")
	if err := api.ValidPod(ns, name); err != nil {
		s.fail(w, r, err)
		return
	}
	p := s.policySource(w, r)
	if p == nil {
		return
	}
	ep, err := p.EndpointPolicy(ns, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, ep)
}

func (s *Server) listIdentities(w http.ResponseWriter, r *http.Request) {
	p := s.policySource(w, r)
	if p == nil {
		return
	}
	ids, err := p.Identities()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if ids == nil {
		ids = []api.IdentityEntry{}
	}
	s.reply(w, ids)
}
