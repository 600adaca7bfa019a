//go:build linux

package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab/controlplane"
)

// Status writes what the lab holds: its components and whether each
// recorded process still runs, each anetd's readiness, and
// `kubectl get nodes -o wide`.
func (l *Lab) Status(w io.Writer) error {
	s := l.st.get()
	state := "up"
	if !s.Ready {
		state = "NOT READY (coming up, or left by a failed or killed `up`)"
	}
	fmt.Fprintf(w, "lab %q in %s: %s, created %s\n", s.Name, s.Dir, state, s.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "apiserver %s (kubectl: anet-lab kubectl -- ARGS)\n", s.APIServerURL)
	if s.ClusterDNS != "" {
		dns := "not ready"
		if ready, pod, err := l.dnsReady(); err != nil {
			dns = err.Error()
		} else if ready {
			dns = "ready (" + pod + ")"
		}
		fmt.Fprintf(w, "cluster DNS: Service kube-system/kube-dns at %s, CoreDNS %s\n", s.ClusterDNS, dns)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tPID\tSTATE\tDETAIL")
	for _, p := range s.Procs {
		alive := "dead"
		if p.alive() {
			alive = "running"
		}
		detail := ""
		for _, n := range s.Nodes {
			if strings.HasPrefix(p.Name, n.Name+"/") && strings.HasSuffix(p.Name, "/anetd") && p.alive() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				st, err := api.NewClient(n.Socket).Status(ctx)
				cancel()
				switch {
				case err != nil:
					detail = "api: " + err.Error()
				case st.Ready:
					detail = fmt.Sprintf("ready, podCIDR %s, %d endpoint(s)", st.PodCIDR, st.Endpoints)
					if n.HealthAddr != "" {
						detail += ", /readyz " + readyz(l.netnsPath(n.Netns), n.HealthAddr)
					}
				default:
					detail = "not ready: " + st.Reason
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Name, p.PID, alive, detail)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tADDRESS\tANETD SOCKET")
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Netns, n.Address, n.Socket)
	}
	tw.Flush()
	fmt.Fprintln(w)
	if s.KubectlPath == "" || s.Kubeconfig == "" {
		fmt.Fprintln(w, "(no control plane yet)")
		return nil
	}
	out, err := l.Kubectl("get", "nodes", "-o", "wide")
	if err != nil {
		fmt.Fprintf(w, "kubectl get nodes: %v\n", err)
		return nil
	}
	fmt.Fprint(w, out)
	return nil
}

// readyz asks an anetd's /readyz from inside its node's network namespace
// (the only place it can be reached from).
func readyz(netnsPath, addr string) string {
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DialContext: controlplane.DialIn(netnsPath), DisableKeepAlives: true},
	}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return "unreachable"
	}
	resp.Body.Close()
	return resp.Status
}
