// Command keepalived-config prints the keepalived.conf of one host of the
// VRRP pair in front of the central or external HAProxy (package
// keepalived), and with -check-script writes the health check it runs.
//
//	keepalived-config -name lb1 -interface eth0 -router-id 51 \
//	    -vip 192.168.50.10/24 -vip fd00:50::10/64 >/etc/keepalived/keepalived.conf
//	keepalived-config -check-script /etc/keepalived/check-kube-haproxy.sh
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"kube-haproxy.io/kube-haproxy/keepalived"
)

type addrs []string

func (a *addrs) String() string     { return strings.Join(*a, ",") }
func (a *addrs) Set(s string) error { *a = append(*a, s); return nil }

func main() {
	var c keepalived.Config
	var vips, peers addrs
	var source, checkOut string
	flag.StringVar(&c.Name, "name", "", "this host's name in keepalived's logs")
	flag.StringVar(&c.Interface, "interface", "", "interface of the adverts and the virtual addresses")
	flag.IntVar(&c.RouterID, "router-id", 0, "VRRP virtual router id (1-255), the same on both hosts")
	flag.IntVar(&c.Priority, "priority", keepalived.DefaultPriority, "preference when both hosts start (1-254)")
	flag.Var(&vips, "vip", "virtual address with prefix length, at most one per IP family (repeatable)")
	flag.StringVar(&source, "unicast-source", "", "this host's address for unicast adverts")
	flag.Var(&peers, "unicast-peer", "the other host's address for unicast adverts (repeatable)")
	flag.DurationVar(&c.AdvertInterval, "advert-interval", keepalived.DefaultAdvertInterval, "VRRP advert interval")
	flag.StringVar(&c.CheckScript, "check-script-path", keepalived.DefaultCheckScript, "where the health check is installed")
	flag.IntVar(&c.DispatchPort, "dispatch-port", keepalived.DefaultDispatchPort, "kube-proxy's haproxy.dispatchPort")
	flag.StringVar(&c.Healthz, "healthz", keepalived.DefaultHealthz, "kube-proxy's healthzBindAddress, host:port")
	flag.DurationVar(&c.KubeProxyGrace, "kube-proxy-grace", keepalived.DefaultKubeProxyGrace, "how long kube-proxy may be down, while HAProxy serves, before the address moves (negative: no grace)")
	flag.StringVar(&checkOut, "check-script", "", "write the health check script to this path and exit")
	flag.Parse()
	if err := run(c, vips, peers, source, checkOut); err != nil {
		fmt.Fprintln(os.Stderr, "keepalived-config:", err)
		os.Exit(1)
	}
}

func run(c keepalived.Config, vips, peers addrs, source, checkOut string) error {
	if checkOut != "" {
		return os.WriteFile(checkOut, keepalived.CheckScript, 0o755)
	}
	for _, v := range vips {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return fmt.Errorf("-vip: %w", err)
		}
		c.VIPs = append(c.VIPs, p)
	}
	for _, v := range peers {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return fmt.Errorf("-unicast-peer: %w", err)
		}
		c.UnicastPeers = append(c.UnicastPeers, a)
	}
	if source != "" {
		a, err := netip.ParseAddr(source)
		if err != nil {
			return fmt.Errorf("-unicast-source: %w", err)
		}
		c.UnicastSource = a
	}
	out, err := keepalived.Render(c)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
