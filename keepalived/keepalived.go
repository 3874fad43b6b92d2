// Package keepalived renders the configuration of the VRRP pair in front
// of the central or external HAProxy (scopes cluster and external): two
// load-balancer hosts share one virtual address per IP family, the next
// hop that the nodes and routers send Service and ingress ranges to. The
// host holding it serves; a health check of its HAProxy and kube-proxy
// (check.sh, shipped beside this package) hands it to the other when
// HAProxy fails or kube-proxy stays down past a grace, and VRRP does when
// the host itself is gone.
//
// Both hosts run the same kube-proxy and HAProxy configuration, so the
// backup is ready the moment it takes the address over; only connections
// that were open through the failed host are lost.
package keepalived

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// CheckScript is the health check keepalived runs every second on each
// host: it exits 0 only when HAProxy accepts on its dispatch port and
// kube-proxy's /healthz answers 200. Install it where Config.CheckScript
// says, owned by root and not writable by others (keepalived's script
// security refuses it otherwise).
//
//go:embed check.sh
var CheckScript []byte

// Defaults of Config.
const (
	DefaultCheckScript    = "/etc/keepalived/check-kube-haproxy.sh"
	DefaultDispatchPort   = 10400
	DefaultHealthz        = "127.0.0.1:10256"
	DefaultAdvertInterval = 500 * time.Millisecond
	DefaultPriority       = 100
	// DefaultKubeProxyGrace is how long kube-proxy may be down before the
	// address moves: long enough for a supervisor to restart it (kubelet's
	// first restarts come within seconds), short enough that a kube-proxy
	// that stays down does not leave the cluster on a stale state for long.
	DefaultKubeProxyGrace = 30 * time.Second
)

// Config is one host's half of the pair.
type Config struct {
	// Name identifies the host in keepalived's logs (router_id).
	Name string
	// Interface carries the VRRP adverts and the virtual addresses.
	Interface string
	// RouterID is the VRRP virtual router id (1-255), the same on both
	// hosts and unique on the link.
	RouterID int
	// Priority orders the hosts (1-254): the higher is preferred when both
	// start. There is no preemption: a host that comes back does not take
	// the address back, which would cut the connections open through the
	// other.
	Priority int
	// VIPs are the virtual addresses with their prefix length on
	// Interface, at most one per IP family.
	VIPs []netip.Prefix
	// UnicastPeers, when set, are the other host's addresses: adverts go
	// to them instead of the VRRP multicast group (clouds, switches that
	// filter multicast). UnicastSource is then this host's address.
	UnicastSource netip.Addr
	UnicastPeers  []netip.Addr
	// AdvertInterval is how often the holder advertises (VRRPv3,
	// centiseconds); the other takes over after about three missed.
	AdvertInterval time.Duration
	// CheckScript is where check.sh is installed; DispatchPort and
	// Healthz are what it checks (kube-proxy's haproxy.dispatchPort and
	// healthzBindAddress).
	CheckScript  string
	DispatchPort int
	Healthz      string
	// KubeProxyGrace is how long kube-proxy's healthz may fail, while
	// HAProxy serves, before the host gives the address up: a kube-proxy
	// restarted within it adopts its HAProxy and no connection is cut.
	// Default DefaultKubeProxyGrace; negative: none.
	KubeProxyGrace time.Duration
}

// SetDefaults fills empty fields.
func (c *Config) SetDefaults() {
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	if c.AdvertInterval == 0 {
		c.AdvertInterval = DefaultAdvertInterval
	}
	if c.CheckScript == "" {
		c.CheckScript = DefaultCheckScript
	}
	if c.DispatchPort == 0 {
		c.DispatchPort = DefaultDispatchPort
	}
	if c.Healthz == "" {
		c.Healthz = DefaultHealthz
	}
	if c.KubeProxyGrace == 0 {
		c.KubeProxyGrace = DefaultKubeProxyGrace
	}
}

// word is what keepalived reads as one token without quoting trouble.
var word = regexp.MustCompile(`^[A-Za-z0-9/][A-Za-z0-9_.:/@-]*$`)

