package haproxycfg

import (
	"net/netip"
	"time"
)

// Config is a whole haproxy.cfg: one global section, one defaults section,
// the frontends and the backends. The renderer orders frontends and
// backends by name, so the order of the slices does not matter.
type Config struct {
	Global    Global
	Defaults  Defaults
	Frontends []*Frontend
	Backends  []*Backend
}

// Global is the global section. Zero fields are not rendered.
type Global struct {
	// MaxConn is the process-wide connection limit (global maxconn). Each
	// proxied connection costs two file descriptors; see MaxConnForFileLimit.
	MaxConn int
	// NBThread is the number of worker threads (usually one per core).
	NBThread int
	// StatsSocket is the path of the runtime API socket. It is rendered
	// with "level admin" (servers are added and removed through it) and
	// "expose-fd listeners" (a reloaded worker takes the listening sockets
	// over, so no connection is refused during a reload).
	StatsSocket string
	// HardStopAfter bounds how long an old worker may drain its
	// connections after a reload.
	HardStopAfter time.Duration
	// PIDFile is written by the master process when set.
	PIDFile string
}

// Defaults is the defaults section. Mode is always tcp: Services are L4.
type Defaults struct {
	TimeoutConnect time.Duration
	TimeoutClient  time.Duration
	TimeoutServer  time.Duration
	// TimeoutClientFin and TimeoutServerFin bound half-closed connections.
	TimeoutClientFin time.Duration
	TimeoutServerFin time.Duration
}

// Frontend is one frontend section: where connections are accepted and
// how they are classified, filtered and handed to a backend.
type Frontend struct {
	// Name must satisfy ValidName.
	Name string
	// Comment is free text (escaped on rendering), e.g. the Service port.
	Comment string
	Binds   []Bind
	ACLs    []ACL
	// TCPRequestConnection rules are evaluated in order when a connection
	// is accepted, before any byte is read.
	TCPRequestConnection []TCPRule
	// UseBackends are evaluated in order; the first whose condition holds
	// wins. Otherwise DefaultBackend is used.
	UseBackends    []UseBackend
	DefaultBackend string
}

// Bind is one listening address of a frontend.
type Bind struct {
	// Name must satisfy ValidName; ACLs see it through the so_name fetch,
	// which is how one frontend tells ClusterIP from NodePort traffic.
	Name string
	// Addr is the address to listen on. An unspecified address (0.0.0.0
	// or ::) listens on every local address of that family; IPv6 ones
	// are rendered v6only so they never catch IPv4 traffic.
	Addr netip.Addr
	Port uint16
	// Transparent lets the socket bind an address that is on no
	// interface (IP(V6)_TRANSPARENT, needs CAP_NET_ADMIN). IPv6 Service
	// IPs made local by an AnyIP route need it: unlike IPv4, bind(2) on
	// such an IPv6 address fails without it.
	Transparent bool
}

// ACLKind is what an ACL tests.
type ACLKind int

const (
	// ACLSourceIn matches when the client address is in one of Prefixes.
	ACLSourceIn ACLKind = iota + 1
	// ACLBindNamePrefix matches when the name of the bind that accepted
	// the connection starts with one of Values.
	ACLBindNamePrefix
)

// ACL is a named condition of a frontend.
type ACL struct {
	// Name must satisfy ValidName.
	Name string
	Kind ACLKind
	// Prefixes, for ACLSourceIn.
	Prefixes []netip.Prefix
	// Values, for ACLBindNamePrefix; each must satisfy ValidName.
	Values []string
}

// Term is one part of a Condition: a named ACL, or "the backend has at
// least one usable server" (an anonymous nbsrv ACL, which follows runtime
// API changes without a reload). Exactly one of ACL and BackendHasServers
// is set.
type Term struct {
	Negate            bool
	ACL               string
	BackendHasServers string
}

// Condition is a conjunction of terms; an empty Condition always holds.
type Condition []Term

// TCPAction is the action of a tcp-request connection rule.
type TCPAction string

const (
	// TCPAccept accepts the connection and stops evaluating rules.
	TCPAccept TCPAction = "accept"
	// TCPReject closes the connection at once (the client sees a reset):
	// the "fail fast" answer for a Service without endpoints.
	TCPReject TCPAction = "reject"
	// TCPSilentDrop drops the connection without telling the client,
	// as kube-proxy does for external traffic that may not be served here.
	TCPSilentDrop TCPAction = "silent-drop"
)

// TCPRule is a "tcp-request connection <action> if <cond>" rule.
type TCPRule struct {
	Action TCPAction
	Cond   Condition
}

// UseBackend is a "use_backend <backend> if <cond>" rule.
type UseBackend struct {
	Backend string
	Cond    Condition
}

// Backend is one backend section: a set of servers (pod endpoints).
type Backend struct {
	// Name must satisfy ValidName.
	Name    string
	Comment string
	// Balance is the algorithm; it must be dynamic (roundrobin, leastconn)
	// because servers are added and removed through the runtime API.
	// Empty means roundrobin.
	Balance string
	// StickTable, when set, pins each client address to one server
	// (sessionAffinity: ClientIP).
	StickTable *StickTable
	Servers    []Server
}

// StickTable is a stick table keyed on the client address.
type StickTable struct {
	// IPv6 selects "type ipv6" keys, else "type ip".
	IPv6 bool
	// Size is the number of entries; 0 means DefaultStickTableSize.
	Size int
	// Expire is how long an idle client keeps its server.
	Expire time.Duration
}

// DefaultStickTableSize is the number of entries of a stick table whose
// Size is 0.
const DefaultStickTableSize = 100000

// Server is one endpoint of a backend.
type Server struct {
	// Name must satisfy ValidName; see ServerName.
	Name string
	Addr netip.Addr
	Port uint16
	// ID is HAProxy's numeric server id, unique in its backend and kept
	// stable across reloads (AssignServerIDs) so that runtime state and
	// stick tables survive. 0 means "not assigned": the renderer then
	// lets HAProxy choose.
	ID int
	// Comment is free text (escaped), rendered on the line before.
	Comment string
}

// AddrPort is the server address.
func (s Server) AddrPort() netip.AddrPort { return netip.AddrPortFrom(s.Addr, s.Port) }

// Frontend returns the frontend with the given name, or nil.
func (c *Config) Frontend(name string) *Frontend {
	for _, f := range c.Frontends {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// Backend returns the backend with the given name, or nil.
func (c *Config) Backend(name string) *Backend {
	for _, b := range c.Backends {
		if b.Name == name {
			return b
		}
	}
	return nil
}
