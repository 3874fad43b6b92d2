package requestlog

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/component-base/metrics/testutil"
)

func TestRecord(t *testing.T) {
	Register()
	Requests.Reset()
	Duration.Reset()
	for _, line := range []string{
		"default.web:http:tcp 200 12",
		"default.web:http:tcp:local 503 0",
		"default.web:http:tcp:ipv6 - 3",
		"default.grpc:8080:tcp 200 2500",
	} {
		assert.True(t, Record(line), line)
	}
	for _, bad := range []string{"", "default.web:http:tcp 200", "web 200 1", "default.web:http:tcp 200 -4", "default.web:http:tcp 200 x"} {
		assert.False(t, Record(bad), bad)
	}
	count := func(ns, svc, port, code string) float64 {
		v, err := testutil.GetCounterMetricValue(Requests.WithLabelValues(ns, svc, port, code))
		require.NoError(t, err)
		return v
	}
	assert.InDelta(t, 1, count("default", "web", "http", "2xx"), 0)
	assert.InDelta(t, 1, count("default", "web", "http", "5xx"), 0)
	assert.InDelta(t, 1, count("default", "web", "http", "none"), 0)
	assert.InDelta(t, 1, count("default", "grpc", "8080", "2xx"), 0)
	n, err := testutil.GetHistogramMetricCount(Duration.WithLabelValues("default", "grpc", "8080"))
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	sum, err := testutil.GetHistogramMetricValue(Duration.WithLabelValues("default", "grpc", "8080"))
	require.NoError(t, err)
	assert.InDelta(t, 2.5, sum, 1e-9)
}

// Datagrams sent to the socket are counted; a stale socket file is
// replaced.
func TestServe(t *testing.T) {
	Register()
	Requests.Reset()
	path := filepath.Join(t.TempDir(), "request-log.sock")
	for range 2 {
		conn, err := Listen(path)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { Serve(ctx, conn, logr.Discard()); close(done) }()
		w, err := net.Dial("unixgram", path)
		require.NoError(t, err)
		_, err = w.Write([]byte("ns.app:http:tcp 404 1\n"))
		require.NoError(t, err)
		w.Close()
		require.Eventually(t, func() bool {
			v, _ := testutil.GetCounterMetricValue(Requests.WithLabelValues("ns", "app", "http", "4xx"))
			return v >= 1
		}, 5*time.Second, 10*time.Millisecond)
		cancel()
		<-done
		Requests.Reset()
	}
}
