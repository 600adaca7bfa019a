package endpoint

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Ready files: endpoint records written into files made ahead of time.
//
// A record written the plain way is a new file: its fsync commits the new
// inode, its directory entry and its blocks, which takes the file system a
// journal commit (about 0.4 ms here, and more under load) that an ADD then
// waits for. A ready file is made, filled with readySize spaces and
// fsynced off every ADD's path, so that the record's write overwrites
// blocks the file already has: no size change, no allocation, nothing but
// the data for fdatasync to write. The record is then renamed into the
// records' directory, as the plain way renames its temp file. JSON reads
// the spaces after the record as whitespace.
//
// The ready files live in a directory of their own. A crash between an
// ADD's write and its rename leaves a written ready file there, which is
// what a crash left before (a temp file): the endpoint is not recorded, and
// the next start removes every ready file and makes new ones.
//
// A record too large for a ready file (none is today: labels, the only
// part without a bound, come later through SetLabels, which writes its own
// file) and an ADD that finds none ready take the plain way.

const (
	readySize = 4096 // bytes of spaces in a ready file
	readyKept = 4    // ready files kept; 4 ADDs at once find one each
)

type readyPool struct {
	dir       string
	files     chan string // paths of ready files, each given out once
	kick      chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	errMu     sync.Mutex
	err       error // the filler's last error, logged once
}

// UseReadyFiles makes the manager write its records into ready files kept
// in dir (its own, beside the records' directory: anetd uses
// <state-dir>/endpoints.ready). Whatever dir holds is removed first: ready
// files left by an earlier run, written or not, belong to no endpoint. It
// fills the pool before it returns, then keeps it filled in the background
// until Close.
func (m *Manager) UseReadyFiles(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clearing ready files: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p := &readyPool{dir: dir, files: make(chan string, readyKept), kick: make(chan struct{}, 1), stop: make(chan struct{})}
	if err := p.fill(); err != nil {
		return fmt.Errorf("making ready files: %w", err)
	}
	p.wg.Add(1)
	go p.run(m)
	m.ready = p
	return nil
}

// Close stops the manager's background work (the ready files' filler).
// Later calls do nothing.
func (m *Manager) Close() {
	if m.ready != nil {
		m.ready.closeOnce.Do(func() { close(m.ready.stop) })
		m.ready.wg.Wait()
	}
}

// take gives out a ready file's path, or "" when none is ready.
func (p *readyPool) take() string {
	if p == nil {
		return ""
	}
	select {
	case path := <-p.files:
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return path
	default:
		return ""
	}
}

func (p *readyPool) run(m *Manager) {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		case <-p.kick:
		}
		if err := p.fill(); err != nil {
			p.errMu.Lock()
			if p.err == nil || p.err.Error() != err.Error() {
				m.log.Warn("making ready files for endpoint records (records are written the plain way meanwhile)", "dir", p.dir, "err", err)
			}
			p.err = err
			p.errMu.Unlock()
		}
	}
}

// fill makes ready files until readyKept are ready, then makes their
// directory entries durable.
func (p *readyPool) fill() error {
	made := false
	for len(p.files) < cap(p.files) {
		select {
		case <-p.stop:
			return nil
		default:
		}
		path, err := p.make()
		if err != nil {
			return err
		}
		p.files <- path
		made = true
	}
	if !made {
		return nil
	}
	d, err := os.Open(p.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (p *readyPool) make() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	path := filepath.Join(p.dir, hex.EncodeToString(b[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	spaces := make([]byte, readySize)
	for i := range spaces {
		spaces[i] = ' '
	}
	_, err = f.Write(spaces)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return "", err
	}
	return path, nil
}

// writeReady writes a record into a ready file and makes it durable:
// fdatasync when it fits (an overwrite of the file's own blocks), fsync
// when it made the file longer.
func writeReady(path string, b []byte) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	if _, err = f.WriteAt(b, 0); err == nil {
		if len(b) <= readySize {
			err = unix.Fdatasync(int(f.Fd()))
		} else {
			err = f.Sync()
		}
	}
	if err != nil {
		f.Close()
		return nil, errors.Join(err, os.Remove(path))
	}
	return f, nil
}
