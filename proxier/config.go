package proxier

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/kubernetes/pkg/proxy/healthcheck"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Scope says which Services this proxier serves and where their IPs live
// (see docs/scopes.md).
type Scope string

const (
	// ScopeNode: one proxier and HAProxy per node, like kube-proxy. ClusterIPs
	// are made local on the node, NodePorts bind on node addresses.
	ScopeNode Scope = "node"
	// ScopeCluster: one central proxier + HAProxy for the whole cluster, on
	// a load balancer that is not a node. Nodes route the Service range (or
	// a ClusterIP pool) to it; traffic policy Local is served by every
	// endpoint there.
	ScopeCluster Scope = "cluster"
	// ScopeExternal ("only fetch"): outside the cluster, next to a stock
	// kube-proxy; serves only Services labelled for it or of its
	// loadBalancerClass.
	ScopeExternal Scope = "external"
)

// Defaults for Config fields left empty.
const (
	DefaultHAProxyPath       = "/usr/sbin/haproxy"
	DefaultStateDir          = "/var/run/kube-haproxy"
	DefaultServiceProxyName  = "haproxy"
	DefaultLoadBalancerClass = "kube-haproxy.io/haproxy"

	// MaxDefaultFileLimit caps the file limit taken from the process:
	// HAProxy sizes its file-descriptor table by maxconn, so a node's
	// usual hard limit (a million) would cost every HAProxy process tens
	// of megabytes for connections it never holds.
	MaxDefaultFileLimit   = 65536
	DefaultTimeoutConnect = 2 * time.Second
	// Service traffic is often long-lived (databases, streams); kube-proxy's
	// other modes impose no idle timeout, so the default is generous.
	DefaultTimeoutClient = time.Hour
	DefaultTimeoutServer = time.Hour
	// DefaultDispatchPort is the port of HAProxy's one listener per IP
	// family, where nftables sends Service connections (tproxy, or NAT for
	// IPv4 arriving through a bridge);
	// DefaultDispatchPort+1 is HAProxy's local peer port, over which a
	// reloaded worker takes the session-affinity table over.
	DefaultDispatchPort = 10400
	// PrometheusExporterOff disables HAProxy's Prometheus exporter
	// (Config.PrometheusExporterAddress). Unset, it listens on
	// 127.0.0.1, port DispatchPort+2 (10402 by default): loopback,
	// because it tells whoever reaches it about every Service.
	PrometheusExporterOff = "off"
	// DefaultMaxOldWorkers bounds the old workers a series of reloads can
	// leave draining (mworker-max-reloads): reloads are rare (global
	// settings only), and each old worker holds a copy of the maps. The
	// oldest is stopped, with its connections, when one more would exceed
	// it.
	DefaultMaxOldWorkers = 5
)

