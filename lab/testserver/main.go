// Command anet-testserver is the workload of anet's test lab, in the spirit
// of Kubernetes' agnhost: one small static binary (standard library only)
// that serves, probes and pauses (the standard library, and golang.org/x/net's
// DNS message parser for the dns probe).
//
//	anet-testserver                      serve with the defaults below
//	anet-testserver serve [--http ADDR] [--tcp-echo ADDR] [--udp-echo ADDR]
//	anet-testserver connect --protocol tcp|udp|http --address HOST:PORT [--timeout 2s] [--path /] [--hold 10s] [--repeat N --interval 50ms]
//	anet-testserver probe [--protocol tcp|udp] [--timeout 2s] HOST:PORT...
//	anet-testserver dns --name NAME [--server IP:PORT] [--timeout 2s]
//	anet-testserver pause
//
// serve answers HTTP on --http (default :8080): "GET /" returns
// {"pod":…,"client":…,"host":…} where pod is $POD_NAME (or the hostname),
// client the remote ip:port the server saw and host the hostname;
// "GET /healthz" returns 200 "ok". It echoes TCP streams on --tcp-echo and
// UDP datagrams on --udp-echo (both default :8081). An empty address
// disables a listener. Once every listener is bound it prints one line per
// listener, "listening <http|tcp-echo|udp-echo> <bound address>", then
// "ready", to stderr, so that ":0" ports can be discovered. SIGTERM or
// SIGINT stop it promptly with exit status 0.
//
// connect is the probe that tests run inside pods: exit status 0 when the
// destination answers (tcp: the connection is established; udp: one
// datagram is echoed back within the timeout; http: GET returns 200, whose
// body is copied to stdout), 1 otherwise with the reason on stderr, 2 for a
// usage error. The UDP probe sends exactly one datagram (no retransmission)
// so that tests counting packets, verdicts or policy-log entries see one.
//
// probe is connect's tcp or udp probe for many destinations at once, from
// one process: it prints one line per destination, in the order given,
// "HOST:PORT ok" or "HOST:PORT fail REASON", and exits 0 once every one
// has its verdict (2 for a usage error).
//
// dns resolves a name and prints {"name","server","rcode","authoritative",
// "addresses","ms"} as JSON: with --server by one UDP query for its A
// records to that server (exit status 0 for any answer, whatever its
// rcode; the name is taken as fully qualified), without it through the
// pod's own resolver (/etc/resolv.conf, as kubelet wrote it: exit status 0
// when the name resolved). 1 when no answer came within the timeout.
//
// pause is the pod sandbox's process: it waits for SIGTERM or SIGINT and
// exits 0; as PID 1 it also reaps the zombies reparented to it. The pause
// image runs this same binary with the argument "pause".
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `usage:
  anet-testserver                      (same as "serve" with the defaults)
  anet-testserver serve [--http :8080] [--tcp-echo :8081] [--udp-echo :8081]
  anet-testserver connect --protocol tcp|udp|http --address HOST:PORT [--timeout 2s] [--path /] [--hold 10s] [--repeat N --interval 50ms]
  anet-testserver probe [--protocol tcp|udp] [--timeout 2s] HOST:PORT...
  anet-testserver dns --name NAME [--server IP:PORT] [--timeout 2s]
  anet-testserver pause
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a command line (without the program name) and returns the
// process exit status.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		// Stop on the first SIGTERM/SIGINT; stop() restores the default
		// action, so a second signal kills a shutdown that hangs.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return serveMain(ctx, stop, args, stderr)
	case "connect":
		return connectMain(args, stdout, stderr)
	case "probe":
		return probeMain(args, stdout, stderr)
	case "dns":
		return dnsMain(args, stdout, stderr)
	case "pause":
		if len(args) != 0 {
			fmt.Fprintf(stderr, "anet-testserver pause: unexpected arguments %q\n", args)
			return 2
		}
		return pause(nil)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "anet-testserver: unknown command %q\n%s", cmd, usage)
		return 2
	}
}
