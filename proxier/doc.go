// Package proxier is the HAProxy data plane for Kubernetes Services: an
// implementation of upstream kube-proxy's proxy.Provider that turns Services
// and EndpointSlices into entries of HAProxy's maps, served by one
// listener per IP family to which nftables sends every Service connection.
//
// The pieces, each in its own package:
//   - haproxycfg: the model (settings, one dispatcher per family, Service
//     ports) and its renderers for haproxy.cfg and the map files;
//   - translate: Services + endpoints (upstream's ServicePort/Endpoint) to the model;
//   - runtimeapi: client of HAProxy's runtime API (and a fake that keeps state);
//   - supervisor: runs HAProxy in master-worker mode, reloads it;
//   - apply: diffs desired vs loaded maps into runtime API commands, and
//     reloads only when haproxy.cfg (the settings) changes;
//   - localaddr, serviceguard: host networking for scope node (AnyIP routes;
//     nftables dispatch to HAProxy's listener and a filter so only served
//     IP:port pairs accept);
//   - hostnet: runs both around each Apply, in the order that never leaves
//     a Service IP local and unguarded (wired in by hostnetwork.go).
//
// This package wires them to upstream's change trackers and sync runner.
package proxier
