// Package requestlog turns HAProxy's log of the requests of HTTP Service
// ports into kube-proxy metrics per Service port: requests by status
// class, and their duration.
//
// HAProxy's own metrics have one backend for every HTTP Service port of a
// family (the dispatch design has no backend per Service), so the
// per-Service figures come from here: HAProxy sends one datagram per
// request to a unix socket kube-proxy listens on, "<endpoint set>
// <status> <total ms>" (haproxycfg renders the log-format). A datagram
// that does not parse is counted and dropped.
package requestlog

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	"kube-haproxy.io/kube-haproxy/proxier/translate"
)

var (
	// Requests counts the requests of HTTP Service ports.
	Requests = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_http_requests_total",
			Help:           "Cumulative number of requests to HTTP Service ports (appProtocol http, kubernetes.io/ws, kubernetes.io/h2c, grpc), by Service port and status class (1xx to 5xx; \"none\" when no response was sent)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"namespace", "service", "port", "code"},
	)
	// Duration is the time from a request to the end of its response.
	Duration = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_http_request_duration_seconds",
			Help:           "Time from the start of a request to an HTTP Service port to the end of its response (a gRPC stream's whole life), by Service port",
			Buckets:        metrics.ExponentialBuckets(0.001, 2, 16),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"namespace", "service", "port"},
	)
	// Unparsed counts datagrams that were not a request line.
	Unparsed = metrics.NewCounter(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_http_request_log_unparsed_total",
			Help:           "Cumulative number of HAProxy request log lines that did not parse (and were not counted)",
			StabilityLevel: metrics.ALPHA,
		},
	)
)

var registerOnce sync.Once

// Register registers the metrics with the registry kube-proxy's /metrics
// serves.
func Register() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(Requests, Duration, Unparsed)
	})
}

// Record counts one log line; false when it does not parse.
func Record(line string) bool {
	f := strings.Fields(line)
	if len(f) != 3 {
		return false
	}
	ns, svc, port, ok := translate.ParseSetName(f[0])
	if !ok {
		return false
	}
	ms, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || ms < 0 {
		return false
	}
	code := "none"
	if status, err := strconv.Atoi(f[1]); err == nil && status >= 100 && status < 600 {
		code = strconv.Itoa(status/100) + "xx"
	}
	Requests.WithLabelValues(ns, svc, port, code).Inc()
	Duration.WithLabelValues(ns, svc, port).Observe(float64(ms) / 1000)
	return true
}

// Listen opens the socket at path for HAProxy's datagrams, replacing a
// socket left by an earlier kube-proxy. Only root may write to it.
func Listen(path string) (*net.UnixConn, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Serve counts every datagram conn receives until ctx ends, then closes
// conn.
func Serve(ctx context.Context, conn *net.UnixConn, logger logr.Logger) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 1024)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				logger.Error(err, "Reading HAProxy's request log stopped; per-Service HTTP metrics are no longer counted")
			}
			return
		}
		if !Record(strings.TrimSpace(string(buf[:n]))) {
			Unparsed.Inc()
		}
	}
}
