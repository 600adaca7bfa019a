//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLogField(t *testing.T) {
	l := `time=2026-12-01T21:47:47.067Z level=INFO msg="endpoint added" containerID=c1 ifName=eth0 mode=tc pod=bench/a000`
	for k, want := range map[string]string{"time": "2026-12-01T21:47:47.067Z", "msg": "endpoint added", "containerID": "c1", "mode": "tc", "pod": "bench/a000", "nope": ""} {
		if got := logField(l, k); got != want {
			t.Errorf("logField(%q) = %q, want %q", k, got, want)
		}
	}
}

// traceOf is what anet-cni prints with ANET_CNI_TRACE=1 (trace.go), for
// an ADD whose steps took the given µs: start, config, add, result, and
// anetd's steps after add.
func traceOf(id string, start, config, add, result int64, anetd map[string]int64) string {
	var b strings.Builder
	line := func(step string, el, d int64) {
		b.WriteString("anet-cni-trace verb=ADD container=" + id + " ifname=eth0 step=" + step +
			" elapsed_us=" + itoa(el) + " step_us=" + itoa(d) + "\n")
	}
	el := start
	line("start", el, start)
	el += config
	line("config", el, config)
	sent := el
	el += add
	line("add", el, add)
	for _, s := range []string{"reserved", "veth", "attached", "pod", "host", "mapped", "recorded"} {
		sent += anetd[s]
		line("anetd."+s, sent, anetd[s])
	}
	el += result
	line("result", el, result)
	return b.String()
}

func itoa(x int64) string { return strconv.FormatInt(x, 10) }

func TestParseTrace(t *testing.T) {
	out := "some other line\n" + traceOf("c1", 900, 300, 5000, 100, map[string]int64{"veth": 2000, "recorded": 1500}) +
		"anet-cni-trace verb=DEL container=c1 ifname=eth0 step=start elapsed_us=1 step_us=1\n"
	ls, err := parseTrace(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 11 {
		t.Fatalf("%d lines, want 11: %v", len(ls), ls)
	}
	if ls[0] != (traceLine{"start", 900 * time.Microsecond, 900 * time.Microsecond}) {
		t.Errorf("first line %+v", ls[0])
	}
	if ls[2].step != "add" || ls[2].elapsed != 6200*time.Microsecond || ls[2].took != 5000*time.Microsecond {
		t.Errorf("add line %+v", ls[2])
	}
	if ls[4].step != "anetd.veth" || ls[4].took != 2*time.Millisecond {
		t.Errorf("anetd.veth line %+v", ls[4])
	}
	if _, err := parseTrace("anet-cni-trace verb=ADD container=c ifname=eth0 step=add elapsed_us=x step_us=1\n"); err == nil {
		t.Error("a malformed line parsed")
	}
}

func TestTraceRows(t *testing.T) {
	mk := func(id string, attached, add int64, call, proc time.Duration) addTrace {
		raw := traceOf(id, 1000, 200, add, 100, map[string]int64{"reserved": 10, "veth": 2000, "attached": attached, "pod": 800, "host": 300, "mapped": 40, "recorded": 1500})
		return newAddTrace(id, opTiming{call: call, proc: proc, rec: &execCall{stderr: []byte("noise\n" + raw)}})
	}
	tc := []addTrace{
		mk("a", 400, 6000, 12*time.Millisecond, 11*time.Millisecond),
		mk("b", 400, 6000, 14*time.Millisecond, 13*time.Millisecond),
		mk("c", 400, 6000, 10*time.Millisecond, 9*time.Millisecond),
	}
	tcx := []addTrace{mk("x", 20000, 26000, 30*time.Millisecond, 29*time.Millisecond)}
	bad := newAddTrace("z", opTiming{rec: &execCall{}})
	rows, n, nx, note := traceRows(append(tc, bad), tcx)
	if n != 3 || nx != 1 || !strings.Contains(note, "1 traced ADDs could not be split") {
		t.Fatalf("n %d, nx %d, note %q", n, nx, note)
	}
	var keys []string
	got := map[string]stepRow{}
	for _, r := range rows {
		keys = append(keys, r.key)
		got[r.key] = r
	}
	want := []string{keyLibcni, keyOutside, "start", "config", "add",
		"anetd.reserved", "anetd.veth", "anetd.attached", "anetd.pod", "anetd.host", "anetd.mapped", "anetd.recorded", keyTransport,
		"result", keyProc, keyCall}
	if strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Fatalf("rows\n%v\nwant\n%v", keys, want)
	}
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	for k, w := range map[string][2]time.Duration{
		keyLibcni:        {ms(1), ms(1)},
		keyOutside:       {ms(11 - 7.3), ms(29 - 27.3)}, // proc less the end of "result"
		"add":            {ms(6), ms(26)},
		"anetd.attached": {ms(0.4), ms(20)},
		keyTransport:     {ms(6 - 5.05), ms(26 - 24.65)}, // add less anetd's steps
		keyCall:          {ms(12), ms(30)},
		keyProc:          {ms(11), ms(29)},
	} {
		r := got[k]
		if d := r.tc - w[0]; d.Abs() > time.Microsecond {
			t.Errorf("%s tc = %v, want %v", k, r.tc, w[0])
		}
		if d := r.tcx - w[1]; d.Abs() > time.Microsecond {
			t.Errorf("%s tcx = %v, want %v", k, r.tcx, w[1])
		}
	}
	if !got["anetd.veth"].indent || got["add"].indent || !got[keyTransport].indent {
		t.Error("anetd's steps and the transport are not shown inside add")
	}
	if rows, _, _, _ := traceRows(tc, nil); rows[0].tcx != -1 {
		t.Errorf("no tcx ADDs, yet tcx %v", rows[0].tcx)
	}

	s, call := medianSample(tc)
	if call != 12*time.Millisecond || !strings.HasPrefix(s, "anet-cni-trace verb=ADD container=a ") || strings.Contains(s, "noise") {
		t.Errorf("sample %v:\n%s", call, s)
	}
}

