package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The services section's charts, written next to results.md:
// services-latency.png (connect() p50 and p99 against the number of
// Services, one line per proxy and the direct connect) and
// services-programming.png (how long after the last Service was made
// each proxy served them all).

// svcLine is one line of a chart: y at each point, NaN for none.
type svcLine struct {
	name string
	y    func(*svcPoint) float64
}

func svcChart(title, ylabel string, points []*svcPoint, lines []svcLine) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "Services"
	p.Y.Label.Text = ylabel
	// The numbers of Services grow tenfold: a log axis, ticked at each.
	p.X.Scale = plot.LogScale{}
	var ticks []plot.Tick
	for _, pt := range points {
		ticks = append(ticks, plot.Tick{Value: float64(pt.n), Label: num(float64(pt.n))})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Legend.Top = true
	p.Legend.Left = true
	var vs []any
	drawn, top := 0, 0.0
	for _, l := range lines {
		var xys plotter.XYs
		for _, pt := range points {
			if y := l.y(pt); y >= 0 && !math.IsNaN(y) && !math.IsInf(y, 0) {
				xys = append(xys, plotter.XY{X: float64(pt.n), Y: y})
				top = max(top, y)
			}
		}
		if len(xys) == 0 {
			continue
		}
		vs = append(vs, l.name, xys)
		drawn++
	}
	if drawn == 0 {
		return nil, errors.New("nothing to draw")
	}
	if err := plotutil.AddLinePoints(p, vs...); err != nil {
		return nil, err
	}
	// From zero, with room above the lines for the legend.
	p.Y.Min, p.Y.Max = 0, max(top, 1e-9)*1.45
	if len(points) == 1 {
		p.X.Min, p.X.Max = float64(points[0].n)/2, float64(points[0].n)*2
	}
	return p, nil
}

func writeSvcPlots(dir string, r *svcResult) ([]string, error) {
	if len(r.points) == 0 {
		return nil, errors.New("no measurement")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	direct := directKey(r.nodeOf("anet"))
	var written []string

	// Latency: p50 and p99 side by side.
	var row []*plot.Plot
	for _, q := range []float64{50, 99} {
		var lines []svcLine
		for _, x := range svcProxies {
			lines = append(lines, svcLine{x.title, func(p *svcPoint) float64 { return p.pct(x.key, q) }})
		}
		lines = append(lines, svcLine{"direct to the backend", func(p *svcPoint) float64 { return p.pct(direct, q) }})
		p, err := svcChart(fmt.Sprintf("connect() to a ClusterIP from a pod, p%.0f", q), "µs", r.points, lines)
		if err != nil {
			return written, fmt.Errorf("latency p%.0f: %w", q, err)
		}
		row = append(row, p)
	}
	img := vgimg.New(vg.Points(900), vg.Points(380))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(row), PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	cs := plot.Align([][]*plot.Plot{row}, tiles, dc)
	for j, p := range row {
		p.Draw(cs[0][j])
	}
	path := filepath.Join(dir, "services-latency.png")
	if err := writePNG(path, img); err != nil {
		return written, err
	}
	written = append(written, path)

	// Programming time: each proxy keeps up with the API server or lags
	// behind it; the lag after the last object is made is what differs.
	var lines []svcLine
	for _, x := range svcProxies {
		lines = append(lines, svcLine{x.title, func(p *svcPoint) float64 { return max(0, (p.served[x.key] - p.create).Seconds()) }})
	}
	p, err := svcChart("all Services served, after the last was created", "s", r.points, lines)
	if err != nil {
		return written, fmt.Errorf("programming: %w", err)
	}
	path = filepath.Join(dir, "services-programming.png")
	if err := p.Save(vg.Points(450), vg.Points(380), path); err != nil {
		return written, err
	}
	return append(written, path), nil
}

func writePNG(path string, img *vgimg.Canvas) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
