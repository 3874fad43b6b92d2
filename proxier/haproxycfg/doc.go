// Package haproxycfg is the typed model of what kube-haproxy makes HAProxy
// serve, and its deterministic renderers.
//
// haproxy.cfg holds the settings (global, defaults, a peers section) and one
// Dispatcher per IP family: a frontend with one listener, to which nftables
// sends every Service connection, and rules that pick the endpoint from the
// dispatcher's map files. The Service ports (listeners, endpoint sets,
// policies, affinity) live only in those map files (RenderMaps), which the
// runtime API changes in place: a new, changed or deleted Service never
// changes haproxy.cfg. Every string that comes from the Kubernetes API is
// either a validated name (see ValidName), an address formatted by netip, or
// a comment that is escaped, so no API object can add a line, a field or a
// section.
//
// Besides rendering, the package merges the per-family models of the IPv4
// and IPv6 proxiers into one configuration (Merge) and interprets a
// dispatcher for a single connection as the kernel and HAProxy would
// (Trace), which tests use to say where a connection goes.
package haproxycfg
