package service

import (
	"cmp"
	"slices"
	"strings"

	"github.com/anet-dev/anet/daemon/api"
)

// Snapshot returns every frontend that a Service wants, with its backends
// in the maps' order, their states and IDs, and whether the maps hold it
// as wanted: what GET /v1/services answers.
func (r *Reconciler) Snapshot() []api.ServiceFrontend {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.ServiceFrontend, 0, len(r.want))
	for k, w := range r.want {
		f := w.f
		order, active := Order(f)
		prog, has := r.prog[k]
		ids := map[backendKey]uint32{}
		if has {
			for _, b := range prog.Backends {
				ids[bkey(b, k.Proto)] = b.ID
			}
		}
		scope := "external"
		if k.Scope == ScopeInternal {
			scope = "internal"
		}
		sf := api.ServiceFrontend{
			Namespace: f.Namespace, Name: f.Name, Port: f.PortName, Kind: f.Kind.String(), Scope: scope,
			Address: k.Addr, Protocol: k.Proto.String(), AffinitySeconds: int(f.Affinity.Seconds()),
			ExternalLocal: f.ExtLocal, InternalLocal: f.IntLocal, HealthCheckNodePort: f.HealthCheck,
			Active: active, Programmed: has && !r.dirty[k], Backends: make([]api.ServiceBackend, len(order)),
		}
		if has {
			sf.RevNat = prog.RevNat
		}
		if err := r.errs[k]; err != nil {
			sf.Error = err.Error()
		}
		for i, b := range order {
			sf.Backends[i] = api.ServiceBackend{
				Address: b.Addr, State: b.State.String(), Active: i < active,
				ID: ids[backendKey{b.Addr, k.Proto}], Node: b.NodeName, Zone: b.Zone,
			}
		}
		out = append(out, sf)
	}
	slices.SortFunc(out, func(a, b api.ServiceFrontend) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name),
			a.Address.Compare(b.Address), strings.Compare(a.Protocol, b.Protocol), strings.Compare(a.Scope, b.Scope))
	})
	return out
}
