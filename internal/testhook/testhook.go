// Package testhook lets the crash and ordering tests stop anetd at a named
// step of its work: an abrupt exit there, as if killed (no deferred undo
// runs), or a pause until SIGUSR1 so that a test can look at the node
// mid-way. Both are read from the environment once; never set them on a
// real node.
package testhook

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Environment variables, each naming one step.
const (
	CrashEnv = "ANET_TEST_CRASH_AT" // exit at once with status 137
	HoldEnv  = "ANET_TEST_HOLD_AT"  // wait for SIGUSR1, after a line on stderr
)

var (
	crashAt = os.Getenv(CrashEnv)
	holdAt  = os.Getenv(HoldEnv)
)

// Point marks the end of a step.
func Point(step string) {
	if crashAt == step {
		os.Exit(137)
	}
	if holdAt == step {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR1)
		fmt.Fprintf(os.Stderr, "anet-test-hold step=%s pid=%d\n", step, os.Getpid())
		<-c
		signal.Stop(c)
	}
}