// Validate reports the first problem of a defaulted Config: every string
// ends up in keepalived.conf and in a command line, so each must be one
// plain word.
func (c *Config) Validate() error {
	for field, v := range map[string]string{"name": c.Name, "interface": c.Interface, "checkScript": c.CheckScript, "healthz": c.Healthz} {
		if !word.MatchString(v) {
			return fmt.Errorf("%s: %q is not a plain word", field, v)
		}
	}
	if !strings.HasPrefix(c.CheckScript, "/") {
		return fmt.Errorf("checkScript: %q is not an absolute path", c.CheckScript)
	}
	if c.RouterID < 1 || c.RouterID > 255 {
		return fmt.Errorf("routerID: %d is not in [1, 255]", c.RouterID)
	}
	if c.Priority < 1 || c.Priority > 254 {
		return fmt.Errorf("priority: %d is not in [1, 254]", c.Priority)
	}
	if len(c.VIPs) == 0 {
		return fmt.Errorf("vips: none")
	}
	seen := map[bool]bool{}
	for _, v := range c.VIPs {
		if !v.IsValid() || v.Addr().Zone() != "" {
			return fmt.Errorf("vips: %q is not an address with a prefix length", v)
		}
		if seen[v.Addr().Is4()] {
			return fmt.Errorf("vips: more than one %s address", family(v.Addr()))
		}
		seen[v.Addr().Is4()] = true
	}
	if len(c.UnicastPeers) > 0 && !c.UnicastSource.IsValid() {
		return fmt.Errorf("unicastSource: needed with unicastPeers")
	}
	for _, p := range c.UnicastPeers {
		if p.Is4() != c.UnicastSource.Is4() {
			return fmt.Errorf("unicastPeers: %s is not of the family of unicastSource %s", p, c.UnicastSource)
		}
	}
	if c.AdvertInterval < 10*time.Millisecond || c.AdvertInterval > 40*time.Second {
		return fmt.Errorf("advertInterval: %v is not in [10ms, 40s]", c.AdvertInterval)
	}
	if c.DispatchPort < 1 || c.DispatchPort > 65535 {
		return fmt.Errorf("dispatchPort: %d is not a port", c.DispatchPort)
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// Render returns keepalived.conf for c: one VRRP instance that holds
// every VIP and tracks the health check, so both families move together.
// It advertises in the family of UnicastSource, else IPv4 when there is
// an IPv4 VIP; VIPs of the other family ride along (keepalived's
// virtual_ipaddress_excluded).
func Render(c Config) ([]byte, error) {
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("keepalived: %w", err)
	}
	advert4 := false
	for _, v := range c.VIPs {
		advert4 = advert4 || v.Addr().Is4()
	}
	if c.UnicastSource.IsValid() {
		advert4 = c.UnicastSource.Is4()
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# keepalived.conf of the kube-haproxy load balancer %s: generated, do not edit.\n", c.Name)
	fmt.Fprintf(&b, "global_defs {\n  router_id %s\n  vrrp_version 3\n  enable_script_security\n  script_user root\n}\n\n", c.Name)
	// fall 2 at one-second intervals: a failed HAProxy (or a kube-proxy
	// down for longer than the grace) hands the address over within about
	// two seconds, one slow answer does not. The script may take two
	// one-second probes.
	grace := max(int(c.KubeProxyGrace.Seconds()), 0)
	fmt.Fprintf(&b, "vrrp_script kube_haproxy_check {\n  script \"%s %d %s %d\"\n  interval 1\n  timeout 2\n  fall 2\n  rise 2\n}\n\n", c.CheckScript, c.DispatchPort, c.Healthz, grace)
	b.WriteString("vrrp_instance kube_haproxy {\n")
	// Both hosts start as backup; without preemption the first to win
	// keeps the address until it fails.
	fmt.Fprintf(&b, "  state BACKUP\n  nopreempt\n  interface %s\n  virtual_router_id %d\n  priority %d\n", c.Interface, c.RouterID, c.Priority)
	fmt.Fprintf(&b, "  advert_int %s\n", strconv.FormatFloat(c.AdvertInterval.Seconds(), 'f', 2, 64))
	if len(c.UnicastPeers) > 0 {
		fmt.Fprintf(&b, "  unicast_src_ip %s\n  unicast_peer {\n", c.UnicastSource)
		for _, p := range c.UnicastPeers {
			fmt.Fprintf(&b, "    %s\n", p)
		}
		b.WriteString("  }\n")
	}
	var same, other []string
	for _, v := range c.VIPs {
		line := "    " + v.String() + " dev " + c.Interface + "\n"
		if v.Addr().Is4() == advert4 {
			same = append(same, line)
		} else {
			other = append(other, line)
		}
	}
	if len(same) == 0 {
		return nil, fmt.Errorf("keepalived: no VIP of the family of unicastSource %s", c.UnicastSource)
	}
	b.WriteString("  virtual_ipaddress {\n" + strings.Join(same, "") + "  }\n")
	if len(other) > 0 {
		b.WriteString("  virtual_ipaddress_excluded {\n" + strings.Join(other, "") + "  }\n")
	}
	b.WriteString("  track_script {\n    kube_haproxy_check\n  }\n}\n")
	return b.Bytes(), nil
}
