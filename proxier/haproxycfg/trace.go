package haproxycfg

import (
	"fmt"
	"net/netip"
	"strings"
)

// Verdict is what happens to a connection.
type Verdict string

const (
	// NoListener: no bind accepts the destination; the kernel refuses the
	// connection (or, for a local Service IP, the host firewall does).
	NoListener Verdict = "no-listener"
	// Rejected: a "tcp-request connection reject" rule closed it at once.
	Rejected Verdict = "rejected"
	// Dropped: a "tcp-request connection silent-drop" rule dropped it.
	Dropped Verdict = "dropped"
	// NoServer: accepted, but the chosen backend has no server, so HAProxy
	// closes it after accepting (the model should never produce this:
	// fail-fast rules reject first).
	NoServer Verdict = "no-server"
	// Served: handed to a backend with at least one server.
	Served Verdict = "served"
)

// TraceResult says where one connection goes.
type TraceResult struct {
	Verdict  Verdict
	Frontend string
	Bind     string
	Backend  string
	// Servers are the servers the connection may reach (one is chosen by
	// the balance algorithm).
	Servers []netip.AddrPort
	// Sticky is true when the backend pins clients to a server.
	Sticky bool
}

// Refused reports whether the client is told at once that the connection
// failed (no listener or a reject rule), as opposed to being dropped or
// served.
func (r TraceResult) Refused() bool { return r.Verdict == NoListener || r.Verdict == Rejected }

func (r TraceResult) String() string {
	if r.Verdict == Served {
		return fmt.Sprintf("%s via %s/%s -> %s %v", r.Verdict, r.Frontend, r.Bind, r.Backend, r.Servers)
	}
	return fmt.Sprintf("%s (%s/%s)", r.Verdict, r.Frontend, r.Bind)
}

// Trace interprets c for one TCP connection from src to dst, the way
// HAProxy and the kernel would: the most specific bind accepts it (an exact
// address before a wildcard), the frontend's tcp-request connection rules
// run in order, then use_backend rules, then default_backend. Trace
// assumes every server in the model is up. It returns an error if two
// frontends listen on the same address and port (the kernel would spread
// connections between them).
func Trace(c *Config, src netip.Addr, dst netip.AddrPort) (TraceResult, error) {
	dstAddr := dst.Addr().Unmap()
	var f *Frontend
	var bind Bind
	exact := false
	for _, fe := range c.Frontends {
		for _, b := range fe.Binds {
			if b.Port != dst.Port() {
				continue
			}
			ba := b.Addr.Unmap()
			switch {
			case ba == dstAddr:
				if exact && f != fe {
					return TraceResult{}, fmt.Errorf("frontends %q and %q both listen on %s", f.Name, fe.Name, dst)
				}
				f, bind, exact = fe, b, true
			case ba.IsUnspecified() && ba.Is4() == dstAddr.Is4() && !exact:
				if f != nil && f != fe {
					return TraceResult{}, fmt.Errorf("frontends %q and %q both listen on %s", f.Name, fe.Name, FormatAddrPort(ba, b.Port))
				}
				f, bind = fe, b
			}
		}
	}
	if f == nil {
		return TraceResult{Verdict: NoListener}, nil
	}
	res := TraceResult{Frontend: f.Name, Bind: bind.Name}
	backends := make(map[string]*Backend, len(c.Backends))
	for _, be := range c.Backends {
		backends[be.Name] = be
	}
	acls := make(map[string]ACL, len(f.ACLs))
	for _, a := range f.ACLs {
		acls[a.Name] = a
	}
	aclMatches := func(a ACL) bool {
		switch a.Kind {
		case ACLSourceIn:
			for _, p := range a.Prefixes {
				if p.Contains(src.Unmap()) {
					return true
				}
			}
		case ACLBindNamePrefix:
			for _, v := range a.Values {
				if strings.HasPrefix(bind.Name, v) {
					return true
				}
			}
		}
		return false
	}
	holds := func(cond Condition) bool {
		for _, t := range cond {
			var v bool
			if t.ACL != "" {
				v = aclMatches(acls[t.ACL])
			} else if be := backends[t.BackendHasServers]; be != nil {
				v = len(be.Servers) > 0
			}
			if v == t.Negate {
				return false
			}
		}
		return true
	}
rules:
	for _, r := range f.TCPRequestConnection {
		if !holds(r.Cond) {
			continue
		}
		switch r.Action {
		case TCPReject:
			res.Verdict = Rejected
			return res, nil
		case TCPSilentDrop:
			res.Verdict = Dropped
			return res, nil
		case TCPAccept:
			break rules
		}
	}
	res.Backend = f.DefaultBackend
	for _, u := range f.UseBackends {
		if holds(u.Cond) {
			res.Backend = u.Backend
			break
		}
	}
	be := backends[res.Backend]
	if be == nil || len(be.Servers) == 0 {
		res.Verdict = NoServer
		return res, nil
	}
	res.Verdict = Served
	res.Sticky = be.StickTable != nil
	for _, s := range be.Servers {
		res.Servers = append(res.Servers, s.AddrPort())
	}
	return res, nil
}