// Config is everything the proxier needs from its caller (kube-proxy's
// createProxier, or a test). It mirrors the `haproxy:` section of
// KubeProxyConfiguration plus what kube-proxy already knows.
type Config struct {
	// Scope is node, cluster or external.
	Scope Scope
	// HAProxyPath is the haproxy binary.
	HAProxyPath string
	// StateDir holds haproxy.cfg, the sockets and the pid file.
	StateDir string
	// MasterSocket is the master CLI socket; default StateDir/master.sock.
	MasterSocket string
	// RuntimeSocket is the runtime API (stats) socket; default StateDir/haproxy.sock.
	RuntimeSocket string
	// ManageProcess: the proxier starts and supervises HAProxy. When false,
	// HAProxy runs elsewhere (e.g. its own container) and only the sockets
	// and config file are shared.
	ManageProcess bool

	// ServiceProxyName is the service.kubernetes.io/service-proxy-name value
	// served in scope external (every listener of such a Service).
	ServiceProxyName string
	// LoadBalancerClass is the spec.loadBalancerClass served in scope
	// external (only the ingress IPs of such a Service, unless labelled).
	LoadBalancerClass string

	NodeName          string
	NodeIPs           map[v1.IPFamily]net.IP
	NodePortAddresses []string
	// ClusterCIDRs are the cluster's pod CIDRs (kube-proxy's clusterCIDR,
	// both families allowed). A pod's connection to a NodePort, LB IP or
	// external IP of a Service with externalTrafficPolicy Local then uses
	// all endpoints, as kube-proxy's other modes do for traffic their
	// local-traffic detector recognises. Empty: only the node's own
	// connections are recognised.
	ClusterCIDRs  []string
	SyncPeriod    time.Duration
	MinSyncPeriod time.Duration
	Recorder      events.EventRecorder
	HealthzServer *healthcheck.ProxyHealthServer
	// InitOnly: prepare the host and return without serving.
	InitOnly bool

	// DelegateNonTCP hands UDP and SCTP service ports, which HAProxy cannot
	// proxy, to upstream's nftables proxier on this host (see "UDP and
	// SCTP" in proxier/README.md). nil means true in scopes node and
	// cluster, false in scope external, which must not program the kernel.
	DelegateNonTCP *bool
	// MasqueradeBit and MasqueradeAll are kube-proxy's settings of the same
	// name, used by the nftables proxier of the delegated ports. nil means
	// DefaultMasqueradeBit.
	MasqueradeBit *int32
	MasqueradeAll bool

	// HAProxy process settings, rendered into the global and defaults
	// sections. Zero values take the defaults below.

	// FileLimit is the file-descriptor limit HAProxy runs with; default:
	// this process's hard RLIMIT_NOFILE (HAProxy inherits it and raises
	// its soft limit up to it), at most MaxDefaultFileLimit.
	FileLimit int
	// MaxConn is HAProxy's global maxconn. 0 (the default) fits it to
	// FileLimit at every sync: what the listeners of the configuration
	// leave, two descriptors per connection (package apply).
	MaxConn int
	// NBThread is the number of HAProxy threads; default: one per CPU.
	NBThread int
	// TimeoutConnect bounds the connection to an endpoint.
	TimeoutConnect time.Duration
	// TimeoutClient and TimeoutServer bound inactivity on either side.
	TimeoutClient time.Duration
	TimeoutServer time.Duration
	// HardStopAfter bounds how long an old worker drains after a reload;
	// its connections are cut then. 0 (the default) sets no bound: an old
	// worker ends when its last connection does, so a reload never ends a
	// connection; MaxOldWorkers bounds how many can pile up instead.
	HardStopAfter time.Duration
	// MaxOldWorkers is how many reloads an old worker survives before it is
	// stopped (HAProxy's mworker-max-reloads), bounding the memory a run
	// of reloads can hold. Default DefaultMaxOldWorkers.
	MaxOldWorkers int
	// DispatchPort is the port HAProxy listens on for every Service
	// connection (0.0.0.0, where tproxy finds it by 127.0.0.1 and bridged
	// IPv4 is redirected to the bridge's address; and ::1);
	// DispatchPort+1 is its local peer port (127.0.0.1). A connection made
	// to the port directly finds no Service in the maps (unless a NodePort
	// has the same number) and is rejected.
	// Default DefaultDispatchPort.
	DispatchPort int
	// PrometheusExporterAddress is the IP:port where HAProxy serves its
	// own metrics (its built-in Prometheus exporter, GET /metrics), or
	// PrometheusExporterOff. Default 127.0.0.1:<DispatchPort+2>.
	PrometheusExporterAddress string
}

// SetDefaults fills empty fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Scope == "" {
		c.Scope = ScopeNode
	}
	if c.HAProxyPath == "" {
		c.HAProxyPath = DefaultHAProxyPath
	}
	if c.DelegateNonTCP == nil {
		delegate := c.Scope != ScopeExternal
		c.DelegateNonTCP = &delegate
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.MasterSocket == "" {
		c.MasterSocket = filepath.Join(c.StateDir, "master.sock")
	}
	if c.RuntimeSocket == "" {
		c.RuntimeSocket = filepath.Join(c.StateDir, "haproxy.sock")
	}
	if c.ServiceProxyName == "" {
		c.ServiceProxyName = DefaultServiceProxyName
	}
	if c.LoadBalancerClass == "" {
		c.LoadBalancerClass = DefaultLoadBalancerClass
	}
	if c.SyncPeriod == 0 {
		c.SyncPeriod = 30 * time.Second
	}
	if c.MinSyncPeriod == 0 {
		c.MinSyncPeriod = time.Second
	}
	if c.FileLimit == 0 {
		c.FileLimit = processFileLimit()
	}
	if c.NBThread == 0 {
		c.NBThread = runtime.NumCPU()
	}
	if c.TimeoutConnect == 0 {
		c.TimeoutConnect = DefaultTimeoutConnect
	}
	if c.TimeoutClient == 0 {
		c.TimeoutClient = DefaultTimeoutClient
	}
	if c.TimeoutServer == 0 {
		c.TimeoutServer = DefaultTimeoutServer
	}
	if c.MaxOldWorkers == 0 {
		c.MaxOldWorkers = DefaultMaxOldWorkers
	}
	if c.DispatchPort == 0 {
		c.DispatchPort = DefaultDispatchPort
	}
	if c.PrometheusExporterAddress == "" {
		port := c.DispatchPort + 2
		if port > 65535 {
			port = c.DispatchPort - 1
		}
		c.PrometheusExporterAddress = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)).String()
	}
}

// processFileLimit is the hard RLIMIT_NOFILE of this process, at most
// MaxDefaultFileLimit (also when it cannot be read).
func processFileLimit() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max > MaxDefaultFileLimit {
		return MaxDefaultFileLimit
	}
	return int(lim.Max)
}

