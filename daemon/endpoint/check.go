package endpoint

import (
	"fmt"

	"github.com/anet-dev/anet/daemon/api"
)

// AttachChecker is a datapath that can tell whether its current programs
// are attached to a host-side device (datapath.Datapath).
type AttachChecker interface {
	CheckAttached(hostIfName string) error
}

// LinkPruner is a datapath that can remove the link pins of devices that
// are gone (datapath.Datapath).
type LinkPruner interface {
	PruneLinks() error
}

// Check reports whether an endpoint's host side is as its ADD left it: the
// device there under its name and index, with the datapath's current
// programs attached (CNI CHECK; the pod side is the plugin's to check).
func (m *Manager) Check(a api.Attachment) (*api.EndpointCheck, error) {
	m.mu.Lock()
	a = m.resolveLocked(a)
	ep := m.eps[a]
	m.mu.Unlock()
	if ep == nil {
		return nil, fmt.Errorf("%w: endpoint %s/%s", api.ErrNotFound, a.ContainerID, a.IfName)
	}
	if !m.devs.Exists(ep.HostIfName, ep.HostIfindex) {
		return &api.EndpointCheck{Problem: fmt.Sprintf("host interface %s with index %d is gone", ep.HostIfName, ep.HostIfindex)}, nil
	}
	if c, ok := m.dp.(AttachChecker); ok {
		if err := c.CheckAttached(ep.HostIfName); err != nil {
			return &api.EndpointCheck{Problem: err.Error()}, nil
		}
	}
	return &api.EndpointCheck{}, nil
}
