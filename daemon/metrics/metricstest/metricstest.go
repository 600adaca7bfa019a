// Package metricstest reads a Prometheus text exposition, as a scraper
// would, for the tests of anetd's metrics.
package metricstest

import (
	"fmt"
	"io"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families is a parsed exposition: metric families by name.
type Families map[string]*dto.MetricFamily

// Parse parses the text format with the client library's parser.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics: %w", err)
	}
	return fams, nil
}

// Value returns the value of the sample of name whose labels include
// labels (name, value pairs): a counter's or gauge's value, a histogram's
// count. ok is false when there is none.
func (f Families) Value(name string, labels ...string) (float64, bool) {
	fam := f[name]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.Metric {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// Type is the type of the family name ("" when there is none).
func (f Families) Type(name string) string {
	if fam := f[name]; fam != nil {
		return strings.ToLower(fam.GetType().String())
	}
	return ""
}

// Series lists the label sets of name's samples, for messages.
func (f Families) Series(name string) []string {
	var out []string
	if fam := f[name]; fam != nil {
		for _, m := range fam.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out = append(out, "{"+strings.Join(ls, ",")+"}")
		}
	}
	sort.Strings(out)
	return out
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.Label {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
