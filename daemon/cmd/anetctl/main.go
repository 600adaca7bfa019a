// anetctl is the command-line client of anetd's socket API.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anet-dev/anet/daemon/api"
)

const usage = `usage: anetctl [--socket PATH] COMMAND

commands:
  status                  anetd's state on this node
  endpoint list [-o json] the node's endpoints and their counters
  service list [-o json]  the Service frontends anetd programs, with their backends
  policy NAMESPACE/POD [-o json]
                          the pod's effective NetworkPolicy on this node: isolation per
                          direction, the policies selecting it, the allowed rules and
                          the identities they resolve to
  identity list [-o json] the security identities anetd knows (reserved, pod, CIDR)
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "anetctl: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("anetctl", flag.ContinueOnError)
	socket := fs.String("socket", api.DefaultSocket, "anetd's unix socket (picks the node)")
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := api.NewClient(*socket)
	rest := fs.Args()
	switch {
	case len(rest) == 1 && rest[0] == "status":
		return status(ctx, c, out)
	case len(rest) >= 2 && (rest[0] == "endpoint" || rest[0] == "ep") && rest[1] == "list":
		lf := flag.NewFlagSet("endpoint list", flag.ContinueOnError)
		format := lf.String("o", "table", "output format: table or json")
		if err := lf.Parse(rest[2:]); err != nil {
			return err
		}
		if *format != "table" && *format != "json" {
			return fmt.Errorf("-o: unknown format %q (table or json)", *format)
		}
		return endpointList(ctx, c, out, *format)
	case len(rest) >= 2 && (rest[0] == "service" || rest[0] == "svc") && rest[1] == "list":
		format, err := outputFormat("service list", rest[2:])
		if err != nil {
			return err
		}
		return serviceList(ctx, c, out, format)
	case len(rest) >= 1 && rest[0] == "policy":
		if len(rest) < 2 {
			return errors.New("policy: want NAMESPACE/POD")
		}
		namespace, name, err := api.ParsePod(rest[1])
		if err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		format, err := outputFormat("policy", rest[2:])
		if err != nil {
			return err
		}
		return endpointPolicy(ctx, c, out, namespace, name, format)
	case len(rest) >= 2 && (rest[0] == "identity" || rest[0] == "id") && rest[1] == "list":
		format, err := outputFormat("identity list", rest[2:])
		if err != nil {
			return err
		}
		return identityList(ctx, c, out, format)
	}
	fs.Usage()
	return errors.New("unknown command")
}

func status(ctx context.Context, c *api.Client, out io.Writer) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "no (" + st.Reason + ")"
	}
	fmt.Fprintf(w, "Node:\t%s\n", st.NodeName)
	fmt.Fprintf(w, "Ready:\t%s\n", ready)
	fmt.Fprintf(w, "Pod CIDR:\t%s (gateway %s)\n", st.PodCIDR, st.Gateway)
	fmt.Fprintf(w, "Addresses:\t%d of %d allocated\n", st.Allocated, st.Capacity)
	fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
	fmt.Fprintf(w, "BPF root:\t%s\n", st.BPFRoot)
	fmt.Fprintf(w, "Version:\t%s\n", st.Version)
	fmt.Fprintf(w, "Up since:\t%s\n", st.Started.Format(time.RFC3339))
	return w.Flush()
}

func endpointList(ctx context.Context, c *api.Client, out io.Writer, format string) error {
	eps, err := c.ListEndpoints(ctx)
	if err != nil {
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(eps)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NETWORK\tCONTAINER\tIF\tPOD\tIP\tHOST-IF\tMODE\tTX-PKTS\tTX-BYTES\tRX-PKTS\tRX-BYTES\tDROPS")
	for _, ep := range eps {
		var tx, rx api.Counter
		var drops []string
		for _, ct := range ep.Counters {
			switch {
			case ct.Reason != "forwarded":
				drops = append(drops, fmt.Sprintf("%s/%s=%d", ct.Dir, ct.Reason, ct.Packets))
			case ct.Dir == "egress":
				tx = ct
			default:
				rx = ct
			}
		}
		pod := "-"
		if ep.Pod.Name != "" {
			pod = ep.Pod.Namespace + "/" + ep.Pod.Name
		}
		dropText := "-"
		if len(drops) > 0 {
			dropText = strings.Join(drops, ",")
		}
		network := ep.Network
		if network == "" {
			network = "-" // recorded before networks were
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", network, short(ep.ContainerID), ep.IfName, pod, ep.IP,
			ep.HostIfName, ep.AttachMode, tx.Packets, tx.Bytes, rx.Packets, rx.Bytes, dropText)
	}
	return w.Flush()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func outputFormat(cmd string, args []string) (string, error) {
	lf := flag.NewFlagSet(cmd, flag.ContinueOnError)
	format := lf.String("o", "table", "output format: table or json")
	if err := lf.Parse(args); err != nil {
		return "", err
	}
	if lf.NArg() > 0 {
		return "", fmt.Errorf("%s: unexpected arguments %v", cmd, lf.Args())
	}
	if *format != "table" && *format != "json" {
		return "", fmt.Errorf("-o: unknown format %q (table or json)", *format)
	}
	return *format, nil
}

// serviceList prints one line per frontend: the Service (and its port's
// name), the kind of address (with "local" for a traffic policy Local,
// "in-cluster" for what pods see of an externalTrafficPolicy Local
// address), the address, the protocol and the backends with their states,
// those taking new connections first.
func serviceList(ctx context.Context, c *api.Client, out io.Writer, format string) error {
	fs, err := c.ListServices(ctx)
	if err != nil {
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(fs)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVICE\tKIND\tFRONTEND\tPROTO\tBACKENDS")
	for _, f := range fs {
		name := f.Namespace + "/" + f.Name
		if f.Port != "" {
			name += ":" + f.Port
		}
		kind := f.Kind
		if f.ExternalLocal || f.InternalLocal {
			kind += " local"
		}
		if f.Scope == "internal" {
			kind += " (in-cluster)"
		}
		var bs []string
		for _, b := range f.Backends {
			bs = append(bs, fmt.Sprintf("%s (%s)", b.Address, b.State))
		}
		backends := strings.Join(bs, ", ")
		if f.Active == 0 {
			if backends == "" {
				backends = "none: refused"
			} else {
				backends = "none usable, refused: " + backends
			}
		}
		if !f.Programmed {
			why := "pending"
			if f.Error != "" {
				why = f.Error
			}
			backends = "NOT PROGRAMMED (" + why + "): " + backends
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", name, kind, f.Address, f.Protocol, backends)
	}
	return w.Flush()
}
