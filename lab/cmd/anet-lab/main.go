// Command anet-lab runs a real Kubernetes cluster of simulated nodes on one
// machine, wired by anet: a control plane, N nodes each with its own
// containerd, kubelet and anetd, and an outside client, all inside network
// namespaces of their own (see package lab).
//
//	anet-lab up [--nodes 2] [--dir /var/lib/anet-lab] [--name anet-lab] [--cni anet|bridge] [--dns=true|false] [--kube-proxy iptables|nftables] [--endpoint-gc-grace D] [--keep-on-failure]
//	anet-lab status [--dir DIR]
//	anet-lab down [--dir DIR]
//	anet-lab kubectl [--dir DIR] -- ARGS...
//	anet-lab exec [--dir DIR] NAMESPACE/POD -- CMD...
//	anet-lab outside [--dir DIR] -- CMD...
//	anet-lab node [--dir DIR] NODE -- CMD...
//	anet-lab node [--dir DIR] add
//	anet-lab node [--dir DIR] remove NODE
//	anet-lab restart [--dir DIR] [--signal TERM|KILL] NODE/COMPONENT
//
// up deploys the cluster DNS (CoreDNS as the kube-dns Service) unless
// --dns=false; --kube-proxy runs the real kube-proxy on every node beside
// anet, which then leaves the Services to it (anetd --enable-services=false). exec runs a program of the machine inside a pod's network
// namespace and its container's cgroup (so that the node's socket-level
// hooks see it, as they see `kubectl exec`); `anet-lab kubectl -- exec POD
// -- CMD` runs one inside the pod's container. outside and node run a program in the outside client's or a
// node's namespaces; node add grows the running lab by one node (the next
// name and address), node remove takes one out. Lab traffic is always sent from inside the lab: the
// machine's own network namespace has no route to it, on purpose.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/anet-dev/anet/lab"
)

