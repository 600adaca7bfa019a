package main

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/anet-dev/anet/daemon/api"
)

// ANET_CNI_TRACE=1 writes one line per step of ADD to stderr (stdout
// carries the result), all at once when the ADD ends, failed or not:
//
//	anet-cni-trace verb=ADD container=<id> ifname=<name> step=<step> elapsed_us=<n> step_us=<n>
//
// elapsed_us counts from the plugin's start (its Go package init) to the
// end of the step, step_us is the step alone. The plugin's steps, in order:
// start (skel has read the environment and stdin), config (config and
// CNI_ARGS parsed, netns opened), add (the one request to anetd, which does
// the work), result (the result printed). After add come anetd's own steps
// as it reported them, named anetd.<step> (received, decoded, reserved,
// veth, attached, pod, host, mapped, recorded: see daemon/apiserver,
// daemon/endpoint and daemon/datapath), with
// elapsed_us counted from the start of the request. A failed ADD stops at
// the step that failed.
const traceEnv = "ANET_CNI_TRACE"

// processStart is as close to the plugin's start as Go code gets.
var processStart = time.Now()

type tracer struct {
	verb, container, ifName string
	on                      bool
	last                    time.Time
	sent                    time.Time    // when the request to anetd started
	buf                     bytes.Buffer // the lines, written at once by flush
}

func newTracer(verb, container, ifName string) *tracer {
	return &tracer{verb: verb, container: container, ifName: ifName, on: os.Getenv(traceEnv) == "1", last: processStart}
}

func (t *tracer) line(step string, elapsed, d time.Duration) {
	fmt.Fprintf(&t.buf, "anet-cni-trace verb=%s container=%s ifname=%s step=%s elapsed_us=%d step_us=%d\n",
		t.verb, t.container, t.ifName, step, elapsed.Microseconds(), d.Microseconds())
}

// step marks the end of a step of the plugin.
func (t *tracer) step(name string) {
	now := time.Now()
	if t.on {
		t.line(name, now.Sub(processStart), now.Sub(t.last))
	}
	t.sent = t.last
	t.last = now
}

// anetd writes the steps anetd reported for the request that just ended.
func (t *tracer) anetd(steps []api.TraceStep) {
	if !t.on {
		return
	}
	elapsed := t.sent.Sub(processStart)
	for _, s := range steps {
		d := time.Duration(s.Micros) * time.Microsecond
		elapsed += d
		t.line("anetd."+s.Step, elapsed, d)
	}
}

// flush writes the lines, in one write: a write to a pipe per line made
// the trace cost the ADD it measures about 0.1 ms.
func (t *tracer) flush() {
	if t.buf.Len() > 0 {
		_, _ = os.Stderr.Write(t.buf.Bytes())
		t.buf.Reset()
	}
}
