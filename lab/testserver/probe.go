package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// probeMain runs the probe command: each address once, all at the same
// time, one line per address in the order given, "ADDRESS ok" or
// "ADDRESS fail REASON". 0 once every address has its verdict (whatever
// the verdicts), 2 for a usage error. It is connect's tcp and udp probes
// for many destinations from one process, so that a test matrix of many
// pairs costs one exec per source pod.
func probeMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	protocol := fs.String("protocol", "tcp", "tcp or udp")
	timeout := fs.Duration("timeout", 2*time.Second, "give up on an address after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "anet-testserver probe: "+format+"\n", a...)
		return 2
	}
	if *protocol != "tcp" && *protocol != "udp" {
		return usageErr("unknown --protocol %q (want tcp or udp)", *protocol)
	}
	if *timeout <= 0 {
		return usageErr("--timeout must be positive")
	}
	if fs.NArg() == 0 {
		return usageErr("no address to probe")
	}
	for _, a := range fs.Args() {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return usageErr("%q is not HOST:PORT: %v", a, err)
		}
	}
	verdicts := make([]error, fs.NArg())
	d := dialer(0)
	var wg sync.WaitGroup
	for i, a := range fs.Args() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			if *protocol == "tcp" {
				verdicts[i] = probeTCP(ctx, d, a)
			} else {
				verdicts[i] = probeUDP(ctx, d, a)
			}
		}()
	}
	wg.Wait()
	for i, a := range fs.Args() {
		if verdicts[i] == nil {
			fmt.Fprintf(stdout, "%s ok\n", a)
		} else {
			fmt.Fprintf(stdout, "%s fail %s\n", a, strings.ReplaceAll(verdicts[i].Error(), "\n", " "))
		}
	}
	return 0
}
