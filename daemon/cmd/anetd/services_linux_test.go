package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab/controlplane"
)

// get GETs a URL from inside the node netns.
func (n *k8sNode) get(url string) (int, string, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: controlplane.DialIn(n.netns.Path()), DisableKeepAlives: true,
	}}
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// frontendsOf lists what anetd says it programs for one Service, as
// "kind scope address proto: backend(state) ...".
func (n *k8sNode) frontendsOf(ctx context.Context, ns, name string) ([]string, error) {
	fs, err := api.NewClient(n.socket).ListServices(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range fs {
		if f.Namespace != ns || f.Name != name {
			continue
		}
		if !f.Programmed {
			return nil, fmt.Errorf("%s %s not programmed: %s", f.Kind, f.Address, f.Error)
		}
		s := fmt.Sprintf("%s %s %s %s:", f.Kind, f.Scope, f.Address, f.Protocol)
		for _, b := range f.Backends {
			s += fmt.Sprintf(" %s(%s)", b.Address, b.State)
		}
		out = append(out, s)
	}
	return out, nil
}

func (n *k8sNode) waitFrontends(ctx context.Context, ns, name string, want ...string) {
	n.t.Helper()
	n.eventually(30*time.Second, "frontends of "+ns+"/"+name, func() error {
		got, err := n.frontendsOf(ctx, ns, name)
		if err != nil {
			return err
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			return fmt.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		return nil
	})
}

// TestAnetdServices runs the real anetd's service proxy against a real
// control plane: Services and EndpointSlices through the API reach the
// reconciler (here writing to an in-memory map: the datapath's service
// maps are connected elsewhere), GET /v1/services shows them, kube-proxy's
// health endpoint and a healthCheckNodePort answer in the node's netns,
// an unservable port is logged with its Service and skipped, and a
// restart serves them again.
func TestAnetdServices(t *testing.T) {
	t.Setenv(testServiceMapEnv, "memory")
	n := newK8sNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n.createNode(ctx, n.name, "10.77.0.1")
	n.eventually(60*time.Second, "anetd ready", func() error {
		code, body, err := n.health("/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	// kube-proxy's health endpoint, on its default address in the netns.
	n.eventually(10*time.Second, "kube-proxy healthz", func() error {
		code, body, err := n.get("http://127.0.0.1:10256/healthz")
		if err != nil {
			return err
		}
		var h map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &h) != nil || h["nodeEligible"] != true || h["healthy"] != true {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, _, err := n.get("http://127.0.0.1:10256/livez"); err != nil || code != 200 {
		t.Errorf("livez = %d %v", code, err)
	}

	// A LoadBalancer Service with externalTrafficPolicy Local, its
	// endpoints in a slice of our own (no selector: the EndpointSlice
	// controller leaves it alone), one of them on this node.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "sig", Protocol: corev1.ProtocolSCTP, Port: 81, TargetPort: intstr.FromInt32(8081)},
			},
		},
	}
	svc, err := n.cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.10"}}
	if svc, err = n.cs.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cip, np, hc := svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort, svc.Spec.HealthCheckNodePort
	if np == 0 || hc == 0 {
		t.Fatalf("no nodePort (%d) or healthCheckNodePort (%d) allocated", np, hc)
	}
	port, proto, tcp := int32(8080), corev1.ProtocolTCP, "http"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "test.anet.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &tcp, Protocol: &proto, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.5"}, NodeName: &n.name},
			{Addresses: []string{"10.244.9.9"}, NodeName: new("node-b")},
		},
	}
	if slice, err = n.cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	both := "10.244.0.5:8080(ready) 10.244.9.9:8080(ready)"
	n.waitFrontends(ctx, "default", "web",
		fmt.Sprintf("NodePort external 10.77.0.1:%d TCP: 10.244.0.5:8080(ready)", np),
		fmt.Sprintf("NodePort internal 10.77.0.1:%d TCP: %s", np, both),
		fmt.Sprintf("ClusterIP external %s:80 TCP: %s", cip, both),
		"LoadBalancer external 192.0.2.10:80 TCP: 10.244.0.5:8080(ready)",
		"LoadBalancer internal 192.0.2.10:80 TCP: "+both,
	)
	if !strings.Contains(n.log.String(), "service=default/web") || !strings.Contains(n.log.String(), "protocol SCTP not supported") {
		t.Errorf("the SCTP port is not logged with its Service")
	}
	// The API server's own Service is served too, with what its slices
	// hold (the API server writes them).
	kslices, err := n.cs.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	want := "ClusterIP external 10.96.0.1:443 TCP:"
	for _, s := range kslices.Items {
		for _, e := range s.Endpoints {
			for _, p := range s.Ports {
				want += fmt.Sprintf(" %s:%d(ready)", e.Addresses[0], *p.Port)
			}
		}
	}
	n.waitFrontends(ctx, "default", "kubernetes", want)

	// The healthCheckNodePort says this node has a ready endpoint...
	hcURL := fmt.Sprintf("http://127.0.0.1:%d/", hc)
	n.eventually(10*time.Second, "healthCheckNodePort 200", func() error {
		code, body, err := n.get(hcURL)
		if err == nil && (code != 200 || !strings.Contains(body, `"localEndpoints": 1`) || !strings.Contains(body, `"name": "web"`)) {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	// ...and, once it terminates (still serving), that it has none; the
	// Service's frontends show the state.
	slice.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: new(false), Serving: new(true), Terminating: new(true)}
	if _, err = n.cs.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually(10*time.Second, "healthCheckNodePort 503", func() error {
		code, body, err := n.get(hcURL)
		if err == nil && (code != 503 || !strings.Contains(body, `"localEndpoints": 0`)) {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	n.waitFrontends(ctx, "default", "web",
		fmt.Sprintf("NodePort external 10.77.0.1:%d TCP: 10.244.0.5:8080(serving)", np),
		fmt.Sprintf("NodePort internal 10.77.0.1:%d TCP: 10.244.9.9:8080(ready) 10.244.0.5:8080(serving)", np),
		fmt.Sprintf("ClusterIP external %s:80 TCP: 10.244.9.9:8080(ready) 10.244.0.5:8080(serving)", cip),
		"LoadBalancer external 192.0.2.10:80 TCP: 10.244.0.5:8080(serving)",
		"LoadBalancer internal 192.0.2.10:80 TCP: 10.244.9.9:8080(ready) 10.244.0.5:8080(serving)",
	)

	// A headless Service is left alone; a UDP one is served.
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "headless"},
			Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "dns"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}}}},
	} {
		if _, err := n.cs.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dns, err := n.cs.CoreV1().Services("default").Get(ctx, "dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.waitFrontends(ctx, "default", "dns", fmt.Sprintf("ClusterIP external %s:53 UDP:", dns.Spec.ClusterIP))
	if fs, err := n.frontendsOf(ctx, "default", "headless"); err != nil || len(fs) != 0 {
		t.Errorf("headless Service served: %v %v", fs, err)
	}

	// The Service goes: its frontends and its health check go with it.
	if err := n.cs.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFrontends(ctx, "default", "web")
	n.eventually(10*time.Second, "healthCheckNodePort closed", func() error {
		if _, _, err := n.get(hcURL); err == nil {
			return fmt.Errorf("still answering")
		}
		return nil
	})

	// A restart serves what is there again; with --purge-kube-proxy-rules
	// it removes what a kube-proxy left (and not kubelet's chains).
	n.stopAnetd()
	n.sh("iptables-nft", "-t", "nat", "-N", "KUBE-SERVICES")
	n.sh("iptables-nft", "-t", "nat", "-N", "KUBE-SVC-TEST")
	n.sh("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES")
	n.sh("iptables-nft", "-t", "nat", "-A", "KUBE-SERVICES", "-j", "KUBE-SVC-TEST")
	n.sh("iptables-nft", "-t", "filter", "-N", "KUBE-FIREWALL")
	n.sh("iptables-nft", "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL")
	n.sh("nft", "add", "table", "ip", "kube-proxy")
	n.args = []string{"--purge-kube-proxy-rules"}
	n.startAnetd()
	n.eventually(30*time.Second, "kube-proxy's rules purged", func() error {
		if !strings.Contains(n.log.String(), "kube-proxy's rules removed") {
			return fmt.Errorf("not logged")
		}
		return nil
	})
	if out := n.sh("iptables-nft", "-t", "nat", "-S"); strings.Contains(out, "KUBE-") {
		t.Errorf("kube-proxy's chains left:\n%s", out)
	}
	if out := n.sh("iptables-nft", "-t", "filter", "-S"); !strings.Contains(out, "-A INPUT -j KUBE-FIREWALL") {
		t.Errorf("kubelet's chain removed:\n%s", out)
	}
	if out := n.sh("nft", "list", "tables"); strings.Contains(out, "kube-proxy") {
		t.Errorf("nftables table left: %s", out)
	}
	n.waitFrontends(ctx, "default", "dns", fmt.Sprintf("ClusterIP external %s:53 UDP:", dns.Spec.ClusterIP))
	n.eventually(30*time.Second, "ready after the restart", func() error {
		code, body, err := n.health("/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	for _, want := range []string{"service proxy started", "service frontends in sync with the API", "kube-proxy health endpoint serving"} {
		if !strings.Contains(n.log.String(), want) {
			t.Errorf("anetd log lacks %q", want)
		}
	}
}
