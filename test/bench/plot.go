package bench

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"sort"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Figure names: one PNG per figure, in the report's plot directory.
const (
	FigEndpointChange   = "endpoint-change.png"
	FigNewService       = "new-service.png"
	FigColdStart        = "cold-start.png"
	FigMemory           = "memory.png"
	FigDataPlaneRate    = "dataplane-requests.png"
	FigDataPlaneLatency = "dataplane-latency.png"
)

// Figure is one plot written by Plots, with what the report says of it.
type Figure struct {
	File  string
	Title string
}

// Colours per mode, the same in every figure: a reader learns them once.
var (
	colourHAProxy  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // blue
	colourNFTables = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff} // red
	colourDirect   = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff} // grey
)

func modeColour(mode string) color.Color {
	if mode == ModeHAProxy {
		return colourHAProxy
	}
	return colourNFTables
}

// series is one line of a figure: a value per number of Services.
type series struct {
	name   string
	colour color.Color
	dashed bool
	pts    plotter.XYs
}

// Plots draws every figure the runs have data for into dir and returns
// them in the report's order. A figure without data (no memory pass, no
// data plane) is left out rather than drawn empty.
func Plots(dir string, runs []Run) ([]Figure, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	var figs []Figure
	add := func(file, title string, draw func(path, title string) (bool, error)) error {
		ok, err := draw(filepath.Join(dir, file), title)
		if err != nil {
			return fmt.Errorf("plotting %s: %w", file, err)
		}
		if ok {
			figs = append(figs, Figure{File: file, Title: title})
		}
		return nil
	}
	lat := filterRuns(runs, PassLatency)
	mem := filterRuns(runs, PassMemory)
	percentiles := func(get func(*Run) []time.Duration) func(path, title string) (bool, error) {
		return func(path, title string) (bool, error) {
			var ss []series
			for _, mode := range []string{ModeHAProxy, ModeNFTables} {
				for _, p := range []float64{50, 99} {
					s := series{name: fmt.Sprintf("%s p%.0f", mode, p), colour: modeColour(mode), dashed: p == 99}
					for _, r := range byMode(lat, mode) {
						if v := get(r); len(v) > 0 {
							s.pts = append(s.pts, plotter.XY{X: float64(r.Services), Y: msf(Percentile(v, p))})
						}
					}
					ss = append(ss, s)
				}
			}
			return linePlot(path, title, "latency (ms)", ss)
		}
	}
	endpoints := func(rs []*Run) string {
		if len(rs) == 0 {
			return ""
		}
		return fmt.Sprintf(", %d endpoints each", rs[0].Endpoints)
	}
	if err := add(FigEndpointChange, "Endpoint change → first request served by a new endpoint"+endpoints(lat),
		percentiles(func(r *Run) []time.Duration { return r.EndpointChange })); err != nil {
		return nil, err
	}
	if err := add(FigNewService, "New Service + EndpointSlice → ClusterIP answers"+endpoints(lat),
		percentiles(func(r *Run) []time.Duration { return r.NewService })); err != nil {
		return nil, err
	}
	if err := add(FigColdStart, "Cold start: kube-proxy started → every ClusterIP answers", func(path, title string) (bool, error) {
		var ss []series
		for _, pass := range [][]*Run{lat, mem} {
			for _, mode := range []string{ModeHAProxy, ModeNFTables} {
				rs := byMode(pass, mode)
				if len(rs) == 0 {
					continue
				}
				s := series{name: fmt.Sprintf("%s, %d endpoints each", mode, rs[0].Endpoints), colour: modeColour(mode), dashed: rs[0].Pass == PassMemory}
				for _, r := range rs {
					s.pts = append(s.pts, plotter.XY{X: float64(r.Services), Y: r.ColdStart.Seconds()})
				}
				ss = append(ss, s)
			}
		}
		return linePlot(path, title, "time (s)", ss)
	}); err != nil {
		return nil, err
	}
	if err := add(FigMemory, "Peak RSS on one node (VmHWM)"+endpoints(mem), func(path, title string) (bool, error) {
		total := series{name: "haproxy mode: kube-proxy + every HAProxy process", colour: colourHAProxy}
		alone := series{name: "haproxy mode: kube-proxy alone", colour: colourHAProxy, dashed: true}
		nft := series{name: "nftables mode: kube-proxy", colour: colourNFTables}
		for _, r := range byMode(mem, ModeHAProxy) {
			total.pts = append(total.pts, plotter.XY{X: float64(r.Services), Y: mibf(r.ProxyHWM + r.HAProxyHWM)})
			alone.pts = append(alone.pts, plotter.XY{X: float64(r.Services), Y: mibf(r.ProxyHWM)})
		}
		for _, r := range byMode(mem, ModeNFTables) {
			nft.pts = append(nft.pts, plotter.XY{X: float64(r.Services), Y: mibf(r.ProxyHWM)})
		}
		return linePlot(path, title, "peak RSS (MiB)", []series{total, alone, nft})
	}); err != nil {
		return nil, err
	}
	// The data plane does not depend on the number of Services much; the
	// smallest scale's run is the one least disturbed by the rest.
	dp := dataPlaneRuns(lat)
	if dp.scale > 0 {
		where := fmt.Sprintf(" (%d Services)", dp.scale)
		if err := add(FigDataPlaneRate, "Data plane: requests/s through a ClusterIP"+where, func(path, title string) (bool, error) {
			return barPlot(path, title, "requests/s", []string{ConnKeepAlive, ConnClose}, dp.bars(func(w WrkResult) float64 { return w.RequestsPerSec }))
		}); err != nil {
			return nil, err
		}
		if err := add(FigDataPlaneLatency, "Data plane: request latency through a ClusterIP"+where, func(path, title string) (bool, error) {
			groups := []string{"keep-alive p50", "keep-alive p99", "new conn. p50", "new conn. p99"}
			var bars []barSeries
			for _, b := range dp.bars(func(w WrkResult) float64 { return msf(w.P50) }) {
				p99 := dp.bars(func(w WrkResult) float64 { return msf(w.P99) })
				for _, b99 := range p99 {
					if b99.name == b.name {
						// Groups: keep-alive p50, p99, new connection p50, p99.
						b.vals = []float64{b.vals[0], b99.vals[0], b.vals[1], b99.vals[1]}
					}
				}
				bars = append(bars, b)
			}
			return barPlot(path, title, "latency (ms)", groups, bars)
		}); err != nil {
			return nil, err
		}
	}
	return figs, nil
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mibf(b int64) float64 { return float64(b) / (1 << 20) }

func filterRuns(runs []Run, pass string) []*Run {
	var out []*Run
	for i := range runs {
		if runs[i].Pass == pass {
			out = append(out, &runs[i])
		}
	}
	return out
}

// byMode returns mode's runs by increasing number of Services.
func byMode(rs []*Run, mode string) []*Run {
	var out []*Run
	for _, r := range rs {
		if r.Mode == mode {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Services < out[j].Services })
	return out
}

// dataPlane is the runs the data-plane figures come from: one scale.
type dataPlane struct {
	scale int
	runs  map[string]*Run
}

func dataPlaneRuns(lat []*Run) dataPlane {
	dp := dataPlane{runs: map[string]*Run{}}
	for _, r := range lat {
		if len(r.Wrk) == 0 {
			continue
		}
		if dp.scale == 0 || r.Services < dp.scale {
			dp.scale = r.Services
		}
	}
	for _, r := range lat {
		if r.Services == dp.scale && len(r.Wrk) > 0 {
			dp.runs[r.Mode] = r
		}
	}
	return dp
}

// bars returns, per path (haproxy, nftables, direct to the pod), value
// for keep-alive and for a new connection per request; 0 where missing.
func (dp dataPlane) bars(value func(WrkResult) float64) []barSeries {
	var out []barSeries
	get := func(r *Run, k WrkKey) float64 {
		if w, ok := r.wrkResult(k); ok {
			return value(w)
		}
		return 0
	}
	for _, mode := range []string{ModeHAProxy, ModeNFTables} {
		r := dp.runs[mode]
		if r == nil {
			continue
		}
		out = append(out, barSeries{name: mode + " ClusterIP", colour: modeColour(mode), vals: []float64{
			get(r, WrkKey{TargetClusterIP, ConnKeepAlive}), get(r, WrkKey{TargetClusterIP, ConnClose}),
		}})
	}
	// Direct to the pod does not depend on the mode: nftables mode's run
	// when there is one, as in the table.
	direct := dp.runs[ModeNFTables]
	if _, ok := direct.wrkResult(WrkKey{TargetDirect, ConnKeepAlive}); !ok {
		direct = dp.runs[ModeHAProxy]
	}
	if direct != nil {
		out = append(out, barSeries{name: "direct to the pod", colour: colourDirect, vals: []float64{
			get(direct, WrkKey{TargetDirect, ConnKeepAlive}), get(direct, WrkKey{TargetDirect, ConnClose}),
		}})
	}
	return out
}

// figure sizes: readable in a browser and on GitHub, small as PNG.
const (
	figWidth  = 18 * vg.Centimeter
	figHeight = 11 * vg.Centimeter
)

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	return p
}

