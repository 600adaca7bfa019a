// Package netpolmodel is upstream Kubernetes' NetworkPolicy e2e model
// (test/e2e/network/netpol: network_policy.go, reachability.go,
// kubemanager.go), written once for the two places anet runs it: against
// the policy compiler's state in memory (daemon/policy's tests) and against
// a real cluster of three nodes (lab/e2e), where every pod probes every
// other pod through that pod's Service.
//
// The model: namespaces x, y and z, each with pods a, b and c labelled
// pod=a|b|c, each serving TCP and UDP on ports 80 and 81 from two
// containers whose ports are named serve-80-tcp, serve-80-udp, serve-81-tcp
// and serve-81-udp, and a ClusterIP Service per pod. A Case creates
// policies (and changes labels) through a Cluster and checks whole
// reachability matrices with Validate.
package netpolmodel

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The model's namespaces and pods.
var (
	Namespaces = []string{"x", "y", "z"}
	PodNames   = []string{"a", "b", "c"}
)

// Ports are the ports every pod serves, on TCP and on UDP.
var Ports = []int32{80, 81}

// Pods returns every pod of the model as "namespace/name", in order.
func Pods() []string {
	var out []string
	for _, ns := range Namespaces {
		for _, p := range PodNames {
			out = append(out, ns+"/"+p)
		}
	}
	return out
}

// Cluster is where a Case runs. Every method fails the test itself (the
// in-memory world and the lab both hold a testing.T), so that the cases
// read as upstream's do.
type Cluster interface {
	// Create creates policy p in namespace ns (p is not kept).
	Create(ns string, p *networkingv1.NetworkPolicy)
	// Update replaces the policy of p's name in ns.
	Update(ns string, p *networkingv1.NetworkPolicy)
	// DeleteAllPolicies deletes every policy of the model's namespaces.
	DeleteAllPolicies()
	// AddNamespaceLabel sets a label on a namespace.
	AddNamespaceLabel(ns, key, value string)
	// SetPodLabels replaces the labels of pod "ns/name".
	SetPodLabels(pod string, labels map[string]string)
	// IP is the address of pod "ns/name".
	IP(pod string) netip.Addr
	// Validate probes every pair of distinct pods on (port, protocol),
	// from each pod to the other's Service, and reports every pair whose
	// verdict differs from r.
	Validate(port int32, proto corev1.Protocol, r *Reachability)
}

// NamespaceLabels are the labels the model gives namespace ns (beside
// kubernetes.io/metadata.name, which the API server sets).
func NamespaceLabels(ns string) map[string]string { return map[string]string{"ns": ns} }

// PodLabels are the labels pod name starts with.
func PodLabels(name string) map[string]string { return map[string]string{"pod": name} }

// Containers are a model pod's containers, as upstream's kubemanager makes
// them: one per port, serving TCP and UDP on it, each port named
// serve-<port>-<tcp|udp>. image and args give each container's image and
// its command line for the port; readiness, when not nil, is the first
// container's readiness probe.
func Containers(image string, args func(port int32) []string, readiness *corev1.Probe) []corev1.Container {
	var cs []corev1.Container
	for i, port := range Ports {
		c := corev1.Container{
			Name:            fmt.Sprintf("cont-%d", port),
			Image:           image,
			ImagePullPolicy: corev1.PullNever,
		}
		if args != nil {
			c.Command = args(port)
		}
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			c.Ports = append(c.Ports, corev1.ContainerPort{
				Name: PortName(port, proto), ContainerPort: port, Protocol: proto,
			})
		}
		if i == 0 {
			c.ReadinessProbe = readiness
		}
		cs = append(cs, c)
	}
	return cs
}

// PortName is the name of a model pod's container port.
func PortName(port int32, proto corev1.Protocol) string {
	return fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
}

// Service is the ClusterIP Service of pod "ns/name": ports 80 and 81 on
// TCP and UDP, selecting the pod by its label pod=name (which the cases
// keep when they change a pod's labels, as upstream's do).
func Service(ns, name string) *corev1.Service {
	s := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "s-" + name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: PodLabels(name)},
	}
	for _, port := range Ports {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{
				Name: PortName(port, proto), Port: port, Protocol: proto, TargetPort: intstr.FromInt32(port),
			})
		}
	}
	return s
}

// Peer names pods: an empty field matches every namespace or pod name.
type Peer struct{ NS, Pod string }

func (p Peer) matches(s string) bool {
	ns, pod, _ := strings.Cut(s, "/")
	return (p.NS == "" || p.NS == ns) && (p.Pod == "" || p.Pod == pod)
}

// PeerOf is the peer of one pod, "ns/name".
func PeerOf(s string) Peer { ns, p, _ := strings.Cut(s, "/"); return Peer{ns, p} }

// Reachability is upstream's truth table: for every ordered pair of pods,
// whether a new connection is expected to get through.
type Reachability struct {
	pods []string
	want map[[2]string]bool
}

// NewReachability expects def for every pair.
func NewReachability(def bool) *Reachability {
	r := &Reachability{pods: Pods(), want: map[[2]string]bool{}}
	for _, a := range r.pods {
		for _, b := range r.pods {
			r.want[[2]string{a, b}] = def
		}
	}
	return r
}

// Expect sets the verdict of one pair.
func (r *Reachability) Expect(from, to string, v bool) { r.want[[2]string{from, to}] = v }

// ExpectPeer sets the verdict of every pair from a pod matching from to a
// pod matching to.
func (r *Reachability) ExpectPeer(from, to Peer, v bool) {
	for _, a := range r.pods {
		for _, b := range r.pods {
			if from.matches(a) && to.matches(b) {
				r.want[[2]string{a, b}] = v
			}
		}
	}
}

// ExpectAllIngress sets the verdict of every pair into pod.
func (r *Reachability) ExpectAllIngress(pod string, v bool) { r.ExpectPeer(Peer{}, PeerOf(pod), v) }

// ExpectAllEgress sets the verdict of every pair out of pod.
func (r *Reachability) ExpectAllEgress(pod string, v bool) { r.ExpectPeer(PeerOf(pod), Peer{}, v) }

// Want is the expected verdict from one pod to another.
func (r *Reachability) Want(from, to string) bool { return r.want[[2]string{from, to}] }

// Compare checks observed verdicts against r, loopback pairs left out as
// upstream leaves them (a pod's own traffic to itself is not under
// policy). It returns the wrong pairs and the observed table, "." for
// reached and "X" for not, "*" before each wrong one.
func (r *Reachability) Compare(observed func(from, to string) bool) (wrong []string, table string) {
	var b strings.Builder
	b.WriteString("from\\to")
	for _, p := range r.pods {
		b.WriteString("\t" + p)
	}
	for _, from := range r.pods {
		b.WriteString("\n" + from)
		for _, to := range r.pods {
			if from == to {
				b.WriteString("\t-")
				continue
			}
			got := observed(from, to)
			mark := map[bool]string{true: ".", false: "X"}[got]
			if got != r.Want(from, to) {
				wrong = append(wrong, fmt.Sprintf("%s->%s reached=%v", from, to, got))
				mark = "*" + mark
			}
			b.WriteString("\t" + mark)
		}
	}
	return wrong, b.String()
}

// Pairs is the number of pairs Compare checks.
func Pairs() int { n := len(Pods()); return n * (n - 1) }
