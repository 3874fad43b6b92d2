package haproxycfg

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Config is what one HAProxy serves: the global and defaults sections of
// haproxy.cfg and one Dispatcher per IP family. Only Global, Defaults and
// the dispatchers' listeners and files shape haproxy.cfg, which therefore
// changes only with settings; the Service ports live in the dispatchers'
// map files, which HAProxy's runtime API changes in place.
type Config struct {
	Global   Global
	Defaults Defaults
	// Dispatchers, at most one per IP family.
	Dispatchers []*Dispatcher
}

// Global is the global section. Zero fields are not rendered.
type Global struct {
	// MaxConn is the process-wide connection limit (global maxconn). Each
	// proxied connection costs two file descriptors; see MaxConnForFileLimit.
	MaxConn int
	// NBThread is the number of worker threads (usually one per core).
	NBThread int
	// StatsSocket is the path of the runtime API socket. It is rendered
	// with "level admin" (maps are changed through it) and "expose-fd
	// listeners" (a reloaded worker takes the listening sockets over, so
	// no connection is refused during a reload).
	StatsSocket string
	// HardStopAfter bounds how long an old worker may drain its
	// connections after a reload; 0 renders nothing (no bound).
	HardStopAfter time.Duration
	// MaxOldWorkers is how many reloads a worker survives before it is
	// stopped (mworker-max-reloads); 0 renders nothing.
	MaxOldWorkers int
	// PIDFile is written by the master process when set.
	PIDFile string
	// PeerPort, when set, makes 127.0.0.1:PeerPort the local peer of the
	// "kube-haproxy" peers section: a reloaded worker learns the
	// session-affinity tables from the old one over it, so affinity
	// survives a reload.
	PeerPort uint16
	// PrometheusExporter, when set, is where HAProxy's built-in Prometheus
	// exporter serves HAProxy's own metrics (GET /metrics). A fixed part
	// of haproxy.cfg: no Service change touches it.
	PrometheusExporter netip.AddrPort
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

// Dispatcher is the one listener of an IP family and everything it
// dispatches. nftables sends every connection to a served Service address
// of the family to Listen (tproxy, so the connection keeps its original
// destination); HAProxy looks the destination up in the services map,
// picks an endpoint from the endpoints map and connects to it. The maps
// are files in MapDir that the runtime API changes in place.
type Dispatcher struct {
	// IPv6 selects the family: every address below belongs to it.
	IPv6 bool
	// Listen is the address and port of the listener: a loopback address,
	// or for IPv4 0.0.0.0 (connections redirected by NAT arrive on the
	// address of their incoming interface).
	Listen netip.AddrPort
	// MapDir is the absolute directory of the map and ACL files.
	MapDir string
	// ClusterSources are the clients whose connections to a NodePort,
	// LoadBalancer IP or external IP count as cluster traffic: under
	// externalTrafficPolicy Local they use the Cluster endpoints (see
	// ServicePort.ShortCircuit). The pod CIDRs and the node's addresses.
	ClusterSources []netip.Prefix
	// NodePortAddresses are the addresses NodePorts are served on; empty
	// means every local address of the family that is no Service IP.
	NodePortAddresses []netip.Addr
	// KeepClientSource: a connection from outside ClusterSources to a set
	// whose endpoints all run on this node (EndpointSet.OnNode) reaches
	// the endpoint from the client's own address (HAProxy's "usesrc
	// clientip"), as kube-proxy's other modes do for externalTrafficPolicy
	// Local. The host must route the endpoints' replies back to HAProxy
	// (package serviceguard). Clients in ClusterSources keep HAProxy's
	// address: a pod on the endpoint's own bridge would get the reply
	// straight from the endpoint and drop it.
	KeepClientSource bool
	// ServicePorts are sorted by Name by the renderer's callers; the
	// renderer does not depend on their order.
	ServicePorts []*ServicePort
}

// ListenerKind is the kind of address a Service port is reached on.
type ListenerKind int

const (
	// ClusterIP: internal traffic.
	ClusterIP ListenerKind = iota + 1
	// NodePort: external traffic to a node address; its Addr is not set.
	NodePort
	// LoadBalancer: external traffic to a LoadBalancer ingress IP.
	LoadBalancer
	// ExternalIP: external traffic to one of spec.externalIPs.
	ExternalIP
)

func (k ListenerKind) String() string {
	switch k {
	case ClusterIP:
		return "clusterIP"
	case NodePort:
		return "nodePort"
	case LoadBalancer:
		return "loadBalancer"
	case ExternalIP:
		return "externalIP"
	}
	return "unknown"
}

// Listener is one address and port a Service port is reached on.
type Listener struct {
	Kind ListenerKind
	// Addr is the Service address; not set for NodePort (which is served
	// on the Dispatcher's NodePortAddresses).
	Addr netip.Addr
	Port uint16
}

// External reports whether connections to l are external traffic.
func (l Listener) External() bool { return l.Kind != ClusterIP }

// Key is l's key in the services map, as HAProxy builds it from a
// connection's destination: "10.96.0.10:80", "[fd00::10]:80", and for a
// NodePort "*:30080".
func (l Listener) Key() string {
	if l.Kind == NodePort {
		return "*:" + strconv.Itoa(int(l.Port))
	}
	return netip.AddrPortFrom(l.Addr, l.Port).String()
}

// Verdict is what a client gets.
type Verdict string

const (
	// NotDispatched: the kernel does not send the connection to HAProxy
	// (on a Service IP the guard refuses it).
	NotDispatched Verdict = "not-dispatched"
	// Rejected: HAProxy closes the connection at once with a reset, the
	// "fail fast" answer for a Service without endpoints.
	Rejected Verdict = "rejected"
	// Dropped: dropped without an answer, as kube-proxy does for external
	// traffic that may not be served on this node, or for a client outside
	// loadBalancerSourceRanges.
	Dropped Verdict = "dropped"
	// Served: connected to one of the endpoints.
	Served Verdict = "served"
)

// ServicePort is one port of one Service in one IP family.
type ServicePort struct {
	// Name is namespace.service:port:protocol (":ipv6" added for IPv6),
	// and the name of the Cluster endpoint set. It must satisfy ValidName.
	Name string
	// Comment is free text (escaped), e.g. the Service and its policies.
	Comment string
	// Listeners are where the port is reached; their keys are unique
	// within a Dispatcher.
	Listeners []Listener
	// Cluster and Local are the endpoint sets for traffic policy Cluster
	// and Local; nil when no traffic uses them.
	Cluster *EndpointSet
	Local   *EndpointSet
	// InternalLocal: ClusterIP traffic uses Local (internalTrafficPolicy).
	InternalLocal bool
	// ExternalLocal: external traffic uses Local (externalTrafficPolicy).
	ExternalLocal bool
	// ShortCircuit: under ExternalLocal, external traffic from
	// Dispatcher.ClusterSources uses Cluster, as upstream does for pods
	// and the node itself.
	ShortCircuit bool
	// WhenEmpty is what a client gets when the endpoint set its traffic
	// uses is empty: Rejected when the Service has no usable endpoint
	// anywhere, Dropped when only the Local set is empty.
	WhenEmpty Verdict
	// Affinity, when positive, keeps each client on one endpoint for
	// this long after its last connection (sessionAffinity ClientIP).
	Affinity time.Duration
	// SourceRanges are loadBalancerSourceRanges: connections to the
	// LoadBalancer listeners from other sources are dropped (by the
	// kernel, before dispatch). Empty means every source.
	SourceRanges []netip.Prefix
	// ProxyProtocol, when set, opens every connection to an endpoint with
	// a PROXY protocol header carrying the client's address.
	ProxyProtocol ProxyProtocol
	// Check, when set, has HAProxy check the endpoints actively; the
	// proxier leaves out of the sets those the checks find down.
	Check *EndpointCheck
	// AppProtocol, when HTTP, balances every request (every HTTP/2
	// stream) on its own instead of every connection.
	AppProtocol AppProtocol
}

// AppProtocol is how HAProxy handles the bytes of a Service port.
type AppProtocol int

const (
	// AppTCP: bytes are relayed; the endpoint is chosen per connection.
	AppTCP AppProtocol = 0
	// AppHTTP1: HTTP/1.1 (and WebSocket upgrades), an endpoint per request.
	AppHTTP1 AppProtocol = 1
	// AppH2C: HTTP/2 over cleartext with prior knowledge (gRPC), an
	// endpoint per stream, reached over HTTP/2.
	AppH2C AppProtocol = 2
)

// EndpointCheck is how HAProxy checks an endpoint: a TCP connect every
// Interval; Fall failures in a row take it down, Rise successes bring it
// back.
type EndpointCheck struct {
	Interval time.Duration
	Rise     int
	Fall     int
}

// Limits of an EndpointCheck.
const (
	MinCheckInterval = 100 * time.Millisecond
	MaxCheckInterval = time.Hour
	MaxCheckCount    = 100
)

// ServerOptions are the keywords of a server that runs c ("add server"
// takes the same as a server line). A check times out after Interval (no
// "timeout check"); after a change of state the next check comes at half
// the interval, to confirm it sooner.
func (c EndpointCheck) ServerOptions() []string {
	return []string{"check",
		"inter", FormatDuration(c.Interval),
		"fastinter", FormatDuration(max(c.Interval/2, MinCheckInterval/2)),
		"downinter", FormatDuration(c.Interval),
		"rise", strconv.Itoa(c.Rise), "fall", strconv.Itoa(c.Fall)}
}

// Validate reports whether c is within the limits.
func (c EndpointCheck) Validate() error {
	if c.Interval < MinCheckInterval || c.Interval > MaxCheckInterval {
		return fmt.Errorf("check interval %v: not in [%v, %v]", c.Interval, MinCheckInterval, MaxCheckInterval)
	}
	if c.Rise < 1 || c.Rise > MaxCheckCount || c.Fall < 1 || c.Fall > MaxCheckCount {
		return fmt.Errorf("check rise %d, fall %d: not in [1, %d]", c.Rise, c.Fall, MaxCheckCount)
	}
	return nil
}

// ProxyProtocol is the PROXY protocol version HAProxy sends to the
// endpoints of a Service port, if any.
type ProxyProtocol int

const (
	// NoProxyProtocol: the endpoint gets the client's bytes only.
	NoProxyProtocol ProxyProtocol = 0
	// ProxyProtocolV1 is the text header ("PROXY TCP4 ...").
	ProxyProtocolV1 ProxyProtocol = 1
	// ProxyProtocolV2 is the binary header.
	ProxyProtocolV2 ProxyProtocol = 2
)

// EndpointSet is a named list of endpoints. The renderer numbers them in
// the order given; the translation sorts them, so that an unchanged set
// renders the same map entries.
type EndpointSet struct {
	// Name must satisfy ValidName.
	Name string
	// Comment is free text (escaped).
	Comment   string
	Endpoints []netip.AddrPort
	// OnNode: every endpoint runs on this node (the Local set in scope
	// node), so its replies pass through this node's routing.
	OnNode bool
	// Routed are the endpoints on this node that answer every client
	// through the node's routing, even a pod client (a routed CNI, no
	// bridge): towards them, a pod client keeps its own address (with
	// Dispatcher.KeepClientSource). Nil for most sets.
	Routed map[netip.AddrPort]bool
	// Generation names the entries of the set in the endpoints map
	// ("<set>/<generation>/<i>"). The applier gives a set whose entries
	// change a new generation: the new entries are added beside the old
	// ones, one services map entry switches to them, and the old ones are
	// deleted. HAProxy 2.6 changes ("set map") or deletes an entry in time
	// proportional to the whole map, so the one entry that changes lives
	// in the small services map. The translation leaves it 0.
	Generation uint32
}

// internalSet and externalSet are the sets a listener's connections use:
// for clients in general, and for clients in ClusterSources.
func (sp *ServicePort) setsFor(l Listener) (others, fromCluster *EndpointSet) {
	if !l.External() {
		if sp.InternalLocal {
			return sp.Local, sp.Local
		}
		return sp.Cluster, sp.Cluster
	}
	if !sp.ExternalLocal {
		return sp.Cluster, sp.Cluster
	}
	if sp.ShortCircuit {
		return sp.Local, sp.Cluster
	}
	return sp.Local, sp.Local
}