// haproxySections are the global and defaults sections for this Config.
func (c *Config) haproxySections() (haproxycfg.Global, haproxycfg.Defaults) {
	return haproxycfg.Global{
			MaxConn:       c.MaxConn,
			NBThread:      c.NBThread,
			StatsSocket:   c.RuntimeSocket,
			HardStopAfter: c.HardStopAfter,
			MaxOldWorkers: c.MaxOldWorkers,
			PeerPort:      uint16(c.DispatchPort + 1),
			// Validated: off or an address.
			PrometheusExporter: c.prometheusExporter(),
		}, haproxycfg.Defaults{
			TimeoutConnect: c.TimeoutConnect,
			TimeoutClient:  c.TimeoutClient,
			TimeoutServer:  c.TimeoutServer,
		}
}

// Validate reports the first problem with a defaulted Config, naming the field.
func (c *Config) Validate() error {
	switch c.Scope {
	case ScopeNode, ScopeCluster, ScopeExternal:
	default:
		return fmt.Errorf("haproxy.scope: %q is not one of node, cluster, external", c.Scope)
	}
	if c.delegating() && c.Scope == ScopeExternal {
		return fmt.Errorf("haproxy.delegateNonTCP: scope %q runs outside the cluster's data plane and cannot hand UDP and SCTP ports to the kernel", c.Scope)
	}
	if c.MasqueradeBit != nil && (*c.MasqueradeBit < 0 || *c.MasqueradeBit > 31) {
		return fmt.Errorf("masqueradeBit: %d is not in [0, 31]", *c.MasqueradeBit)
	}
	for field, p := range map[string]string{
		"haproxy.binaryPath":    c.HAProxyPath,
		"haproxy.stateDir":      c.StateDir,
		"haproxy.masterSocket":  c.MasterSocket,
		"haproxy.runtimeSocket": c.RuntimeSocket,
	} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s: %q must be an absolute path", field, p)
		}
	}
	if c.MinSyncPeriod > c.SyncPeriod {
		return fmt.Errorf("minSyncPeriod %v must not exceed syncPeriod %v", c.MinSyncPeriod, c.SyncPeriod)
	}
	for _, cidr := range c.ClusterCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			return fmt.Errorf("clusterCIDRs: %q: %w", cidr, err)
		}
	}
	if c.DispatchPort < 1 || c.DispatchPort > 65534 {
		return fmt.Errorf("haproxy.dispatchPort: %d is not in [1, 65534] (the port and the next one are used)", c.DispatchPort)
	}
	if c.MaxOldWorkers < 0 {
		return fmt.Errorf("haproxy.maxOldWorkers: %d is negative", c.MaxOldWorkers)
	}
	if err := ValidatePrometheusExporterAddress(c.PrometheusExporterAddress); err != nil {
		return fmt.Errorf("haproxy.prometheusExporterAddress: %w", err)
	}
	if c.HardStopAfter < 0 {
		return fmt.Errorf("haproxy.hardStopAfter: %v is negative", c.HardStopAfter)
	}
	if c.MaxConn < 0 {
		return fmt.Errorf("haproxy.maxConn: %d is negative", c.MaxConn)
	}
	if c.MaxConn*2 >= c.FileLimit {
		return fmt.Errorf("haproxy.maxConn %d needs more than fileLimit %d file descriptors (two per connection)", c.MaxConn, c.FileLimit)
	}
	// The runtime socket path goes into haproxy.cfg: it must be one plain word.
	global, defaults := c.haproxySections()
	if err := haproxycfg.Validate(&haproxycfg.Config{Global: global, Defaults: defaults}); err != nil {
		return fmt.Errorf("haproxy settings: %w", err)
	}
	return nil
}

// delegating reports whether UDP and SCTP service ports go to the nftables
// proxier.
func (c *Config) delegating() bool { return c.DelegateNonTCP != nil && *c.DelegateNonTCP }

// ValidatePrometheusExporterAddress accepts PrometheusExporterOff or an
// IP:port with a port (IPv6 in brackets), as HAProxy's bind line takes it.
func ValidatePrometheusExporterAddress(addr string) error {
	if addr == PrometheusExporterOff {
		return nil
	}
	a, err := netip.ParseAddrPort(addr)
	if err != nil || a.Port() == 0 || a.Addr().Zone() != "" {
		return fmt.Errorf("%q is not %q nor an IP:port with a port", addr, PrometheusExporterOff)
	}
	return nil
}

// prometheusExporter is the exporter's address; invalid when off.
func (c *Config) prometheusExporter() netip.AddrPort {
	a, err := netip.ParseAddrPort(c.PrometheusExporterAddress)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
