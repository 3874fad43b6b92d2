package proxier

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// TestReadmeListsTheRenderedConfig keeps the haproxy.cfg listing of
// README.md ("One Service in HAProxy's files") what Render gives for its
// settings; -update rewrites the listing.
func TestReadmeListsTheRenderedConfig(t *testing.T) {
	c := &haproxycfg.Config{
		Global: haproxycfg.Global{MaxConn: 32667, NBThread: 2, StatsSocket: "/var/run/kube-haproxy/haproxy.sock", MaxOldWorkers: 5, PeerPort: 10401,
			PrometheusExporter: netip.MustParseAddrPort("127.0.0.1:10402")},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 2 * time.Second, TimeoutClient: time.Hour, TimeoutServer: time.Hour},
		Dispatchers: []*haproxycfg.Dispatcher{{
			Listen:           netip.MustParseAddrPort("0.0.0.0:10400"),
			MapDir:           "/var/run/kube-haproxy",
			KeepClientSource: true,
		}},
	}
	cfg, err := haproxycfg.Render(c)
	require.NoError(t, err)
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	const intro = "haproxy.cfg, all\nof it:\n\n```\n"
	start := strings.Index(string(readme), intro)
	require.GreaterOrEqual(t, start, 0, "README.md has no listing after %q", intro)
	start += len(intro)
	end := start + strings.Index(string(readme[start:]), "```\n")
	if *update {
		out := string(readme[:start]) + string(cfg) + string(readme[end:])
		require.NoError(t, os.WriteFile("README.md", []byte(out), 0o644))
		return
	}
	require.Equal(t, string(cfg), string(readme[start:end]), "README.md's haproxy.cfg listing is stale: go test ./proxier -run TestReadme -update")
}
