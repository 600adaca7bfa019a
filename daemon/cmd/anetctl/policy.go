package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/anet-dev/anet/daemon/api"
)

// endpointPolicy prints a pod's effective policy: a header (identity,
// endpoint, isolation per direction with the policies that select the
// pod), then one line per allowed rule with the identities it resolves to.
func endpointPolicy(ctx context.Context, c *api.Client, out io.Writer, namespace, name, format string) error {
	p, err := c.EndpointPolicy(ctx, namespace, name)
	if err != nil {
		return err
	}
	if format == "json" {
		return writeJSON(out, p)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Pod:\t%s/%s\n", p.Namespace, p.Name)
	fmt.Fprintf(w, "Node:\t%s\n", p.Node)
	id := "none yet"
	if p.Identity.ID != 0 {
		id = identityText(p.Identity)
	}
	fmt.Fprintf(w, "Identity:\t%s\n", id)
	ep := "not registered by CNI"
	if p.Ifindex != 0 {
		ep = fmt.Sprintf("ifindex %d, ", p.Ifindex)
		if p.Programmed {
			ep += "policy programmed"
		} else {
			ep += "policy NOT programmed (write failed, retried)"
		}
	}
	fmt.Fprintf(w, "Endpoint:\t%s\n", ep)
	fmt.Fprintf(w, "Ingress:\t%s\n", isolation(p.Ingress, " (the node itself is always allowed in)"))
	fmt.Fprintf(w, "Egress:\t%s\n", isolation(p.Egress, ""))
	if err := w.Flush(); err != nil {
		return err
	}
	if len(p.Ingress.Rules)+len(p.Egress.Rules) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DIRECTION\tPROTO\tPORTS\tPEERS")
	for _, d := range []struct {
		name string
		pd   api.PolicyDirection
	}{{"ingress", p.Ingress}, {"egress", p.Egress}} {
		for _, r := range d.pd.Rules {
			var peers []string
			for _, id := range r.Peers {
				peers = append(peers, identityText(id))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.name, r.Protocol, ports(r), strings.Join(peers, ", "))
		}
	}
	return w.Flush()
}

func isolation(d api.PolicyDirection, note string) string {
	if !d.Isolated {
		return "not isolated: everything allowed"
	}
	s := "isolated (default deny) by " + strings.Join(d.Policies, ", ") + note
	if len(d.Rules) == 0 {
		s += "; no rule allows anything"
	}
	return s
}

func ports(r api.PolicyRule) string {
	switch {
	case r.Port == 0 && r.EndPort == 65535:
		return "any"
	case r.Port == r.EndPort:
		return fmt.Sprint(r.Port)
	}
	return fmt.Sprintf("%d-%d", r.Port, r.EndPort)
}

// identityText is a number with what it stands for: "257 (x: pod=b)",
// "1 (reserved:host)", "8388609 (cidr:10.0.0.0/8)", "any peer".
func identityText(id api.Identity) string {
	switch id.Kind {
	case api.IdentityAny:
		return "any peer"
	case api.IdentityPod:
		return fmt.Sprintf("%d (%s: %s)", id.ID, id.Namespace, labelsText(id.Labels))
	}
	return fmt.Sprintf("%d (%s)", id.ID, what(id))
}

// what is a reserved or CIDR identity's label, as Cilium writes it.
func what(id api.Identity) string {
	switch id.Kind {
	case api.IdentityReserved:
		return "reserved:" + id.Name
	case api.IdentityCIDR:
		return "cidr:" + id.CIDR.String()
	}
	return id.Kind
}

func labelsText(l map[string]string) string {
	if len(l) == 0 {
		return "no labels"
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		kv = append(kv, k+"="+l[k])
	}
	return strings.Join(kv, ",")
}

// identityList prints one line per identity: number, kind, namespace,
// labels (or the reserved name, or the prefix) and, for pod identities,
// how many of this node's endpoints hold it.
func identityList(ctx context.Context, c *api.Client, out io.Writer, format string) error {
	ids, err := c.ListIdentities(ctx)
	if err != nil {
		return err
	}
	if format == "json" {
		return writeJSON(out, ids)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tKIND\tNAMESPACE\tLABELS\tENDPOINTS")
	for _, id := range ids {
		ns, labels, eps := "-", what(id.Identity), "-"
		if id.Kind == api.IdentityPod {
			ns, labels, eps = id.Namespace, labelsText(id.Labels), fmt.Sprint(id.Endpoints)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", id.ID, id.Kind, ns, labels, eps)
	}
	return w.Flush()
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
