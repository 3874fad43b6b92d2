package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// ListeningTCPPorts returns the TCP ports that some socket in the calling
// thread's network namespace listens on for family, each with the
// addresses it is listened on (0.0.0.0 or :: for a wildcard). A NodePort
// dispatched to HAProxy would take the connections of such a listener on
// the node's addresses, so the caller refuses those NodePorts (after
// leaving out its own listeners).
//
// An IPv6 socket on [::] without IPV6_V6ONLY listens on IPv4 too (as
// 0.0.0.0 here), and one bound to an IPv4-mapped address on IPv4 only.
//
// It asks the kernel (sock_diag) for listening sockets only: established
// connections, many on a busy node, are not even sent.
func ListeningTCPPorts(family v1.IPFamily) (map[uint16][]netip.Addr, error) {
	ports := map[uint16][]netip.Addr{}
	add := func(port uint16, a netip.Addr) {
		if !slices.Contains(ports[port], a) {
			ports[port] = append(ports[port], a)
		}
	}
	if family != v1.IPv6Protocol {
		socks, err := listeningTCP(unix.AF_INET)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			add(s.port, s.addr.Unmap())
		}
	}
	socks, err := listeningTCP(unix.AF_INET6)
	if err != nil {
		// A kernel without IPv6 has no IPv6 listener.
		if family != v1.IPv6Protocol && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EAFNOSUPPORT)) {
			socks = nil
		} else {
			return nil, err
		}
	}
	for _, s := range socks {
		switch {
		case family == v1.IPv6Protocol:
			if !s.addr.Is4In6() {
				add(s.port, s.addr)
			}
		case s.addr.Is4In6():
			add(s.port, s.addr.Unmap())
		case s.addr.IsUnspecified() && !s.v6only:
			add(s.port, netip.IPv4Unspecified())
		}
	}
	for _, addrs := range ports {
		slices.SortFunc(addrs, netip.Addr.Compare)
	}
	return ports, nil
}

// listener is a listening socket as sock_diag reports it.
type listener struct {
	addr   netip.Addr
	port   uint16
	v6only bool
}

// Sizes and numbers of linux/inet_diag.h and net/tcp_states.h.
const (
	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
	tcpListen           = 10
	inetDiagSKV6Only    = 11
)

// inetDiagRequest is a struct inet_diag_req_v2 for the TCP sockets of
// family in state LISTEN; the socket id stays zero (a dump ignores it).
type inetDiagRequest struct{ family uint8 }

func (r inetDiagRequest) Len() int { return sizeofInetDiagReqV2 }

func (r inetDiagRequest) Serialize() []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	nl.NativeEndian().PutUint32(b[4:8], 1<<tcpListen)
	return b
}

// listeningTCP dumps the listening TCP sockets of one address family. A
// dump interrupted by a concurrent change may miss a socket: it is asked
// again.
func listeningTCP(family uint8) ([]listener, error) {
	var err error
	for range 3 {
		var socks []listener
		var perr error
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(inetDiagRequest{family: family})
		err = req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
			s, ok, err := parseInetDiagMsg(msg)
			if err != nil {
				perr = err
				return false
			}
			if ok {
				socks = append(socks, s)
			}
			return true
		})
		if err == nil && perr != nil {
			return nil, perr
		}
		if err == nil {
			return socks, nil
		}
		if !errors.Is(err, nl.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list listening TCP sockets (address family %d): %w", family, err)
}

// parseInetDiagMsg reads a struct inet_diag_msg and its attributes; ok is
// false for a socket not in state LISTEN.
func parseInetDiagMsg(b []byte) (l listener, ok bool, err error) {
	if len(b) < sizeofInetDiagMsg {
		return l, false, fmt.Errorf("short inet_diag_msg: %d bytes", len(b))
	}
	if b[1] != tcpListen {
		return l, false, nil
	}
	l.port = binary.BigEndian.Uint16(b[4:6])
	switch b[0] {
	case unix.AF_INET:
		l.addr = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		l.addr = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return l, false, nil
	}
	attrs, err := nl.ParseRouteAttr(b[sizeofInetDiagMsg:])
	if err != nil {
		return l, false, fmt.Errorf("inet_diag_msg attributes: %w", err)
	}
	for _, a := range attrs {
		// Without the attribute a wildcard counts for IPv4 too: the safe
		// side for a conflict check.
		if a.Attr.Type == inetDiagSKV6Only && len(a.Value) > 0 {
			l.v6only = a.Value[0] != 0
		}
	}
	return l, true, nil
}
