// Package haproxycfg is the typed model of the haproxy.cfg that
// kube-haproxy generates, and its deterministic renderer.
//
// The model holds exactly what the proxier needs: a global and a defaults
// section, frontends (binds, ACLs, tcp-request connection rules,
// use_backend/default_backend) and backends (balance, stick table, servers
// with stable ids). Every string that comes from the Kubernetes API is
// either a validated name (see ValidName) or a comment that is escaped
// before it reaches the file, so no API object can add a line or a section
// to the configuration.
//
// Besides rendering, the package keeps server ids stable between two
// configurations (AssignServerIDs), merges the per-IP-family models of
// the IPv4 and IPv6 proxiers into one configuration (Merge), and
// interprets a configuration for a single connection (Trace), which tests
// and the explain view use to say where a connection goes.
package haproxycfg
