package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Two switches read from the environment, both writing to stderr only
// (stdout carries the result):
//
// ANET_CNI_TRACE=1 writes one line per step of ADD, when the step ends:
//
//	anet-cni-trace verb=ADD container=<id> ifname=<name> step=<step> elapsed_us=<n> step_us=<n>
//
// elapsed_us counts from the plugin's start (its Go package init) to the end
// of the step, step_us is the step alone. The steps, in order: start (skel
// has read the environment and stdin), config (config and CNI_ARGS parsed,
// netns opened), allocate (the pending-ADD mark and the allocate RPC), veth
// (the pair made, down, IPv6 off on both ends), attach (the pinned programs
// attached to the host side), pod (the pod side up with its address, routes
// and gateway neighbour), host (the host side up with the route and
// neighbour to the pod), register (the register RPC), result (the result
// printed). A failed ADD stops at the step that failed.
//
// ANET_CNI_TEST_HOLD=<step> is for tests only: when that step ends, the
// plugin writes "anet-cni-test-hold step=<step> pid=<pid>" on stderr and
// waits for SIGUSR1 to go on, so that a test can look at the node mid-ADD or
// kill the plugin at a known point. Never set it on a real node: an ADD
// would wait for ever.
const (
	traceEnv = "ANET_CNI_TRACE"
	holdEnv  = "ANET_CNI_TEST_HOLD"
)

// processStart is as close to the plugin's start as Go code gets.
var processStart = time.Now()

type tracer struct {
	verb, container, ifName string
	on                      bool
	hold                    string
	last                    time.Time
}

func newTracer(verb, container, ifName string) *tracer {
	return &tracer{
		verb: verb, container: container, ifName: ifName,
		on: os.Getenv(traceEnv) == "1", hold: os.Getenv(holdEnv), last: processStart,
	}
}

// step marks the end of a step: a trace line, and the test hold.
func (t *tracer) step(name string) {
	now := time.Now()
	if t.on {
		fmt.Fprintf(os.Stderr, "anet-cni-trace verb=%s container=%s ifname=%s step=%s elapsed_us=%d step_us=%d\n",
			t.verb, t.container, t.ifName, name, now.Sub(processStart).Microseconds(), now.Sub(t.last).Microseconds())
	}
	t.last = now
	if t.hold != "" && t.hold == name {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR1)
		fmt.Fprintf(os.Stderr, "anet-cni-test-hold step=%s pid=%d\n", name, os.Getpid())
		<-c
		signal.Stop(c)
		t.last = time.Now()
	}
}
