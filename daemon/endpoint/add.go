package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/internal/testhook"
)

// Wirer makes and removes endpoint devices (datapath.Datapath).
type Wirer interface {
	Wire(podNS *os.File, c datapath.WireConfig) (datapath.Wired, error)
}

// Steps of an ADD, for the trace and for testhook (the tests that stop
// anetd at each of them). Wire's own steps are datapath.Step*.
const (
	StepReserved = "reserved" // an address reserved in memory
	StepMapped   = "mapped"   // the map entries written
	StepRecorded = "recorded" // the record durable; the reply not yet sent
)

// Add does a whole CNI ADD: an address, the veth pair in podNS with the
// programs attached before either end is up, the map entries, and one
// durable record, put in place last (written and fsynced meanwhile): the
// record is what makes the address taken across a restart, and nothing is
// returned before it is on disk and in place. A failure undoes every step;
// a crash in between leaves only a device without a record (and perhaps
// the record's temp file), which the next start removes.
func (m *Manager) Add(ctx context.Context, r api.AddRequest, podNS *os.File) (*api.AddResult, error) {
	w, ok := m.dp.(Wirer)
	if !ok {
		return nil, errors.New("this datapath cannot wire endpoints")
	}
	unlock := m.lockAttachment(r.Attachment)
	defer unlock()
	var trace []api.TraceStep
	last := time.Now()
	mark := func(step string) {
		now := time.Now()
		trace = append(trace, api.TraceStep{Step: step, Micros: now.Sub(last).Microseconds()})
		last = now
		testhook.Point(step)
	}

	m.mu.Lock()
	_, exists := m.eps[r.Attachment]
	if _, legacy := m.eps[r.Attachment.Legacy()]; legacy {
		exists = true // a record made before networks were recorded
	}
	if _, held := m.ipam.Lookup(r.Attachment.Legacy()); held && r.Network != "" {
		exists = true
	}
	m.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("%w: endpoint %s/%s", api.ErrExists, r.ContainerID, r.IfName)
	}
	ip, err := m.ipam.Reserve(r.Attachment)
	if err != nil {
		return nil, err
	}
	mark(StepReserved)
	hostIf := datapath.HostIfName(r.ContainerID, r.IfName)
	ok = false
	var ifindex uint32 // of the host side, once made
	defer func() {
		if ok {
			return
		}
		// As Delete: entries, then the device (whose deletion waits for
		// programs still running with them), then the counters.
		if ifindex != 0 {
			if err := m.dp.DeleteEndpointEntries(ip, ifindex); err != nil {
				m.log.Warn("undoing a failed ADD", "ip", ip, "err", err)
			}
		}
		removed, err := m.devs.Remove(hostIf)
		if err != nil {
			m.log.Warn("undoing a failed ADD", "hostIf", hostIf, "err", err)
		}
		if ifindex != 0 {
			del := m.dp.DeleteCountersOf
			if !removed {
				del = func(i uint32) error { return m.dp.DeleteEndpoint(ip, i) }
			}
			if err := del(ifindex); err != nil {
				m.log.Warn("undoing a failed ADD", "ifindex", ifindex, "err", err)
			}
		}
		_, _, _ = m.ipam.Release(r.Attachment)
		m.log.Info("ADD undone", "containerID", r.ContainerID, "ifName", r.IfName, "ip", ip, "hostIf", hostIf)
	}()
	// The record is made durable while the wiring goes on: its temp file
	// is made while the veth pair is, its contents are known once the
	// pair exists with its programs (Made), and they are written and
	// fsynced while both sides are configured and the maps written. It
	// is renamed into place, which makes the endpoint exist across a
	// restart, only once everything else is done; until then a crash
	// leaves at most a temp file, which Restore removes.
	created := time.Now().UTC().Round(0)
	// The namespace's inode finds it again later (the UDP socket
	// terminator walks it), even where its path does not lead.
	var netnsIno uint64
	if podNS != nil {
		if netnsIno, err = datapath.NetnsInode(podNS); err != nil {
			m.log.Warn("the pod's network namespace has no inode to record", "containerID", r.ContainerID, "err", err)
		}
	}
	newRecord := func(wd datapath.Wired) *api.Endpoint {
		return &api.Endpoint{EndpointRequest: api.EndpointRequest{
			Attachment: r.Attachment, Pod: r.Pod, Netns: r.Netns, IP: ip,
			HostIfName: hostIf, HostIfindex: uint32(wd.HostIfindex),
			HostMAC: wd.HostMAC.String(), PodMAC: wd.PodMAC.String(), AttachMode: wd.Mode,
		}, Created: created, NetnsInode: netnsIno}
	}
	rec := m.startRecord(r.Attachment)
	defer func() {
		if !ok {
			rec.abort()
		}
	}()
	mtu := r.MTU
	if mtu == 0 {
		mtu = m.PodMTU()
	}
	got, err := w.Wire(podNS, datapath.WireConfig{
		HostIfName: hostIf, PodIfName: r.IfName, MTU: mtu, IP: ip, Gateway: m.ipam.Gateway(), Mark: mark,
		Made: func(wd datapath.Wired) { rec.write(newRecord(wd)) },
	})
	if err != nil {
		if errors.Is(err, datapath.ErrPodIfExists) {
			return nil, fmt.Errorf("%w: %v", api.ErrExists, err)
		}
		return nil, err
	}
	ifindex = uint32(got.HostIfindex)
	ep := newRecord(got)
	if w := rec.written(); w != nil && w.EndpointRequest != ep.EndpointRequest {
		// The wiring ended otherwise than Made said (a Wirer that
		// changed something after): the record is made again.
		rec.abort()
		rec = m.startRecord(r.Attachment)
	}
	if rec.written() == nil {
		rec.write(ep)
	}
	dpe, err := toDatapath(&ep.EndpointRequest)
	if err != nil {
		return nil, err
	}
	if err := m.dp.UpsertEndpoint(dpe); err != nil {
		return nil, fmt.Errorf("programming datapath: %w", err)
	}
	mark(StepMapped)
	// The runtime gave up (the plugin is gone): undo rather than record
	// an endpoint that nobody will be told of.
	if api.PeerGone(ctx) {
		return nil, errors.New("the plugin went away before the ADD was done")
	}
	if err := rec.commit(); err != nil {
		return nil, fmt.Errorf("recording endpoint: %w", err)
	}
	mark(StepRecorded)
	m.mu.Lock()
	m.eps[r.Attachment] = ep
	m.changed()
	m.mu.Unlock()
	ok = true
	m.log.Info("endpoint added", "containerID", r.ContainerID, "ifName", r.IfName, "ip", ip, "hostIf", hostIf, "mode", got.Mode, "pod", r.Pod.Namespace+"/"+r.Pod.Name)
	return &api.AddResult{
		IP: ip, Gateway: m.ipam.Gateway(), PodCIDR: m.ipam.CIDR(), HostIfName: hostIf,
		HostMAC: ep.HostMAC, PodMAC: ep.PodMAC, AttachMode: got.Mode, Trace: trace,
	}, nil
}

