//go:build linux

package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLogField(t *testing.T) {
	l := `time=2026-12-01T21:47:47.067Z level=INFO msg="address allocated" containerID=c1 ifName=eth0 pod=bench/a000`
	for k, want := range map[string]string{"time": "2026-12-01T21:47:47.067Z", "msg": "address allocated", "containerID": "c1", "pod": "bench/a000", "nope": ""} {
		if got := logField(l, k); got != want {
			t.Errorf("logField(%q) = %q, want %q", k, got, want)
		}
	}
}

func TestAnetdLogPhases(t *testing.T) {
	log := `time=2026-12-01T21:47:47.010Z level=INFO msg="address allocated" containerID=c1 ifName=eth0
time=2026-12-01T21:47:47.030Z level=INFO msg="endpoint registered" containerID=c1 ifName=eth0
`
	start := time.Date(2026, 12, 1, 21, 47, 47, 0, time.UTC)
	ps, n, note := anetdLogPhases(log, []addCall{{"c1", start, start.Add(35 * time.Millisecond)}, {"c2", start, start}})
	if note != "" || n != 1 || len(ps) != 3 {
		t.Fatalf("got %v %d %q", ps, n, note)
	}
	for i, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 5 * time.Millisecond} {
		if ps[i].d != want {
			t.Errorf("phase %d = %v, want %v", i, ps[i].d, want)
		}
	}
}

func TestStracePhases(t *testing.T) {
	anet := `100 1000.000000 execve("/bin/anet-cni", ["/bin/anet-cni"], 0x0 /* 6 vars */) = 0 <0.000100>
102 1000.010000 connect(8, {sa_family=AF_UNIX, sun_path="/run/anetd.sock"}, 49) = 0 <0.000020>
103 1000.015000 setns(5, CLONE_NEWNET) = 0 <0.000010>
100 1000.020000 bpf(BPF_OBJ_GET, {pathname="/b/progs/p"}, 24) = 9 <0.000020>
100 1000.021000 bpf(BPF_LINK_CREATE, {link_create={prog_fd=9}}, 64 <unfinished ...>
100 1000.027000 <... bpf resumed>) = 12 <0.006000>
100 1000.028000 bpf(BPF_LINK_CREATE, {link_create={prog_fd=11}}, 64) = 13 <0.004000>
100 1000.032000 bpf(BPF_OBJ_PIN, {pathname="/b/links/x"}, 24) = 0 <0.000000>
102 1000.033000 connect(9, {sa_family=AF_UNIX, sun_path="/run/anetd.sock"}, 49) = 0 <0.000020>
100 1000.040000 exit_group(0) = ?
100 1000.041000 +++ exited with 0 +++
`
	dir := t.TempDir()
	f := filepath.Join(dir, "a")
	if err := os.WriteFile(f, []byte(anet), 0o644); err != nil {
		t.Fatal(err)
	}
	evs, err := readStrace(f)
	if err != nil {
		t.Fatal(err)
	}
	ds, note := anetStracePhases(evs)
	if note != "" {
		t.Fatal(note)
	}
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	want := []time.Duration{ms(10), ms(5), ms(5), ms(12), ms(10), ms(9), ms(41)}
	for i := range want {
		if d := ds[i] - want[i]; d > time.Microsecond || d < -time.Microsecond {
			t.Errorf("%s: %v, want %v", anetStraceNames[i], ds[i], want[i])
		}
	}
	br := `200 2000.000000 execve("/bin/bridge", ["/bin/bridge"], 0x0) = 0 <0.000100>
201 2000.010000 execve("/bin/host-local", ["/bin/host-local"], 0x0) = 0 <0.000100>
201 2000.020000 +++ exited with 0 +++
200 2000.025000 +++ exited with 0 +++
`
	if err := os.WriteFile(f, []byte(br), 0o644); err != nil {
		t.Fatal(err)
	}
	evs, _ = readStrace(f)
	ds, note = bridgeStracePhases(evs)
	if note != "" || len(ds) != 4 {
		t.Fatalf("%v %q", ds, note)
	}
	if _, note := anetStracePhases(evs); note == "" {
		t.Error("a bridge trace split as anet's")
	}
}
