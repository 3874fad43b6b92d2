// Package proxier is the HAProxy data plane for Kubernetes Services: an
// implementation of upstream kube-proxy's proxy.Provider that turns Services
// and EndpointSlices into HAProxy frontends and backends.
//
// The pieces, each in its own package:
//   - haproxycfg: the typed HAProxy configuration model and its renderer;
//   - translate: Services + endpoints (upstream's ServicePort/Endpoint) to the model;
//   - runtimeapi: client of HAProxy's runtime API (and a fake that keeps state);
//   - supervisor: runs HAProxy in master-worker mode, reloads it;
//   - apply: diffs desired vs loaded model, chooses runtime API or reload;
//   - localaddr, serviceguard: host networking for scope node (AnyIP routes,
//     nftables filter so only served IP:port pairs accept);
//   - hostnet: runs both around each Apply, in the order that never leaves
//     a Service IP local and unguarded (wired in by hostnetwork.go).
//
// This package wires them to upstream's change trackers and sync runner.
package proxier
