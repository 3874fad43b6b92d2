// Command podserver is the workload of a test "pod" (a network namespace):
// an HTTP server on each TCP port and a UDP echo on each UDP port, each
// answering with the pod's name and the address the request reached, so a
// test can tell which endpoint served it.
//
// It prints "ready" on stdout once every port is bound, and serves until
// it is terminated.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// Reply is what every request gets back, as JSON.
type Reply struct {
	Name   string `json:"name"`
	Local  string `json:"local"`
	Client string `json:"client"`
	Echo   string `json:"echo,omitempty"`
}

func ports(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p <= 0 || p > 65535 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func main() {
	name := flag.String("name", "", "name reported in every reply")
	tcp := flag.String("tcp", "8080", "comma-separated TCP ports served over HTTP")
	udp := flag.String("udp", "", "comma-separated UDP ports answered as an echo")
	flag.Parse()
	if err := run(*name, *tcp, *udp); err != nil {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
}

func run(name, tcpPorts, udpPorts string) error {
	tps, err := ports(tcpPorts)
	if err != nil {
		return err
	}
	ups, err := ports(udpPorts)
	if err != nil {
		return err
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := ""
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			local = a.String()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{Name: name, Local: local, Client: r.RemoteAddr})
	})
	errc := make(chan error, len(tps)+len(ups))
	for _, p := range tps {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return err
		}
		go func() { errc <- http.Serve(l, handler) }()
	}
	for _, p := range ups {
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: p})
		if err != nil {
			return err
		}
		go func() { errc <- echo(c, name) }()
	}
	fmt.Println("ready")
	return <-errc
}

func echo(c *net.UDPConn, name string) error {
	buf := make([]byte, 64*1024)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return err
		}
		// The reply's "local" is the port only: an unconnected UDP socket on a
		// wildcard address does not learn the destination IP without
		// IP_PKTINFO, and the name already identifies the pod.
		out, _ := json.Marshal(Reply{Name: name, Local: c.LocalAddr().String(), Client: from.String(), Echo: string(buf[:n])})
		if _, err := c.WriteToUDP(out, from); err != nil {
			return err
		}
	}
}
