package haproxycfg

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// MaxNameLength bounds every name in the model. Kubernetes names are much
// shorter (a namespace and a Service name are DNS labels of at most 63
// characters), so a longer name is a bug, not an input to accept.
const MaxNameLength = 255

// ValidName reports whether s may name a proxy, a server, a bind or an
// ACL: HAProxy 2.6 accepts only [A-Za-z0-9._:-] in proxy and server
// names, and the same set keeps every other name a single config word
// that needs no quoting.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '-'
}

func checkName(what, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%s name %q: must be 1-%d characters of [A-Za-z0-9._:-]", what, s, MaxNameLength)
	}
	return nil
}

// ServerName is the name of the server for an endpoint: "10.0.0.1:8080"
// for IPv4, "fd00::1.8080" for IPv6 (brackets are not allowed in server
// names). Distinct endpoints get distinct names.
func ServerName(addr netip.Addr, port uint16) string {
	// One allocation: this runs for every endpoint at every sync.
	var buf [64]byte
	addr = addr.Unmap().WithZone("")
	b := addr.AppendTo(buf[:0])
	if addr.Is6() {
		b = append(b, '.')
	} else {
		b = append(b, ':')
	}
	return string(strconv.AppendUint(b, uint64(port), 10))
}

// EscapeComment makes s safe on a "#" comment line: every byte outside
// printable ASCII (newlines, carriage returns, NUL, other control
// characters, and any non-ASCII byte) becomes a \xNN escape, so a comment
// can never end its line.
func EscapeComment(s string) string {
	ok := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e || s[i] == '\\' {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '\\' {
			fmt.Fprintf(&b, `\x%02x`, c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