// linePlot draws ss against the number of Services on a log axis, and
// reports false (drawing nothing) when no series has a point.
func linePlot(path, title, ylabel string, ss []series) (bool, error) {
	p := newPlot(title, ylabel)
	p.X.Label.Text = "Services (log scale)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = servicesTicks{}
	minX, maxX, maxY := 0.0, 0.0, 0.0
	havePoint := false
	for _, s := range ss {
		if len(s.pts) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(s.pts)
		if err != nil {
			return false, fmt.Errorf("%s: %w", s.name, err)
		}
		l.Color, l.Width = s.colour, vg.Points(1.5)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		pts.Color, pts.Shape = s.colour, draw.CircleGlyph{}
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
		for _, xy := range s.pts {
			if !havePoint || xy.X < minX {
				minX = xy.X
			}
			if !havePoint || xy.X > maxX {
				maxX = xy.X
			}
			if xy.Y > maxY {
				maxY = xy.Y
			}
			havePoint = true
		}
	}
	if !havePoint {
		return false, nil
	}
	// Half a decade of room either side, so one scale alone is a point
	// in the middle rather than an empty axis; room above for the legend.
	p.X.Min, p.X.Max = minX/2, maxX*2
	p.Y.Max = maxY * 1.35
	if p.Y.Max == 0 {
		p.Y.Max = 1
	}
	return true, p.Save(figWidth, figHeight, path)
}