// pendingRecord is an endpoint record on its way to disk, in the
// background: once its contents are given (write), written into a ready
// file (see ready.go) and fdatasynced, or, when none is ready, into a temp
// file made beside its place and fsynced. commit waits for that and
// renames the file into place; abort removes it.
type pendingRecord struct {
	content chan []byte
	done    chan error
	path    string                // the record's place
	ready   string                // the ready file taken, if one was
	f       *os.File              // the written ready file; set before done is sent
	pf      *renameio.PendingFile // the plain way's temp file; set before done is sent
	ep      *api.Endpoint         // what write was given
	over    bool
}

// startRecord begins a record of a. The plain way's temp file is made in
// the records' directory (renameio would otherwise probe the system's temp
// directory with two more files on every write), so that Restore finds
// what a crash leaves of it.
func (m *Manager) startRecord(a api.Attachment) *pendingRecord {
	p := &pendingRecord{content: make(chan []byte, 1), done: make(chan error, 1), path: m.recordPath(a), ready: m.ready.take()}
	go func() {
		if p.ready != "" {
			b, ok := <-p.content
			if !ok {
				_ = os.Remove(p.ready)
				p.done <- errors.New("record aborted")
				return
			}
			if len(b) == 0 {
				_ = os.Remove(p.ready)
				p.done <- errors.New("encoding the record failed")
				return
			}
			f, err := writeReady(p.ready, b)
			p.f = f
			p.done <- err
			return
		}
		pf, err := renameio.NewPendingFile(p.path, renameio.WithTempDir(m.dir), renameio.WithPermissions(0o600))
		if err != nil {
			p.done <- err
			return
		}
		p.pf = pf
		b, ok := <-p.content
		if !ok {
			p.done <- errors.New("record aborted")
			return
		}
		if len(b) == 0 {
			p.done <- errors.New("encoding the record failed")
			return
		}
		_, err = pf.Write(b)
		if err == nil {
			err = pf.Sync()
		}
		p.done <- err
	}()
	return p
}

