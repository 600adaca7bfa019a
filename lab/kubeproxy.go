//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/anet-dev/anet/lab/controlplane"
)

// kube-proxy's ports, bound to the node's fabric address.
const (
	KubeProxyHealthzPort = 10256
	KubeProxyMetricsPort = 10249
)

// kubeProxyRBAC is kube-proxy's identity, as kubeadm makes it: a service
// account bound to the built-in ClusterRole system:node-proxier.
const kubeProxyRBAC = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: kube-proxy
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: anet-lab:kube-proxy
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-proxier
subjects:
- kind: ServiceAccount
  name: kube-proxy
  namespace: kube-system
`

// kubeProxyConfig is a node's KubeProxyConfiguration. conntrack's zeros
// leave the conntrack sysctls alone: nf_conntrack_max and the hash size
// are the machine's, not the node's. oomScoreAdj 0: lowering it needs
// CAP_SYS_RESOURCE, which root lacks here.
func kubeProxyConfig(n *NodeRec, mode, kubeconfig, clusterCIDR string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: %s
clusterCIDR: %s
detectLocalMode: ClusterCIDR
bindAddress: %s
healthzBindAddress: %s:%d
metricsBindAddress: %s:%d
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, kubeconfig, n.Name, mode, clusterCIDR, n.Address, n.Address, KubeProxyHealthzPort, n.Address, KubeProxyMetricsPort)
}

// StartKubeProxy runs the real kube-proxy (built with the other Kubernetes
// binaries) in a node's network and mount namespaces, in mode "iptables"
// or "nftables": the peer of anet's service handling, for the coexistence
// and legacy-cleanup tests and the benchmarks. It has an identity of its
// own (service account kube-system/kube-proxy, ClusterRole
// system:node-proxier, a token in its kubeconfig), serves /healthz and
// /metrics on the node's address (ports 10256 and 10249), logs to the
// node's logs/kube-proxy.log, and is recorded as "<node>/kube-proxy", so
// that Kill, Start and down handle it as any node component. It returns
// once kube-proxy's /healthz says it has programmed the node.
//
// The rules it writes stay in the node after it stops, as on a real node;
// StopKubeProxy with cleanup removes them.
func (l *Lab) StartKubeProxy(node, mode string) error {
	if mode != "iptables" && mode != "nftables" {
		return fmt.Errorf("kube-proxy mode %q: want iptables or nftables", mode)
	}
	n, ok := l.Node(node)
	if !ok {
		return fmt.Errorf("no node %q in this lab", node)
	}
	name := n.Name + "/kube-proxy"
	if p, ok := l.Component(name); ok && p.alive() {
		return fmt.Errorf("%s runs already (pid %d)", name, p.PID)
	}
	s := l.st.get()
	if err := l.Apply(kubeProxyRBAC); err != nil {
		return fmt.Errorf("kube-proxy's service account: %w", err)
	}
	dir := filepath.Join(n.Dir, "kube-proxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := l.serviceAccountKubeconfig(kc, "kube-system", "kube-proxy"); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "config-"+mode+".yaml")
	cidr := l.opts.ClusterCIDR
	if cidr == "" {
		cidr = DefaultClusterCIDR
	}
	if err := os.WriteFile(cfg, []byte(kubeProxyConfig(n, mode, kc, cidr)), 0o644); err != nil {
		return err
	}
	p, err := spawn(name, l.netnsPath(n.Netns), n.MountNS, filepath.Join(n.Dir, "logs", "kube-proxy.log"),
		filepath.Join(s.KubernetesBinDir, "kube-proxy"), "--config="+cfg, "--v=1")
	if err != nil {
		return err
	}
	if err := l.st.update(func(s *State) {
		for i := range s.Procs {
			if s.Procs[i].Name == name {
				s.Procs[i] = p
				return
			}
		}
		s.Procs = append(s.Procs, p)
	}); err != nil {
		return err
	}
	// Its /healthz answers 200 from the start (no sync owed yet): ready
	// is when it answers and the node holds the mode's rules.
	url := fmt.Sprintf("http://%s:%d/healthz", n.Address, KubeProxyHealthzPort)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: controlplane.DialIn(l.netnsPath(n.Netns)), DisableKeepAlives: true, Proxy: nil}}
	err = waitFor(context.Background(), 60*time.Second, func() error {
		if !p.alive() {
			return errors.New("kube-proxy exited")
		}
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		if !KubeProxyRules(l.netnsPath(n.Netns), mode) {
			return fmt.Errorf("no %s rules of kube-proxy in %s yet", mode, n.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, tail(p.Log, 20))
	}
	l.say("%s: kube-proxy (%s mode) serving (pid %d)", n.Name, mode, p.PID)
	return nil
}

// StopKubeProxy stops a node's kube-proxy (SIGTERM, then SIGKILL) and
// drops its record. With
// cleanup it then runs `kube-proxy --cleanup` in the node, which removes
// the rules of every mode (iptables, ipvs, nftables) that kube-proxy
// leaves behind; without, they stay, as a kube-proxy that was removed from
// a cluster leaves them.
func (l *Lab) StopKubeProxy(node string, cleanup bool) error {
	n, ok := l.Node(node)
	if !ok {
		return fmt.Errorf("no node %q in this lab", node)
	}
	name := n.Name + "/kube-proxy"
	if _, ok := l.Component(name); ok {
		if err := l.Kill(name, syscall.SIGTERM); err != nil {
			return err
		}
		// Gone for good (StartKubeProxy records a new one): the record
		// goes too.
		if err := l.st.update(func(s *State) {
			s.Procs = slices.DeleteFunc(s.Procs, func(p Proc) bool { return p.Name == name })
		}); err != nil {
			return err
		}
	}
	if !cleanup {
		return nil
	}
	s := l.st.get()
	if _, err := run("nsenter", "--net="+l.netnsPath(n.Netns), "--mount="+n.MountNS, "--",
		filepath.Join(s.KubernetesBinDir, "kube-proxy"), "--cleanup", "--v=1"); err != nil {
		return fmt.Errorf("kube-proxy --cleanup in %s: %w", n.Name, err)
	}
	return nil
}

// KubeProxyRules tells whether the network namespace at netnsPath holds
// the rules of a kube-proxy in mode: its KUBE-SERVICES chain in the
// iptables nat table, or its "kube-proxy" nftables table.
func KubeProxyRules(netnsPath, mode string) bool {
	argv := []string{"iptables", "-t", "nat", "-S", "KUBE-SERVICES"}
	if mode == "nftables" {
		argv = []string{"nft", "list", "table", "ip", "kube-proxy"}
	}
	_, err := run("nsenter", append([]string{"--net=" + netnsPath, "--"}, argv...)...)
	return err == nil
}

// serviceAccountKubeconfig writes to path a kubeconfig with a token of
// ServiceAccount ns/sa, valid for as long as a lab may live (30 days; it
// stays valid across API server restarts: same signing key).
func (l *Lab) serviceAccountKubeconfig(path, ns, sa string) error {
	out, err := l.Kubectl("-n", ns, "create", "token", sa, "--duration=720h")
	token := strings.TrimSpace(out)
	if err != nil || token == "" || strings.ContainsAny(token, " \n") {
		return fmt.Errorf("a token of %s/%s: %v: %s", ns, sa, err, out)
	}
	s := l.st.get()
	user := "system:serviceaccount:" + ns + ":" + sa
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: anet-lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %q
  user:
    token: %s
contexts:
- name: anet-lab
  context:
    cluster: anet-lab
    user: %q
current-context: anet-lab
`, s.APIServerURL, filepath.Join(s.ControlPlaneDir, "certs", "apiserver.crt"), user, token, user)
	return os.WriteFile(path, []byte(kc), 0o600)
}
