package routing

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestDesired(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	nodes := []Node{
		{Name: "me", PodCIDRs: []netip.Prefix{p("10.244.0.0/24")}, InternalIP: a("10.77.0.1")},
		{Name: "b", PodCIDRs: []netip.Prefix{p("10.244.1.0/24")}, InternalIP: a("10.77.0.2")},
		{Name: "c", PodCIDRs: []netip.Prefix{p("10.244.2.7/24"), p("fd00::/64")}, InternalIP: a("10.77.0.3")},
		{Name: "no-cidr", InternalIP: a("10.77.0.4")},
		{Name: "no-ip", PodCIDRs: []netip.Prefix{p("10.244.5.0/24")}},
		{Name: "overlaps-me", PodCIDRs: []netip.Prefix{p("10.244.0.0/16")}, InternalIP: a("10.77.0.6")},
		{Name: "same-ip-as-me", PodCIDRs: []netip.Prefix{p("10.244.7.0/24")}, InternalIP: a("10.77.0.1")},
		{Name: "a-dup", PodCIDRs: []netip.Prefix{p("10.244.1.0/24")}, InternalIP: a("10.77.0.9")},
	}
	got := Desired("me", nodes)
	want := []Route{
		{Dst: p("10.244.1.0/24"), Gateway: a("10.77.0.9"), Node: "a-dup"},
		{Dst: p("10.244.2.0/24"), Gateway: a("10.77.0.3"), Node: "c"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Desired =\n%v\nwant\n%v", got, want)
	}
	if got := Desired("me", nil); len(got) != 0 {
		t.Errorf("no nodes: %v", got)
	}
}
