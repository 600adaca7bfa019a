package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/renameio/v2"
)

// PendingReleaseDir is where anet-cni records a DEL it could not tell anetd
// about (anetd down): beside anetd's socket. anetd applies and removes the
// records when it is back, and checks again every few seconds.
func PendingReleaseDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "pending-release")
}

// PendingRelease is a DEL that anetd did not hear of, and when it was
// recorded: anetd applies it only to an endpoint older than that (a later
// ADD of the same attachment is another endpoint). Records written before
// the time was kept have none and apply to any.
type PendingRelease struct {
	Attachment
	Recorded time.Time `json:"recorded,omitzero"`
}

// RecordPendingRelease writes a record for a (name is unique per attachment)
// atomically.
func RecordPendingRelease(dir, name string, a Attachment) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(PendingRelease{Attachment: a, Recorded: time.Now().UTC()})
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(dir, name), b, 0o600)
}

// ReadPendingReleases returns the records in dir by file path. Unreadable
// records are returned with a zero Attachment so that the caller drops them.
func ReadPendingReleases(dir string) (map[string]PendingRelease, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]PendingRelease{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		var a PendingRelease
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &a)
		}
		out[path] = a
	}
	return out, nil
}