// servicesTicks labels the decades of the Services axis as plain numbers
// (100, 1000, 10000) rather than in exponent form.
type servicesTicks struct{}

func (servicesTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for d := 1.0; d <= max*10; d *= 10 {
		for m := 1.0; m < 10; m++ {
			v := d * m
			if v < min || v > max {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 {
				t.Label = fmt.Sprintf("%.0f", v)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// barSeries is one path's bars, a value per group.
type barSeries struct {
	name   string
	colour color.Color
	vals   []float64
}

// barPlot draws grouped bars: a group per name in groups, a bar per series.
func barPlot(path, title, ylabel string, groups []string, bs []barSeries) (bool, error) {
	if len(bs) == 0 {
		return false, nil
	}
	p := newPlot(title, ylabel)
	width := vg.Points(28)
	maxY := 0.0
	for i, b := range bs {
		if len(b.vals) != len(groups) {
			return false, fmt.Errorf("%s: %d values for %d groups", b.name, len(b.vals), len(groups))
		}
		bar, err := plotter.NewBarChart(plotter.Values(b.vals), width)
		if err != nil {
			return false, fmt.Errorf("%s: %w", b.name, err)
		}
		bar.Color = b.colour
		bar.LineStyle.Width = 0
		bar.Offset = vg.Length(float64(i)-float64(len(bs)-1)/2) * width
		p.Add(bar)
		p.Legend.Add(b.name, bar)
		for _, v := range b.vals {
			if v > maxY {
				maxY = v
			}
		}
	}
	p.NominalX(groups...)
	p.Legend.Left = false
	p.Y.Max = maxY * 1.3
	if p.Y.Max == 0 {
		p.Y.Max = 1
	}
	return true, p.Save(figWidth, figHeight, path)
}