const usage = `usage:
  anet-lab up [--nodes 2] [--dir DIR] [--name anet-lab] [--cni anet|bridge] [--dns=true|false] [--kube-proxy iptables|nftables] [--endpoint-gc-grace D] [--keep-on-failure]
  anet-lab status [--dir DIR]
  anet-lab down [--dir DIR]
  anet-lab kubectl [--dir DIR] -- ARGS...
  anet-lab exec [--dir DIR] NAMESPACE/POD -- CMD...
  anet-lab outside [--dir DIR] -- CMD...
  anet-lab node [--dir DIR] NODE -- CMD...
  anet-lab node [--dir DIR] add                (a node more: containerd, kubelet, anetd)
  anet-lab node [--dir DIR] remove NODE
  anet-lab restart [--dir DIR] [--signal TERM|KILL] NODE/COMPONENT   (containerd, kubelet, anetd)
DIR defaults to $ANET_LAB_DIR, else /var/lib/anet-lab.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func defaultDir() string {
	if d := os.Getenv("ANET_LAB_DIR"); d != "" {
		return d
	}
	return lab.DefaultDir
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("anet-lab "+cmd, flag.ContinueOnError)
	dir := fs.String("dir", defaultDir(), "the lab's directory")
	var nodes *int
	var name *string
	var keep *bool
	var cni *string
	var gcGrace *time.Duration
	var dns *bool
	var kubeProxy *string
	sigName := fs.String("signal", "TERM", "restart: the signal that stops the component (TERM or KILL)")
	if cmd == "up" {
		nodes = fs.Int("nodes", lab.DefaultNodes, "number of simulated nodes")
		name = fs.String("name", lab.DefaultName, "prefix of the lab's namespaces and cgroups")
		keep = fs.Bool("keep-on-failure", false, "leave a lab that failed to come up in place, for inspection")
		gcGrace = fs.Duration("endpoint-gc-grace", 0, "anetd's --endpoint-gc-grace (0: anetd's default)")
		dns = fs.Bool("dns", true, "deploy the cluster DNS (CoreDNS, the kube-dns Service) and wait for it")
		kubeProxy = fs.String("kube-proxy", "", "run the real kube-proxy in this mode (iptables or nftables) on every node, anet's own service handling off")
		cni = fs.String("cni", lab.CNIAnet, "the pods' network: anet, or bridge (the reference bridge + host-local plugins, no anetd; for comparisons)")
	}
	// Arguments after "--" belong to the command run in the lab.
	var rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	pos := fs.Args()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "anet-lab: run as root (network namespaces, mounts, cgroups, eBPF)")
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "anet-lab %s: %v\n", cmd, err)
		return 1
	}
	switch cmd {
	case "up":
		if len(pos) > 0 || len(rest) > 0 {
			return usageErr("up takes no arguments")
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		defer stop()
		t0 := time.Now()
		l, err := lab.Up(ctx, lab.Options{Nodes: *nodes, Dir: *dir, Name: *name, Progress: os.Stderr, KeepOnFailure: *keep, CNI: *cni, EndpointGCGrace: *gcGrace, DNS: *dns, KubeProxy: *kubeProxy})
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(os.Stderr, "lab up in %.0fs. Try:\n  anet-lab kubectl -- get nodes -o wide\n  anet-lab status\n  anet-lab down\n", time.Since(t0).Seconds())
		_ = l // the lab lives on after this process: its processes are in sessions of their own
		return 0
	case "down":
		if len(pos) > 0 || len(rest) > 0 {
			return usageErr("down takes no arguments")
		}
		if err := lab.DownDir(*dir, os.Stderr); err != nil {
			return fail(err)
		}
		return 0
	}
	l, err := lab.Open(*dir)
	if errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("no lab in %s (anet-lab up)", *dir))
	}
	if err != nil {
		return fail(err)
	}
	switch cmd {
	case "status":
		if err := l.Status(os.Stdout); err != nil {
			return fail(err)
		}
		return 0
	case "kubectl":
		return interactive(l.KubectlCmd(append(pos, rest...)...))
	case "exec":
		if len(pos) != 1 || len(rest) == 0 {
			return usageErr("exec NAMESPACE/POD -- CMD...")
		}
		ns, pod, ok := strings.Cut(pos[0], "/")
		if !ok {
			ns, pod = "default", pos[0]
		}
		c, err := l.ExecCmd(ns, pod, rest...)
		if err != nil {
			return fail(err)
		}
		return interactive(c)
	case "outside":
		if len(rest) == 0 {
			return usageErr("outside -- CMD...")
		}
		return interactive(l.OutsideCmd(rest...))
	case "node":
		switch {
		case len(pos) == 1 && pos[0] == "add" && len(rest) == 0:
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			l.SetProgress(os.Stderr)
			n, err := l.AddNode(ctx)
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(os.Stderr, "%s added at %s\n", n.Name, n.Address)
			return 0
		case len(pos) == 2 && pos[0] == "remove" && len(rest) == 0:
			l.SetProgress(os.Stderr)
			if err := l.RemoveNode(pos[1]); err != nil {
				return fail(err)
			}
			return 0
		}
		if len(pos) != 1 || len(rest) == 0 {
			return usageErr("node NODE -- CMD..., node add, or node remove NODE")
		}
		c, err := l.NodeCmd(pos[0], rest...)
		if err != nil {
			return fail(err)
		}
		return interactive(c)
	case "restart":
		if len(pos) != 1 {
			return usageErr("restart NODE/COMPONENT")
		}
		sig := syscall.SIGTERM
		switch strings.TrimPrefix(strings.ToUpper(*sigName), "SIG") {
		case "TERM":
		case "KILL":
			sig = syscall.SIGKILL
		default:
			return usageErr("--signal TERM or KILL")
		}
		if err := l.Restart(context.Background(), pos[0], sig); err != nil {
			return fail(err)
		}
		p, _ := l.Component(pos[0])
		fmt.Fprintf(os.Stderr, "%s restarted (pid %d)\n", pos[0], p.PID)
		return 0
	default:
		return usageErr("unknown command " + cmd)
	}
}

func usageErr(msg string) int {
	fmt.Fprintf(os.Stderr, "anet-lab: %s\n%s", msg, usage)
	return 2
}

// interactive runs c attached to our terminal and returns its exit status.
func interactive(c *exec.Cmd) int {
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	signal.Ignore(os.Interrupt) // the child gets ^C itself
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "anet-lab: %v\n", err)
		return 1
	}
	return 0
}
