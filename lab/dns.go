//go:build linux

package lab

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/anet-dev/anet/lab/images"
)

// ClusterDomain is the lab's cluster domain (kubelet's clusterDomain).
const ClusterDomain = "cluster.local"

// DNSLabel selects the cluster DNS's pods (in kube-system), as in any
// cluster: k8s-app=kube-dns.
const DNSLabel = "k8s-app=kube-dns"

//go:embed coredns.yaml
var corednsManifest string

var corednsTemplate = template.Must(template.New("coredns").Option("missingkey=error").Parse(corednsManifest))

// dnsManifest renders the cluster DNS's objects: ServiceAccount,
// ClusterRole and binding, the Corefile's ConfigMap, the CoreDNS
// Deployment and the kube-dns Service on clusterIP.
func (l *Lab) dnsManifest(image, clusterIP string) (string, error) {
	hosts := []string{ControlPlaneIP + " control-plane.lab"}
	for _, n := range l.Nodes {
		hosts = append(hosts, n.Address+" "+n.Name+".lab")
	}
	hosts = append(hosts, OutsideIP+" outside.lab")
	var b bytes.Buffer
	err := corednsTemplate.Execute(&b, map[string]any{
		"Image":     image,
		"ClusterIP": clusterIP,
		"Domain":    ClusterDomain,
		"Hosts":     hosts,
	})
	return b.String(), err
}

// corednsBinary finds (or builds, through scripts/coredns-binary.sh,
// cached) CoreDNS and returns its path and version ("1.15.0").
func (l *Lab) corednsBinary(ctx context.Context) (bin, version string, err error) {
	root, err := l.repoRoot()
	if err != nil {
		return "", "", err
	}
	l.say("CoreDNS: scripts/coredns-binary.sh (cached; the first build takes a few minutes)")
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "coredns-binary.sh"))
	cmd.Stderr = l.progress
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("scripts/coredns-binary.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	bin = filepath.Join(lines[len(lines)-1], "coredns")
	v, err := run(bin, "-version")
	if err != nil {
		return "", "", err
	}
	version, ok := strings.CutPrefix(strings.SplitN(v, "\n", 2)[0], "CoreDNS-")
	if !ok {
		return "", "", fmt.Errorf("%s -version: %q", bin, v)
	}
	return bin, version, nil
}

// routePodCIDRs gives the control plane's namespace a route to each node's
// pod CIDR via the node's fabric address, as a VPC's router has, so that
// pods reach the API server at its fabric address (their source address is
// kept: nothing masquerades) and its answers find the way back. Each route
// is recorded before it is made.
func (l *Lab) routePodCIDRs(ctx context.Context) error {
	cpNS := l.Name + "-cp"
	routed := map[string]bool{}
	for _, r := range l.st.get().Routes {
		for _, n := range l.Nodes {
			if r.Netns == cpNS && r.Via == n.Address {
				routed[n.Name] = true // routed before (AddNode)
			}
		}
	}
	err := waitFor(ctx, 90*time.Second, func() error {
		nl, err := l.nodes()
		if err != nil {
			return err
		}
		cidrs := map[string]string{}
		for _, it := range nl.Items {
			cidrs[it.Metadata.Name] = it.Spec.PodCIDR
		}
		var missing []string
		for _, n := range l.Nodes {
			if routed[n.Name] {
				continue
			}
			if cidrs[n.Name] == "" {
				missing = append(missing, n.Name)
				continue
			}
			r := Route{Netns: cpNS, Dst: cidrs[n.Name], Via: n.Address}
			if err := l.st.update(func(s *State) { s.Routes = append(s.Routes, r) }); err != nil {
				return err
			}
			if _, err := run("ip", "-n", r.Netns, "route", "replace", r.Dst, "via", r.Via); err != nil {
				return err
			}
			routed[n.Name] = true
		}
		if len(missing) > 0 {
			return fmt.Errorf("node(s) %s have no pod CIDR yet", strings.Join(missing, ", "))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("routes to the pod CIDRs: %w", err)
	}
	l.say("control plane routes back to the pod CIDRs via the nodes")
	return nil
}

// deployDNS applies the cluster DNS and waits until CoreDNS is ready: its
// readiness (the ready plugin) says its kubernetes plugin has synced with
// the API server.
func (l *Lab) deployDNS(ctx context.Context, image string) error {
	t0 := time.Now()
	ip, err := tenthAddress(l.opts.ServiceCIDR)
	if err != nil {
		return err
	}
	m, err := l.dnsManifest(image, ip)
	if err != nil {
		return err
	}
	if err := l.Apply(m); err != nil {
		return fmt.Errorf("cluster DNS: %w", err)
	}
	if err := l.st.update(func(s *State) { s.ClusterDNS = ip }); err != nil {
		return err
	}
	var pod string
	if err := waitFor(ctx, 2*time.Minute, func() error {
		ready, name, err := l.dnsReady()
		pod = name
		if err == nil && !ready {
			err = fmt.Errorf("CoreDNS pod %q not ready", name)
		}
		return err
	}); err != nil {
		desc, _ := l.Kubectl("-n", "kube-system", "describe", "pods", "-l", DNSLabel)
		logs, _ := l.Kubectl("-n", "kube-system", "logs", "-l", DNSLabel, "--tail=20")
		return fmt.Errorf("cluster DNS: %w\n%s\n%s", err, desc, logs)
	}
	l.say("cluster DNS: CoreDNS (%s) ready in %.1fs, Service kube-dns at %s", pod, time.Since(t0).Seconds(), ip)
	return nil
}

// dnsReady tells whether the cluster DNS's pod is Ready.
func (l *Lab) dnsReady() (bool, string, error) {
	out, err := l.Kubectl("-n", "kube-system", "get", "pods", "-l", DNSLabel, "-o", "json")
	if err != nil {
		return false, "", err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct{ Type, Status string } `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return false, "", err
	}
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				return true, p.Metadata.Name, nil
			}
		}
		return false, p.Metadata.Name, nil
	}
	return false, "", nil
}

// buildDNSImage builds (or finds up to date) the CoreDNS image tarball and
// returns its path and ref.
func (l *Lab) buildDNSImage(bin, version string) (tarball, ref string, err error) {
	ref = images.CoreDNSRef(version)
	l.say("image %s (lab/images, cached in %s)", ref, l.opts.ImageDir)
	tarball, err = images.BuildCoreDNSImage(bin, version, l.opts.ImageDir)
	return tarball, ref, err
}
