// Package metrics is anetd's Prometheus metrics: what the datapath
// counted, how full its conntrack tables are, what the reconcilers hold,
// and how long a change of the API takes to reach the maps.
//
// The datapath's figures are read from the maps at scrape time by
// collectors (prometheus.Collector): nothing polls, and a scrape only
// reads maps, which the eBPF programs never wait for. The reconcilers'
// figures are atomics or a snapshot taken under a lock held for a copy.
//
// Names follow Prometheus' conventions: the anet_ prefix, base units
// (bytes, seconds), _total for counters, lower_snake labels.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/service"
)

const namespace = "anet"

// Metrics is anetd's registry. Parts are added as anetd starts them.
type Metrics struct {
	reg     *prometheus.Registry
	latency *prometheus.HistogramVec
}

// LatencyBuckets are the buckets of the API-to-datapath histogram, in
// seconds: from a few milliseconds (one Service, one policy change on a
// small cluster) to a minute (a resync of a large one, retries).
var LatencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// New returns a registry with Go's and the process's collectors and the
// latency histogram.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "api_to_datapath_seconds",
		Help:    "Time from a change of the Kubernetes API (the first event a reconciler run handles) to its maps being written, by reconciler (policy, service).",
		Buckets: LatencyBuckets,
	}, []string{"reconciler"})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.latency)
	return m
}

// Registry is the registry, for tests and further collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text format (or
// OpenMetrics when asked). A collector that fails is reported in the
// answer and the others are served.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, EnableOpenMetrics: true,
		// Scrapes are rare (Prometheus scrapes a target one at a
		// time): a bound keeps a misbehaving scraper from reading the
		// maps many times in parallel.
		MaxRequestsInFlight: 2,
	}))
	return mux
}

// Latency returns the observer of a reconciler's API-to-datapath time,
// for its Latency option.
func (m *Metrics) Latency(reconciler string) func(time.Duration) {
	o := m.latency.WithLabelValues(reconciler)
	return func(d time.Duration) { o.Observe(d.Seconds()) }
}

// AddDatapath adds the collectors of the datapath's counters and
// conntrack tables.
func (m *Metrics) AddDatapath(d Datapath) { m.reg.MustRegister(newDatapathCollector(d)) }

// AddEndpoints adds the gauge of the node's endpoints.
func (m *Metrics) AddEndpoints(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "endpoints",
		Help: "Endpoints (pod interfaces) this node's anetd has wired.",
	}, func() float64 { return float64(count()) }))
}

// AddServices adds the service proxy's gauges and counters.
func (m *Metrics) AddServices(c *service.Counters) { m.reg.MustRegister(serviceCollector{c}) }

// AddIdentities adds the gauge of the identities the policy reconciler
// holds; counts reports ok false before its first run (no sample then).
func (m *Metrics) AddIdentities(counts func() (pods, cidrs int, ok bool)) {
	m.reg.MustRegister(identityCollector(counts))
}

// Datapath is what the datapath collector reads (*datapath.Datapath).
type Datapath interface {
	TrafficCounters() (map[datapath.CounterKey]datapath.Counter, error)
	ConntrackFill() ([]datapath.MapFill, error)
}
