package endpoint

import (
	"encoding/json"
	"fmt"
	"maps"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/daemon/api"
)

// SetLabels records the labels of an endpoint's pod, persisting a change.
// It reports whether the record changed; an unknown attachment is not an
// error (its pod may be gone by now).
func (m *Manager) SetLabels(a api.Attachment, labels map[string]string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.eps[a]
	if ep == nil || maps.Equal(ep.Labels, labels) {
		return false, nil
	}
	next := *ep
	next.Labels = maps.Clone(labels)
	if len(next.Labels) == 0 {
		next.Labels = nil
	}
	b, err := json.Marshal(&next)
	if err != nil {
		return false, err
	}
	if err := renameio.WriteFile(m.recordPath(a), b, 0o600); err != nil {
		return false, fmt.Errorf("recording endpoint labels: %w", err)
	}
	m.eps[a] = &next
	return true, nil
}
