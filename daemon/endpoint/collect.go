package endpoint

import (
	"sort"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
)

// Records returns every endpoint record, without counters (no map reads),
// sorted by address.
func (m *Manager) Records() []api.Endpoint {
	m.mu.Lock()
	out := make([]api.Endpoint, 0, len(m.eps))
	for _, ep := range m.eps {
		out = append(out, *ep)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// Collect removes an endpoint whose pod is gone: datapath entries, address
// and record, as Delete does, but only while the record is still the one
// the caller judged (same Created time). An endpoint registered again for
// the same attachment in between is left alone. It reports whether it
// removed anything.
func (m *Manager) Collect(a api.Attachment, created time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.eps[a]
	if ep == nil || !ep.Created.Equal(created) {
		return false, nil
	}
	m.log.Info("collecting endpoint whose pod is gone", "containerID", a.ContainerID, "ifName", a.IfName,
		"ip", ep.IP, "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "podUID", ep.Pod.UID)
	if err := m.deleteLocked(a); err != nil {
		return false, err
	}
	return true, nil
}

// Netns lists the network namespaces of the endpoints, one per endpoint
// (a pod with several interfaces is listed once per interface: the
// caller opens each namespace once, by inode), for the UDP socket
// terminator: it walks the sockets of every pod of the node.
func (m *Manager) Netns() []datapath.NetnsRef {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]datapath.NetnsRef, 0, len(m.eps))
	for _, ep := range m.eps {
		if ep.Netns == "" && ep.NetnsInode == 0 {
			continue
		}
		out = append(out, datapath.NetnsRef{Name: ep.Pod.Namespace + "/" + ep.Pod.Name, Path: ep.Netns, Inode: ep.NetnsInode})
	}
	return out
}
