//go:build linux

package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// addNetns makes a network namespace with lo up. It is recorded before it
// is made (a crash right after must not leak it) but only once it is known
// not to exist, and the record is dropped again when `ip netns add` fails:
// a namespace of the same name belongs to someone else (another lab of the
// same name), and the failure path of Up removes what is recorded.
func (l *Lab) addNetns(name string) error {
	if _, err := os.Stat(l.netnsPath(name)); err == nil {
		return fmt.Errorf("network namespace %s exists already (another lab named %q? pick another --name)", name, l.Name)
	}
	if err := l.st.update(func(s *State) { s.Netns = append(s.Netns, name) }); err != nil {
		return err
	}
	if _, err := run("ip", "netns", "add", name); err != nil {
		if uerr := l.st.update(func(s *State) { s.Netns = slices.DeleteFunc(s.Netns, func(n string) bool { return n == name }) }); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return err
	}
	_, err := run("ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// plug joins a namespace to the fabric's bridge through a veth: "eth0"
// with addr/24 inside, "v-<short>" on the bridge. The veth is made inside
// the fabric and its peer moved at once, so no interface ever appears in
// the machine's own namespace.
func (l *Lab) plug(fabric, member, short, addr string) error {
	fab := "v-" + short
	if len(fab) > 15 {
		return fmt.Errorf("interface name %s too long", fab)
	}
	for _, args := range [][]string{
		{"-n", fabric, "link", "add", fab, "type", "veth", "peer", "name", "eth0", "netns", member},
		{"-n", fabric, "link", "set", fab, "master", "br0", "up"},
		{"-n", member, "addr", "add", addr + "/24", "dev", "eth0"},
		{"-n", member, "link", "set", "eth0", "up"},
	} {
		if _, err := run("ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// join makes namespace ns and plugs it into the fabric with addr.
func (l *Lab) join(ns, short, addr string) error {
	if err := l.addNetns(ns); err != nil {
		return err
	}
	return l.plug(l.st.get().FabricNetns, ns, short, addr)
}

// makeFabric makes the fabric namespace and its bridge, the control plane,
// node and outside namespaces, and plugs them in. No namespace gets a
// default route: 10.77.0.0/24 is all there is.
func (l *Lab) makeFabric(nodes int) error {
	fabric := l.Name + "-fabric"
	if err := l.st.update(func(s *State) { s.FabricNetns, s.OutsideNetns = fabric, l.Name+"-outside" }); err != nil {
		return err
	}
	if err := l.addNetns(fabric); err != nil {
		return err
	}
	if _, err := run("ip", "-n", fabric, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if _, err := run("ip", "-n", fabric, "link", "set", "br0", "up"); err != nil {
		return err
	}
	members := []struct{ ns, short, addr string }{{l.Name + "-cp", "cp", ControlPlaneIP}}
	for i := 1; i <= nodes; i++ {
		members = append(members, struct{ ns, short, addr string }{l.Name + "-" + NodeName(i), NodeName(i), NodeIP(i)})
	}
	members = append(members, struct{ ns, short, addr string }{l.Name + "-outside", "outside", OutsideIP})
	for _, m := range members {
		if err := l.join(m.ns, m.short, m.addr); err != nil {
			return err
		}
	}
	l.say("fabric %s (bridge br0, %s): control plane %s, %d node(s) from %s, outside %s",
		fabric, FabricPrefix, ControlPlaneIP, nodes, NodeIP(1), OutsideIP)

	// One cgroup2 mount for every node's anetd (its socket hooks attach at
	// <mount>/<name>-nodeI), and a private directory for the nodes' mount
	// namespace files (a namespace file cannot be bound under a shared mount).
	cg2 := filepath.Join(l.Dir, "cgroup2")
	nsDir := filepath.Join(l.Dir, "ns")
	for _, d := range []string{cg2, nsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := l.mount("none", cg2, "cgroup2", 0, ""); err != nil {
		return err
	}
	if err := l.st.update(func(s *State) { s.CgroupV2Mount = cg2 }); err != nil {
		return err
	}
	if err := l.mount(nsDir, nsDir, "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	if err := syscall.Mount("", nsDir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making %s private: %w", nsDir, err)
	}
	return nil
}
