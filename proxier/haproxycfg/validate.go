package haproxycfg

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Validate reports the first problem that would make c unsafe or invalid
// for HAProxy: bad settings, names or addresses, two dispatchers of one
// family, a listener key or an endpoint set name used twice, a Service
// port that uses an endpoint set it does not have.
func Validate(c *Config) error {
	if c == nil {
		return errors.New("nil config")
	}
	if err := validateGlobal(&c.Global); err != nil {
		return fmt.Errorf("global: %w", err)
	}
	if err := validateDefaults(&c.Defaults); err != nil {
		return fmt.Errorf("defaults: %w", err)
	}
	families := map[bool]bool{}
	for _, d := range c.Dispatchers {
		if d == nil {
			return errors.New("nil dispatcher")
		}
		if families[d.IPv6] {
			return fmt.Errorf("dispatcher %s: two of one family", d.familyName())
		}
		families[d.IPv6] = true
		if err := ValidateDispatcher(d); err != nil {
			return fmt.Errorf("dispatcher %s: %w", d.familyName(), err)
		}
	}
	return nil
}

// maxUnixPath is the longest unix socket path Linux takes (sun_path
// holds 108 bytes with the terminating NUL).
const maxUnixPath = 107

// ValidateDispatcher validates d alone.
func ValidateDispatcher(d *Dispatcher) error {
	listen := d.Listen.Addr()
	if !d.Listen.IsValid() || d.Listen.Port() == 0 || d.familyOK(listen) != nil || !listen.IsLoopback() && !(listen.Is4() && listen.IsUnspecified()) {
		return fmt.Errorf("listen address %v: must be a loopback address of the family (or 0.0.0.0) with a port", d.Listen)
	}
	if !validPath(d.MapDir) {
		return fmt.Errorf("map directory %q: must be an absolute path of [A-Za-z0-9._:/+@-]", d.MapDir)
	}
	for _, sock := range []string{d.RetrySocket(), d.RequestLogSocket()} {
		if len(sock) > maxUnixPath {
			return fmt.Errorf("map directory %q: too long for the unix socket %s (at most %d bytes)", d.MapDir, filepath.Base(sock), maxUnixPath)
		}
	}
	for _, p := range d.ClusterSources {
		if !p.IsValid() || d.familyOK(p.Addr()) != nil {
			return fmt.Errorf("cluster source %v: not a prefix of the family", p)
		}
	}
	for _, a := range d.NodePortAddresses {
		if err := d.familyOK(a); err != nil {
			return fmt.Errorf("node port address: %w", err)
		}
	}
	keys := make(map[string]string, len(d.ServicePorts))
	sets := make(map[string]bool, len(d.ServicePorts))
	for _, sp := range d.ServicePorts {
		if sp == nil {
			return errors.New("nil service port")
		}
		if err := d.ValidateServicePort(sp); err != nil {
			return fmt.Errorf("service port %q: %w", sp.Name, err)
		}
		for _, l := range sp.Listeners {
			k := l.Key()
			if owner, dup := keys[k]; dup {
				return fmt.Errorf("service port %q: listener %s already belongs to %q", sp.Name, k, owner)
			}
			keys[k] = sp.Name
		}
		for _, set := range sp.Sets() {
			if sets[set.Name] {
				return fmt.Errorf("service port %q: endpoint set %q appears twice", sp.Name, set.Name)
			}
			sets[set.Name] = true
		}
	}
	return nil
}