// write gives the record its contents (once).
func (p *pendingRecord) write(ep *api.Endpoint) {
	b, err := json.Marshal(ep)
	if err != nil {
		b = nil // the record fails, and so does commit
	}
	p.ep = ep
	p.content <- b
}

// written is what write was given, nil before.
func (p *pendingRecord) written() *api.Endpoint { return p.ep }

// commit waits until the record is on disk and renames it into place (the
// plain way's rename fsyncs first, and finds nothing left to write).
func (p *pendingRecord) commit() error {
	if p.ep == nil {
		p.abort()
		return errors.New("no record written")
	}
	p.over = true
	err := <-p.done
	if p.ready != "" {
		if err == nil {
			err = p.f.Close()
			if err == nil {
				err = os.Rename(p.ready, p.path)
			}
			if err != nil {
				_ = os.Remove(p.ready)
			}
		}
		return err
	}
	if err == nil {
		err = p.pf.CloseAtomicallyReplace()
	}
	if err != nil && p.pf != nil {
		_ = p.pf.Cleanup()
	}
	return err
}

// abort removes the temp or ready file, once its write is over. After
// commit it does nothing.
func (p *pendingRecord) abort() {
	if p.over {
		return
	}
	p.over = true
	if p.ep == nil {
		close(p.content)
	}
	err := <-p.done
	if p.ready != "" {
		if err == nil {
			p.f.Close()
			_ = os.Remove(p.ready)
		}
		return
	}
	if p.pf != nil {
		_ = p.pf.Cleanup()
	}
}

// lockAttachment serializes the verbs of one attachment (an ADD and a
// racing DEL) without serializing different attachments.
func (m *Manager) lockAttachment(a api.Attachment) func() {
	for {
		m.mu.Lock()
		if m.busy == nil {
			m.busy = map[api.Attachment]chan struct{}{}
		}
		ch, held := m.busy[a]
		if !held {
			ch = make(chan struct{})
			m.busy[a] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.busy, a)
				m.mu.Unlock()
				close(ch)
			}
		}
		m.mu.Unlock()
		<-ch
	}
}

// removeOrphanDevicesLocked removes the host-side devices that no record
// names: what an ADD left when anetd died in its middle. Their pod sides
// go with them.
func (m *Manager) removeOrphanDevicesLocked() error {
	names, err := m.devs.List()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, ep := range m.eps {
		want[ep.HostIfName] = true
	}
	var errs []error
	for _, n := range names {
		if want[n] {
			continue
		}
		m.log.Info("removing a device that no endpoint record names (an ADD that never finished)", "hostIf", n)
		if _, err := m.devs.Remove(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
