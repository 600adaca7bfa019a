package policy

import (
	"maps"
	"net/netip"
	"slices"
)

// Change is what turns one EndpointPolicy into another: the rules to add
// and to delete per direction (the datapath adds first, then deletes, so
// that no allowed flow is refused in between), and the enforcement flags
// of the new policy.
type Change struct {
	IngressEnforced, EgressEnforced bool
	IngressAdd, IngressDel          []Rule
	EgressAdd, EgressDel            []Rule
}

// Empty reports whether the change changes nothing given the old flags.
func (c Change) Empty(old EndpointPolicy) bool {
	return c.IngressEnforced == old.IngressEnforced && c.EgressEnforced == old.EgressEnforced &&
		len(c.IngressAdd)+len(c.IngressDel)+len(c.EgressAdd)+len(c.EgressDel) == 0
}

// Diff returns the change from old to new.
func Diff(old, new EndpointPolicy) Change {
	c := Change{IngressEnforced: new.IngressEnforced, EgressEnforced: new.EgressEnforced}
	c.IngressAdd, c.IngressDel = diffRules(old.Ingress, new.Ingress)
	c.EgressAdd, c.EgressDel = diffRules(old.Egress, new.Egress)
	return c
}

func diffRules(old, new []Rule) (add, del []Rule) {
	in := func(list []Rule, r Rule) bool {
		_, found := slices.BinarySearchFunc(list, r, compareRules)
		return found
	}
	old = slices.SortedFunc(slices.Values(old), compareRules)
	new = slices.SortedFunc(slices.Values(new), compareRules)
	for _, r := range new {
		if !in(old, r) {
			add = append(add, r)
		}
	}
	for _, r := range old {
		if !in(new, r) {
			del = append(del, r)
		}
	}
	return slices.Compact(add), slices.Compact(del)
}

// DiffIPCache returns the ipcache entries to write (new or changed) and
// the prefixes to delete, sorted. Writes come first: an entry whose
// identity changes is overwritten in place, never deleted and re-added.
func DiffIPCache(old, new map[netip.Prefix]uint32) (set map[netip.Prefix]uint32, del []netip.Prefix) {
	set = map[netip.Prefix]uint32{}
	for p, id := range new {
		if o, ok := old[p]; !ok || o != id {
			set[p] = id
		}
	}
	for p := range old {
		if _, ok := new[p]; !ok {
			del = append(del, p)
		}
	}
	slices.SortFunc(del, comparePrefix)
	return set, del
}

// Prefixes returns the keys of an ipcache sorted (for stable output).
func Prefixes(ipc map[netip.Prefix]uint32) []netip.Prefix {
	return slices.SortedFunc(maps.Keys(ipc), comparePrefix)
}