func TestAnetdAddedCheck(t *testing.T) {
	log := `time=2026-12-01T21:47:47.010Z level=INFO msg="endpoint added" containerID=c1 ifName=eth0 ip=10.244.1.2 hostIf=lxc1 mode=tcx pod=bench/a
time=2026-12-01T21:47:47.030Z level=INFO msg="endpoint added" containerID=c2 ifName=eth0 ip=10.244.1.3 hostIf=lxc2 mode=tc pod=bench/b
`
	ts := []addTrace{{containerID: "c1"}, {containerID: "c2"}}
	if c := anetdAddedCheck("n", log, ts[:1], "tcx"); !strings.HasPrefix(c, "ok:") {
		t.Error(c)
	}
	if c := anetdAddedCheck("n", log, ts, "tcx"); !strings.HasPrefix(c, "FAIL:") || !strings.Contains(c, "1 a mode other than tcx") {
		t.Error(c)
	}
	if c := anetdAddedCheck("n", log, append(ts, addTrace{containerID: "c3"}), "tc"); !strings.Contains(c, "1 have no \"endpoint added\"") {
		t.Error(c)
	}
	if c := anetdAddedCheck("n", log, nil, "tc"); !strings.HasPrefix(c, "FAIL:") {
		t.Error(c)
	}
}

func TestBridgeStracePhases(t *testing.T) {
	br := `200 2000.000000 execve("/bin/bridge", ["/bin/bridge"], 0x0) = 0 <0.000100>
201 2000.010000 execve("/bin/host-local", ["/bin/host-local"], 0x0) = 0 <0.000100>
201 2000.020000 exit_group(0) = ?
201 2000.020000 +++ exited with 0 +++
200 2000.025000 +++ exited with 0 +++
`
	f := filepath.Join(t.TempDir(), "b")
	if err := os.WriteFile(f, []byte(br), 0o644); err != nil {
		t.Fatal(err)
	}
	evs, err := readStrace(f)
	if err != nil {
		t.Fatal(err)
	}
	ds, note := bridgeStracePhases(evs)
	if note != "" || len(ds) != len(bridgeStraceNames) {
		t.Fatalf("%v %q", ds, note)
	}
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	for i, want := range []time.Duration{ms(10), ms(10), ms(5), ms(25)} {
		if d := ds[i] - want; d.Abs() > time.Microsecond {
			t.Errorf("%s: %v, want %v", bridgeStraceNames[i], ds[i], want)
		}
	}
	if _, note := bridgeStracePhases(evs[:1]); note == "" {
		t.Error("a trace without host-local split")
	}
}

func TestReportLeavesOutSectionsNotRun(t *testing.T) {
	r := &report{cfg: config{sections: map[string]bool{"prog": true}}, errs: map[string]error{}}
	md := r.markdown()
	if !strings.Contains(md, "## 3. Per-packet") {
		t.Error("the section run is missing")
	}
	for _, h := range []string{"## 1.", "## 2.", "## 4."} {
		if strings.Contains(md, h) {
			t.Errorf("section %s is in a report of -only prog", h)
		}
	}
}
