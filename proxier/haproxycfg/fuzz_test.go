package haproxycfg

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// fuzzConfig builds a config of fixed shape where every string field is
// one of the given values.
func fuzzConfig(name, bindName, aclValue, serverName, comment, path string, addr netip.Addr) *Config {
	return &Config{
		Global:   Global{StatsSocket: path, MaxConn: 10},
		Defaults: Defaults{TimeoutConnect: time.Second},
		Frontends: []*Frontend{{
			Name:    name,
			Comment: comment,
			Binds:   []Bind{{Name: bindName, Addr: addr, Port: 80}},
			ACLs: []ACL{
				{Name: bindName, Kind: ACLBindNamePrefix, Values: []string{aclValue}},
				{Name: "src", Kind: ACLSourceIn, Prefixes: []netip.Prefix{netip.PrefixFrom(addr, 8)}},
			},
			TCPRequestConnection: []TCPRule{{Action: TCPReject, Cond: Condition{{ACL: bindName, Negate: true}, {BackendHasServers: name}}}},
			UseBackends:          []UseBackend{{Backend: name, Cond: Condition{{ACL: "src"}}}},
			DefaultBackend:       name,
		}},
		Backends: []*Backend{{
			Name:       name,
			Comment:    comment,
			StickTable: &StickTable{Expire: time.Second},
			Servers:    []Server{{Name: serverName, Addr: addr, Port: 8080, ID: 1, Comment: comment}},
		}},
	}
}

// FuzzRender shows that no string in the model can change the structure
// of the rendered file: whatever the names and comments, Render either
// refuses the model or writes exactly the lines a harmless model of the
// same shape gets, each starting with the same keyword.
func FuzzRender(f *testing.F) {
	f.Add("default.web:http:tcp", "clusterip", "nodeport-", "10.0.0.1:80", "Service default/web", "/run/h.sock", []byte{10, 0, 0, 1})
	f.Add("a\nbackend b", "x y", "#", "s\r", "c\nfrontend evil", "/run/a\nb", []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add("ok", "ok", "ok", "ok", "\x00\\\"'{}", "/ok", []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, name, bindName, aclValue, serverName, comment, path string, ip []byte) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			addr = netip.MustParseAddr("10.0.0.1")
		}
		out, err := Render(fuzzConfig(name, bindName, aclValue, serverName, comment, path, addr))
		if err != nil {
			return
		}
		refComment := ""
		if comment != "" {
			refComment = "c"
		}
		ref, err := Render(fuzzConfig("n", "b", "v", "s", refComment, "/p", netip.MustParseAddr("10.0.0.1")))
		if err != nil {
			t.Fatalf("reference config: %v", err)
		}
		got, want := strings.Split(string(out), "\n"), strings.Split(string(ref), "\n")
		if len(got) != len(want) {
			t.Fatalf("rendered %d lines, want %d:\n%s", len(got), len(want), out)
		}
		for i := range got {
			if strings.ContainsAny(got[i], "\r\x00") {
				t.Fatalf("line %d contains a control character: %q", i, got[i])
			}
			if firstWord(got[i]) != firstWord(want[i]) {
				t.Fatalf("line %d starts with %q, want %q:\n%s", i, firstWord(got[i]), firstWord(want[i]), out)
			}
			// Outside comments, the line has as many words as the reference.
			if !strings.HasPrefix(strings.TrimSpace(got[i]), "#") && len(strings.Fields(got[i])) != len(strings.Fields(want[i])) {
				t.Fatalf("line %d has %d words, want %d: %q", i, len(strings.Fields(got[i])), len(strings.Fields(want[i])), got[i])
			}
			if strings.HasPrefix(strings.TrimSpace(got[i]), "#") != strings.HasPrefix(strings.TrimSpace(want[i]), "#") {
				t.Fatalf("line %d: comment status differs: %q", i, got[i])
			}
		}
	})
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}
