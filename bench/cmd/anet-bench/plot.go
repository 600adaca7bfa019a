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
// services-programming.png (time to serve every Service).

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
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	var vs []any
	drawn := 0
	for _, l := range lines {
		var xys plotter.XYs
		for _, pt := range points {
			if y := l.y(pt); y > 0 && !math.IsNaN(y) && !math.IsInf(y, 0) {
				xys = append(xys, plotter.XY{X: float64(pt.n), Y: y})
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
	return p, nil
}

func writeSvcPlots(dir string, r *svcResult) ([]string, error) {
	if len(r.points) == 0 {
		return nil, errors.New("no measurement")
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

	// Programming time.
	var lines []svcLine
	for _, x := range svcProxies {
		lines = append(lines, svcLine{x.title, func(p *svcPoint) float64 { return p.served[x.key].Seconds() }})
	}
	lines = append(lines, svcLine{"objects created (API)", func(p *svcPoint) float64 { return p.create.Seconds() }})
	p, err := svcChart("Services created → all served", "s", r.points, lines)
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
