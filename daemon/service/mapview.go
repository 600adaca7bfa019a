package service

// Order returns f's backends as the maps hold them: the active ones first
// (those that take new connections), then the others, each part in f's
// order (by address), and how many are active. The active ones are the
// ready backends; when none is ready, the serving (terminating) ones, as
// kube-proxy falls back to them; when neither exists, none: the frontend
// refuses new connections.
func Order(f Frontend) (order []Backend, active int) {
	ready, serving := 0, 0
	for _, b := range f.Backends {
		switch b.State {
		case Ready:
			ready++
		case Serving:
			serving++
		}
	}
	take := Ready
	if ready == 0 {
		take = Serving
	}
	order = make([]Backend, 0, len(f.Backends))
	for _, b := range f.Backends {
		if b.State == take {
			order = append(order, b)
		}
	}
	active = len(order)
	for _, b := range f.Backends {
		if b.State != take {
			order = append(order, b)
		}
	}
	return order, active
}

// FlagsOf returns f's datapath flags. An externalTrafficPolicy Local
// frontend (ExtLocal, external scope) always has its internal-scope twin
// beside it (Build makes both), hence FlagTwoScopes.
func FlagsOf(f Frontend) Flags {
	var fl Flags
	switch f.Kind {
	case NodePort:
		fl |= FlagNodePort
	case ExternalIP, LoadBalancer:
		fl |= FlagExternal
	}
	if f.ExtLocal {
		fl |= FlagExtLocal
		if f.Key.Scope == ScopeExternal {
			fl |= FlagTwoScopes
		}
	}
	if f.IntLocal {
		fl |= FlagIntLocal
	}
	return fl
}

// mapState is a backend's state as the maps hold it (NotReady never
// reaches them).
func mapState(s BackendState) BackendState {
	if s == NotReady {
		return Terminating
	}
	return s
}
