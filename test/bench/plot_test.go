package bench

import (
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// plotRuns is a full benchmark's worth of runs: three scales in the
// latency pass, two in the memory pass, both modes, the data plane at the
// smallest scale.
func plotRuns() []Run {
	var runs []Run
	for i, n := range []int{100, 1000, 10000} {
		for _, mode := range []string{ModeHAProxy, ModeNFTables} {
			r := Run{Pass: PassLatency, Mode: mode, Services: n, Endpoints: 10, HasReloads: mode == ModeHAProxy,
				ColdStart:      time.Duration(i+1) * time.Second,
				EndpointChange: msList(100*(i+1), 150*(i+1), 400*(i+1)),
				NewService:     msList(300*(i+1), 500*(i+1)),
				ProxyHWM:       int64(80+100*i) << 20, HAProxyHWM: int64(30+200*i) << 20}
			if i == 0 {
				r.Wrk = map[WrkKey]WrkResult{}
				for _, k := range []WrkKey{{TargetClusterIP, ConnKeepAlive}, {TargetClusterIP, ConnClose}, {TargetDirect, ConnKeepAlive}, {TargetDirect, ConnClose}} {
					r.Wrk[k] = WrkResult{RequestsPerSec: 3000, P50: time.Millisecond, P99: 20 * time.Millisecond}
				}
			}
			runs = append(runs, r)
		}
	}
	for i, n := range []int{1000, 10000} {
		for _, mode := range []string{ModeHAProxy, ModeNFTables} {
			runs = append(runs, Run{Pass: PassMemory, Mode: mode, Services: n, Endpoints: 2, HasReloads: mode == ModeHAProxy,
				ColdStart: time.Duration(2+10*i) * time.Second, ProxyHWM: int64(100+500*i) << 20, HAProxyHWM: int64(60+600*i) << 20})
		}
	}
	return runs
}

// decodePNG fails unless path is a PNG of a readable size.
func decodePNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.Positive(t, st.Size(), path)
	// Small enough to commit beside the docs.
	require.Less(t, st.Size(), int64(100<<10), path)
	img, err := png.Decode(f)
	require.NoError(t, err, path)
	require.GreaterOrEqual(t, img.Bounds().Dx(), 400, path)
	require.GreaterOrEqual(t, img.Bounds().Dy(), 250, path)
	return img
}

func TestPlotsEveryFigure(t *testing.T) {
	dir := t.TempDir()
	figs, err := Plots(filepath.Join(dir, "plots"), plotRuns())
	if d := os.Getenv("BENCH_PLOT_DIR"); d != "" {
		// To look at the figures: BENCH_PLOT_DIR=/some/dir go test -run TestPlotsEveryFigure
		_, err = Plots(d, plotRuns())
	}
	require.NoError(t, err)
	var files []string
	for _, f := range figs {
		files = append(files, f.File)
		require.NotEmpty(t, f.Title)
		img := decodePNG(t, filepath.Join(dir, "plots", f.File))
		// Something is drawn: not one colour all over.
		require.True(t, hasColours(img, 3), f.File)
	}
	require.Equal(t, []string{FigEndpointChange, FigNewService, FigColdStart, FigMemory, FigDataPlaneRate, FigDataPlaneLatency}, files)
	// The titles say what is measured and at how many endpoints.
	require.Contains(t, figs[0].Title, "10 endpoints each")
	require.Contains(t, figs[3].Title, "2 endpoints each")
	require.Contains(t, figs[4].Title, "(100 Services)")
}

func TestPlotsOnlyWhatWasMeasured(t *testing.T) {
	// One scale, one mode, no data plane and no memory pass (a smoke run
	// of one mode): line figures of one point each, and no empty figures.
	runs := []Run{{Pass: PassLatency, Mode: ModeHAProxy, Services: 100, Endpoints: 10, HasReloads: true,
		ColdStart: time.Second, EndpointChange: msList(10, 20), NewService: msList(30), ProxyHWM: 50 << 20}}
	dir := t.TempDir()
	figs, err := Plots(dir, runs)
	require.NoError(t, err)
	var files []string
	for _, f := range figs {
		files = append(files, f.File)
		decodePNG(t, filepath.Join(dir, f.File))
	}
	require.Equal(t, []string{FigEndpointChange, FigNewService, FigColdStart}, files)
	_, err = os.Stat(filepath.Join(dir, FigMemory))
	require.True(t, os.IsNotExist(err), "no memory figure without a memory pass")
}

// hasColours reports whether img shows at least n distinct colours.
func hasColours(img image.Image, n int) bool {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
			if len(seen) >= n {
				return true
			}
		}
	}
	return false
}