// ValidateServicePort validates sp on its own, for callers that check
// uniqueness across Service ports themselves.
func (d *Dispatcher) ValidateServicePort(sp *ServicePort) error {
	if err := checkName("service port", sp.Name); err != nil {
		return err
	}
	if len(sp.Listeners) == 0 {
		return errors.New("no listener")
	}
	for _, l := range sp.Listeners {
		if l.Port == 0 {
			return fmt.Errorf("listener %s: port 0", l.Kind)
		}
		switch l.Kind {
		case NodePort:
			if l.Addr.IsValid() {
				return errors.New("a NodePort listener has no address")
			}
		case ClusterIP, LoadBalancer, ExternalIP:
			if err := d.familyOK(l.Addr); err != nil {
				return fmt.Errorf("listener %s: %w", l.Kind, err)
			}
			if l.Addr.IsUnspecified() {
				return fmt.Errorf("listener %s: unspecified address", l.Kind)
			}
		default:
			return fmt.Errorf("listener kind %d", l.Kind)
		}
		others, fromCluster := sp.setsFor(l)
		if others == nil || fromCluster == nil {
			return fmt.Errorf("listener %s uses an endpoint set the service port does not have", l.Key())
		}
	}
	if sp.WhenEmpty != Rejected && sp.WhenEmpty != Dropped {
		return fmt.Errorf("when empty: %q is neither %q nor %q", sp.WhenEmpty, Rejected, Dropped)
	}
	if sp.Affinity < 0 || sp.Affinity > MaxAffinity {
		return fmt.Errorf("affinity %v: not in [0, %v]", sp.Affinity, MaxAffinity)
	}
	if sp.Check != nil {
		if err := sp.Check.Validate(); err != nil {
			return err
		}
	}
	if sp.AppProtocol != AppTCP && sp.AppProtocol != AppHTTP1 && sp.AppProtocol != AppH2C {
		return fmt.Errorf("app protocol %d: not 0, 1 or 2", sp.AppProtocol)
	}
	if sp.AppProtocol != AppTCP && sp.ProxyProtocol != NoProxyProtocol {
		return fmt.Errorf("app protocol %d with PROXY protocol %d: a PROXY header is per connection, HTTP requests share connections", sp.AppProtocol, sp.ProxyProtocol)
	}
	if sp.ProxyProtocol != NoProxyProtocol && sp.ProxyProtocol != ProxyProtocolV1 && sp.ProxyProtocol != ProxyProtocolV2 {
		return fmt.Errorf("proxy protocol version %d: not 0, 1 or 2", sp.ProxyProtocol)
	}
	for _, p := range sp.SourceRanges {
		if !p.IsValid() || d.familyOK(p.Addr()) != nil {
			return fmt.Errorf("source range %v: not a prefix of the family", p)
		}
	}
	for _, set := range sp.Sets() {
		if err := checkName("endpoint set", set.Name); err != nil {
			return err
		}
		if strings.Contains(set.Name, FieldSeparator) {
			return fmt.Errorf("endpoint set %q: contains %q", set.Name, FieldSeparator)
		}
		if len(set.Name)+1+39 > affinityKeyLength {
			return fmt.Errorf("endpoint set %q: too long for the affinity table", set.Name)
		}
		for _, ep := range set.Endpoints {
			if err := d.familyOK(ep.Addr()); err != nil {
				return fmt.Errorf("endpoint set %q: %w", set.Name, err)
			}
			if ep.Port() == 0 {
				return fmt.Errorf("endpoint set %q: endpoint %v has port 0", set.Name, ep)
			}
		}
	}
	return nil
}

func (d *Dispatcher) familyOK(a netip.Addr) error {
	if !a.IsValid() {
		return errors.New("invalid address")
	}
	if a.Zone() != "" {
		return fmt.Errorf("address %s: zones are not supported", a)
	}
	if a.Is4() == d.IPv6 || a.Is4In6() {
		return fmt.Errorf("address %s: not an %s address", a, d.familyName())
	}
	return nil
}

// validPath accepts file paths that render as one unquoted word.
func validPath(p string) bool {
	if p == "" || !strings.HasPrefix(p, "/") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if !nameByte(p[i]) && p[i] != '/' && p[i] != '+' && p[i] != '@' {
			return false
		}
	}
	return true
}

func validateGlobal(g *Global) error {
	if g.MaxConn < 0 || g.NBThread < 0 || g.HardStopAfter < 0 || g.MaxOldWorkers < 0 {
		return errors.New("negative maxconn, nbthread, hard-stop-after or mworker-max-reloads")
	}
	if g.StatsSocket != "" && !validPath(g.StatsSocket) {
		return fmt.Errorf("stats socket %q: must be an absolute path of [A-Za-z0-9._:/+@-]", g.StatsSocket)
	}
	if g.PIDFile != "" && !validPath(g.PIDFile) {
		return fmt.Errorf("pidfile %q: must be an absolute path of [A-Za-z0-9._:/+@-]", g.PIDFile)
	}
	if a := g.PrometheusExporter; a.IsValid() && (a.Port() == 0 || a.Addr().Zone() != "") {
		return fmt.Errorf("prometheus exporter %v: needs a port and an address without zone", a)
	}
	return nil
}

func validateDefaults(d *Defaults) error {
	for _, t := range []time.Duration{d.TimeoutConnect, d.TimeoutClient, d.TimeoutServer, d.TimeoutClientFin, d.TimeoutServerFin} {
		if t < 0 {
			return errors.New("negative timeout")
		}
	}
	return nil
}
