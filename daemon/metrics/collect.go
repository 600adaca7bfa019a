package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/service"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

var (
	forwardedPackets = desc("forwarded_packets_total", "Packets the datapath forwarded, by direction seen from the pod (egress: sent by it, ingress: delivered to it).", "direction")
	forwardedBytes   = desc("forwarded_bytes_total", "Bytes of the packets the datapath forwarded, by direction.", "direction")
	droppedPackets   = desc("dropped_packets_total", "Packets the datapath dropped (and connections the socket hooks refused), by reason and direction.", "reason", "direction")
	droppedBytes     = desc("dropped_bytes_total", "Bytes of the packets the datapath dropped, by reason and direction.", "reason", "direction")
	policyVerdicts   = desc("policy_verdicts_total", "NetworkPolicy verdicts of the datapath, by direction of the policy (egress: the sender's, ingress: the receiver's) and verdict. Only denied packets are counted so far.", "direction", "verdict")
	ctEntries        = desc("conntrack_entries", "Entries of a conntrack table (pod: every pod connection; service: the per-packet service translation), expired ones included until the next collection.", "map")
	ctFill           = desc("conntrack_fill_ratio", "Entries of a conntrack table over its size (a full table evicts its oldest entries).", "map")
	ctMax            = desc("conntrack_max_entries", "Size of a conntrack table.", "map")
)

// datapathCollector reads the counters and the conntrack tables at each
// scrape: one pass over the counter map (a few entries per endpoint) and
// batch lookups over the conntrack tables.
type datapathCollector struct{ d Datapath }

func newDatapathCollector(d Datapath) datapathCollector { return datapathCollector{d} }

func (datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{forwardedPackets, forwardedBytes, droppedPackets, droppedBytes, policyVerdicts, ctEntries, ctFill, ctMax} {
		ch <- d
	}
}

func (c datapathCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.d.TrafficCounters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(droppedPackets, err)
	} else {
		collectCounters(ch, counters)
	}
	fills, err := c.d.ConntrackFill()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(ctEntries, err)
		return
	}
	for _, f := range fills {
		ch <- prometheus.MustNewConstMetric(ctEntries, prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(ctMax, prometheus.GaugeValue, float64(f.MaxEntries), f.Name)
		ratio := 0.0
		if f.MaxEntries > 0 {
			ratio = float64(f.Entries) / float64(f.MaxEntries)
		}
		ch <- prometheus.MustNewConstMetric(ctFill, prometheus.GaugeValue, ratio, f.Name)
	}
}

// policyDirection is the direction of the policy that a drop reason
// denied by, or "" for other reasons.
func policyDirection(r datapath.Reason) string {
	switch r {
	case datapath.DropPolicyEgress:
		return "egress"
	case datapath.DropPolicyIngress:
		return "ingress"
	}
	return ""
}

func collectCounters(ch chan<- prometheus.Metric, counters map[datapath.CounterKey]datapath.Counter) {
	// Both directions are always there, so that a rate over forwarded
	// packets has a series from the start.
	fwd := map[datapath.Dir]datapath.Counter{datapath.DirEgress: {}, datapath.DirIngress: {}}
	denied := map[string]uint64{"egress": 0, "ingress": 0}
	for k, v := range counters {
		if !k.Reason.IsDrop() {
			f := fwd[k.Dir]
			f.Packets += v.Packets
			f.Bytes += v.Bytes
			fwd[k.Dir] = f
			continue
		}
		dir := k.Dir.String()
		ch <- prometheus.MustNewConstMetric(droppedPackets, prometheus.CounterValue, float64(v.Packets), k.Reason.String(), dir)
		ch <- prometheus.MustNewConstMetric(droppedBytes, prometheus.CounterValue, float64(v.Bytes), k.Reason.String(), dir)
		if pd := policyDirection(k.Reason); pd != "" {
			denied[pd] += v.Packets
		}
	}
	for d, v := range fwd {
		ch <- prometheus.MustNewConstMetric(forwardedPackets, prometheus.CounterValue, float64(v.Packets), d.String())
		ch <- prometheus.MustNewConstMetric(forwardedBytes, prometheus.CounterValue, float64(v.Bytes), d.String())
	}
	for d, n := range denied {
		ch <- prometheus.MustNewConstMetric(policyVerdicts, prometheus.CounterValue, float64(n), d, "denied")
	}
}

var (
	services     = desc("services", "Services the service proxy has seen.")
	frontends    = desc("service_frontends", "Service frontends (address, port, protocol) the service maps hold.")
	backends     = desc("service_backends", "Service backends (address, port, protocol) the service maps' frontends name.")
	svcWrites    = desc("service_map_writes_total", "Writes of service frontends to the maps, by operation (put, delete).", "operation")
	svcErrors    = desc("service_map_write_errors_total", "Failed writes of service frontends (each is retried).")
	svcProblems  = desc("service_problems_total", "Reports of a Service, or part of one, that cannot be served.")
	identities   = desc("identities", "Security identities the policy reconciler holds, by kind (pod: one per set of namespace and pod labels; cidr: one per CIDR a policy names).", "kind")
	serviceDescs = []*prometheus.Desc{services, frontends, backends, svcWrites, svcErrors, svcProblems}
)

type serviceCollector struct{ c *service.Counters }

func (serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range serviceDescs {
		ch <- d
	}
}

func (s serviceCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	gauge(services, s.c.Services.Load())
	gauge(frontends, s.c.Frontends.Load())
	gauge(backends, s.c.Backends.Load())
	ch <- prometheus.MustNewConstMetric(svcWrites, prometheus.CounterValue, float64(s.c.Puts.Load()), "put")
	ch <- prometheus.MustNewConstMetric(svcWrites, prometheus.CounterValue, float64(s.c.Deletes.Load()), "delete")
	ch <- prometheus.MustNewConstMetric(svcErrors, prometheus.CounterValue, float64(s.c.WriteErrors.Load()))
	ch <- prometheus.MustNewConstMetric(svcProblems, prometheus.CounterValue, float64(s.c.Problems.Load()))
}

type identityCollector func() (pods, cidrs int, ok bool)

func (identityCollector) Describe(ch chan<- *prometheus.Desc) { ch <- identities }

func (f identityCollector) Collect(ch chan<- prometheus.Metric) {
	pods, cidrs, ok := f()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(identities, prometheus.GaugeValue, float64(pods), "pod")
	ch <- prometheus.MustNewConstMetric(identities, prometheus.GaugeValue, float64(cidrs), "cidr")
}
