package netns

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Namespace is a network namespace created by a Kit.
type Namespace struct {
	// Name is the full name (`ip netns exec <Name> ...`).
	Name string
	// Short is the name the test gave.
	Short string

	kit    *Kit
	handle netns.NsHandle
	// adopted namespaces were not created by the Kit and outlive it.
	adopted bool
	mu      sync.Mutex
	nl      *netlink.Handle
}

func netnsFromName(name string) (netns.NsHandle, error) { return netns.GetFromName(name) }

// IP runs `ip -n <ns> args...` and fails the test on error.
func (n *Namespace) IP(args ...string) string {
	n.kit.t.Helper()
	out, err := runIP(append([]string{"-n", n.Name}, args...)...)
	if err != nil {
		n.kit.t.Fatalf("%v", err)
	}
	return out
}

// Exec runs a command inside the namespace and returns its combined output.
func (n *Namespace) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", n.Short, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustExec is Exec that fails the test on error.
func (n *Namespace) MustExec(args ...string) string {
	n.kit.t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		n.kit.t.Fatalf("%v", err)
	}
	return out
}

// Start runs a long-lived command inside the namespace. The Kit stops it
// on Cleanup; its output is in Proc.Log.
func (n *Namespace) Start(name string, args ...string) *Proc {
	n.kit.t.Helper()
	return n.kit.start(n, name, nil, args...)
}

// AddAddr puts addr on link. IPv6 addresses skip duplicate address
// detection, so they are usable at once rather than after a second or two
// as "tentative".
func (n *Namespace) AddAddr(link string, addr netip.Prefix) {
	n.kit.t.Helper()
	args := []string{"addr", "add", addr.String(), "dev", link}
	if addr.Addr().Is6() {
		args = append(args, "nodad")
	}
	n.IP(args...)
}

// DefaultRoute sets the namespace's default route via gw.
func (n *Namespace) DefaultRoute(gw netip.Addr) {
	n.kit.t.Helper()
	if gw.Is6() {
		n.IP("-6", "route", "replace", "default", "via", gw.String())
		return
	}
	n.IP("route", "replace", "default", "via", gw.String())
}

// Route adds a route to dst via gw.
func (n *Namespace) Route(dst netip.Prefix, gw netip.Addr) {
	n.kit.t.Helper()
	n.IP("route", "replace", dst.String(), "via", gw.String())
}

// Netlink returns a netlink handle working inside the namespace.
func (n *Namespace) Netlink() *netlink.Handle {
	n.kit.t.Helper()
	h, err := n.netlinkHandle()
	if err != nil {
		n.kit.t.Fatalf("%v", err)
	}
	return h
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn
// opens belong to the namespace for their whole life, whichever thread
// uses them later; processes fn starts run in the namespace too.
func (n *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked, so the runtime ends it with this
			// goroutine rather than reuse it in the wrong namespace.
			errc <- fmt.Errorf("leave namespace %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dial connects from inside the namespace.
func (n *Namespace) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace, closed after the test.
func (n *Namespace) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err == nil {
		n.kit.t.Cleanup(func() { l.Close() })
	}
	return l, err
}

// ListenPacket opens a packet listener (UDP) inside the namespace, closed
// after the test.
func (n *Namespace) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	if err == nil {
		n.kit.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// HTTPClient returns a client whose connections start inside the
// namespace. Keep-alives are off: each request is a new connection, so it
// is balanced, filtered and counted like a new client.
func (n *Namespace) HTTPClient(timeout time.Duration) *http.Client {
	return n.httpClient(HTTPOptions{Timeout: timeout})
}

// HTTPOptions shape a request sent from a namespace.
type HTTPOptions struct {
	// Timeout bounds the whole request.
	Timeout time.Duration
	// DialTimeout bounds the connect alone; zero leaves it to Timeout.
	DialTimeout time.Duration
	// Source is the local address to connect from, when valid.
	Source netip.Addr
}

func (n *Namespace) httpClient(o HTTPOptions) *http.Client {
	d := &net.Dialer{Timeout: o.DialTimeout}
	if o.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: o.Source.AsSlice()}
	}
	return &http.Client{
		Timeout: o.Timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := n.Do(func() error {
					var err error
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}
