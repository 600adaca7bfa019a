//go:build linux

package lab

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestDisableSystemContainerd checks what ensureRuntime says about the
// system containerd service (issue 7, item 13): on a machine without
// systemd as PID 1, where the disable works and a stop cannot, it says
// that the service was disabled, not that disabling failed.
func TestDisableSystemContainerd(t *testing.T) {
	for _, tc := range []struct {
		name      string
		booted    bool
		fail      map[string]error
		wantCalls []string
		want      []string // in the messages, in order
		notWant   string
	}{
		{
			name: "no systemd", booted: false,
			wantCalls: []string{"disable containerd"},
			want:      []string{"disabled the system containerd service", "systemd is not the init system here"},
			notWant:   "could not",
		},
		{
			name: "systemd", booted: true,
			wantCalls: []string{"disable containerd", "stop containerd"},
			want:      []string{"disabled the system containerd service", "stopped the system containerd service"},
			notWant:   "could not",
		},
		{
			name: "stop fails", booted: true, fail: map[string]error{"stop containerd": errors.New("exit status 5")},
			wantCalls: []string{"disable containerd", "stop containerd"},
			want:      []string{"disabled the system containerd service", "could not stop the system containerd service: exit status 5"},
		},
		{
			name: "disable fails", booted: false, fail: map[string]error{"disable containerd": errors.New("exit status 1: Failed to disable unit")},
			wantCalls: []string{"disable containerd"},
			want:      []string{"could not disable the system containerd service"},
			notWant:   "disabled the",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls, said []string
			disableSystemContainerd(func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) },
				func(args ...string) error {
					c := strings.Join(args, " ")
					calls = append(calls, c)
					return tc.fail[c]
				}, tc.booted)
			if !reflect.DeepEqual(calls, tc.wantCalls) {
				t.Errorf("systemctl calls %q, want %q", calls, tc.wantCalls)
			}
			all := strings.Join(said, "\n")
			rest := all
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Errorf("messages %q lack %q (in order)", all, w)
					break
				}
				rest = rest[i+len(w):]
			}
			if tc.notWant != "" && strings.Contains(all, tc.notWant) {
				t.Errorf("messages %q say %q", all, tc.notWant)
			}
		})
	}
}
