package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
)

// TestProbeMany: one probe process, several destinations: the echo
// servers answer, a closed port and a socket that never answers do not,
// and the lines come in the order given.
func TestProbeMany(t *testing.T) {
	ls := startServe(t, loopbackArgs...)
	closed := closedPort(t)
	mute, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	for _, c := range []struct {
		proto string
		addrs []string
		want  []string
	}{
		{"tcp", []string{ls["tcp-echo"], closed, ls["http"]}, []string{"ok", "fail", "ok"}},
		{"udp", []string{closed, ls["udp-echo"], mute.LocalAddr().String()}, []string{"fail", "ok", "fail"}},
	} {
		var o, e bytes.Buffer
		if st := probeMain(append([]string{"--protocol", c.proto, "--timeout", "500ms"}, c.addrs...), &o, &e); st != 0 {
			t.Fatalf("probe %s: status %d: %s", c.proto, st, e.String())
		}
		lines := strings.Split(strings.TrimSpace(o.String()), "\n")
		if len(lines) != len(c.addrs) {
			t.Fatalf("probe %s: %d lines, want %d: %q", c.proto, len(lines), len(c.addrs), o.String())
		}
		for i, l := range lines {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != c.addrs[i] || f[1] != c.want[i] {
				t.Errorf("probe %s line %d = %q, want %s %s", c.proto, i, l, c.addrs[i], c.want[i])
			}
		}
	}
	for _, args := range [][]string{{}, {"--protocol", "http", "127.0.0.1:1"}, {"nohostport"}, {"--timeout", "0s", "127.0.0.1:1"}} {
		if st := run(append([]string{"probe"}, args...), &bytes.Buffer{}, &bytes.Buffer{}); st != 2 {
			t.Errorf("probe %q = %d, want 2", args, st)
		}
	}
}
