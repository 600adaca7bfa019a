package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// PendingReleaseDir is where anet-cni records a DEL it could not tell anetd
// about (anetd down): beside anetd's socket. anetd applies and removes the
// records when it is back, and checks again every few seconds.
func PendingReleaseDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "pending-release")
}

// RecordPendingRelease writes a record for a (name is unique per attachment)
// atomically.
func RecordPendingRelease(dir, name string, a Attachment) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(dir, name), b, 0o600)
}

// ReadPendingReleases returns the records in dir by file path. Unreadable
// records are returned with a zero Attachment so that the caller drops them.
func ReadPendingReleases(dir string) (map[string]Attachment, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]Attachment{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		var a Attachment
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &a)
		}
		out[path] = a
	}
	return out, nil
}

// PendingAddDir is where anet-cni marks each ADD in progress, beside
// anetd's socket: one file per attachment (named as its host-side veth),
// holding the attachment and locked (flock) by the plugin from before it
// asks for an address until the endpoint is registered. A marker whose lock
// is free belongs to an ADD that is over: when the endpoint was not
// registered, anetd removes what the ADD left (its veth, link pins and
// address). The kernel drops the lock when the plugin dies, however it
// dies, so nothing an ADD allocated outlives it.
func PendingAddDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "pending-add")
}

// AddMark is the marker of one ADD in progress, locked while it is open.
type AddMark struct {
	f    *os.File
	path string
}

// MarkAdd creates (or takes over) the marker named name in dir, locks it,
// waiting for another ADD of the same attachment to finish, and writes a
// into it.
func MarkAdd(dir, name string, a Attachment) (*AddMark, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := flock(f, unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		// Whoever held the lock may have removed the file meanwhile: the
		// lock counts only on the file that is at path.
		if !samePath(f, path) {
			f.Close()
			continue
		}
		if err := f.Truncate(0); err == nil {
			_, err = f.WriteAt(b, 0)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
		return &AddMark{f: f, path: path}, nil
	}
}

// LockAddMark locks the marker named name in dir, if there is one, waiting
// for an ADD in progress to finish; nil when there is none. DEL takes it so
// as not to run beside an ADD of its attachment, and removes it with Done:
// after DEL, nothing of the ADD is left to sweep.
func LockAddMark(dir, name string) (*AddMark, error) {
	path := filepath.Join(dir, name)
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if err := flock(f, unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if samePath(f, path) {
			return &AddMark{f: f, path: path}, nil
		}
		f.Close()
	}
}

// Done removes the marker: the ADD registered its endpoint, or undid all it
// did, or DEL removed all of it.
func (m *AddMark) Done() {
	_ = os.Remove(m.path)
	m.f.Close()
}

// Release drops the lock and leaves the marker for anetd to act on.
func (m *AddMark) Release() { m.f.Close() }

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func samePath(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// SweepAddMarks looks at every marker in dir. The attachments of ADDs still
// in progress (lock held) are returned. For each marker of an ADD that is
// over, dead is called while the marker is locked (so no ADD of that
// attachment can start meanwhile), with the attachment and whether the
// marker could be read (an ADD that died before writing it had done
// nothing); the marker is removed when dead returns nil.
func SweepAddMarks(dir string, dead func(a Attachment, readable bool) error) (map[Attachment]bool, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return map[Attachment]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	live := map[Attachment]bool{}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		var a Attachment
		b, rerr := io.ReadAll(f)
		readable := rerr == nil && json.Unmarshal(b, &a) == nil && a.Validate() == nil
		if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			if readable {
				live[a] = true
			}
			f.Close()
			continue
		}
		if !samePath(f, path) {
			f.Close()
			continue
		}
		// Read again under the lock: what was read before may have been
		// an ADD that was still writing.
		b, rerr = io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
		a = Attachment{}
		readable = rerr == nil && json.Unmarshal(b, &a) == nil && a.Validate() == nil
		if err := dead(a, readable); err != nil {
			errs = append(errs, fmt.Errorf("marker %s: %w", path, err))
		} else {
			_ = os.Remove(path)
		}
		f.Close()
	}
	return live, errors.Join(errs...)
}
