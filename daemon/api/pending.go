package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"
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
