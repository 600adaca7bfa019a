package main

import (
	"os"
	"os/signal"
	"syscall"
)

// pause waits for SIGTERM or SIGINT and returns 0. As PID 1 (of the pod's
// PID namespace) it reaps whatever exits under it, like the pause
// container's own program. ready, if not nil, is called once the signal
// handlers are in place (tests use it).
func pause(ready func()) int {
	sigs := make(chan os.Signal, 8)
	reap := os.Getpid() == 1
	if reap {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
		reapChildren() // whatever exited before the handler was there
	} else {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	if ready != nil {
		ready()
	}
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reapChildren()
			continue
		}
		return 0
	}
	return 0
}

// reapChildren collects every child that has exited, without blocking.
// SIGCHLD notifications coalesce, so one signal may stand for many.
func reapChildren() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
