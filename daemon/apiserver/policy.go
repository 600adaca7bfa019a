package apiserver

import (
	"fmt"
	"net/http"

	"github.com/anet-dev/anet/daemon/api"
)

// Policy answers the policy routes: anetd's NetworkPolicy reconciler
// (policy.Reconciler), safe to call from any goroutine.
type Policy interface {
	EndpointPolicy(namespace, name string) (api.EndpointPolicy, error)
	Identities() ([]api.IdentityEntry, error)
}

// SetPolicy makes GET /v1/policy/{namespace}/{name} and GET
// /v1/identities answer from p. Until it is called the answer is 404:
// this anetd does not enforce NetworkPolicy.
func (s *Server) SetPolicy(p Policy) { s.policy.Store(&p) }

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
