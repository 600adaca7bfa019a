package datapath

import (
	"path/filepath"
	"strings"

	"github.com/anet-dev/anet/daemon/api"
)

// Layout is where anet's objects live under one bpffs directory
// (--bpf-root). Several anetd instances on one kernel each have their own.
type Layout struct{ Root string }

func (l Layout) MapsDir() string  { return filepath.Join(l.Root, "maps") }
func (l Layout) ProgsDir() string { return filepath.Join(l.Root, "progs") }
func (l Layout) LinksDir() string { return filepath.Join(l.Root, "links") }

// MapPin is the pin of one of anetd's maps.
func (l Layout) MapPin(name string) string { return filepath.Join(l.MapsDir(), name) }

// ProgPin is the pin of one of anetd's programs.
func (l Layout) ProgPin(name string) string { return filepath.Join(l.ProgsDir(), name) }

// LinkPin is the pin of the TCX link of one endpoint device and direction
// (bpffs refuses names with a dot).
func (l Layout) LinkPin(ifname string, dir Dir) string {
	return filepath.Join(l.LinksDir(), ifname+"_"+dir.String())
}

// parseLinkPin splits a link pin's name into device and direction.
func parseLinkPin(name string) (ifname string, dir Dir, ok bool) {
	i := strings.LastIndexByte(name, '_')
	if i <= 0 {
		return "", 0, false
	}
	switch name[i+1:] {
	case DirEgress.String():
		return name[:i], DirEgress, true
	case DirIngress.String():
		return name[:i], DirIngress, true
	}
	return "", 0, false
}

// HostIfName is the deterministic name of an endpoint's host-side veth
// (api.HostIfName: anet-cni computes it too, without linking this package).
func HostIfName(containerID, ifname string) string { return api.HostIfName(containerID, ifname) }

// IsHostIfName says whether name has the shape of HostIfName's names.
func IsHostIfName(name string) bool { return api.IsHostIfName(name) }
