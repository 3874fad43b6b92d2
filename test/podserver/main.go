// Command podserver is the workload of a test "pod" (a network namespace):
// an HTTP server on each TCP port and a UDP echo on each UDP port, each
// answering with the pod's name and the address the request reached, so a
// test can tell which endpoint served it. On the PROXY ports every
// connection must start with a PROXY protocol header (v1 or v2): the
// client is the one the header names, and the reply says which version.
// Every HTTP port also speaks HTTP/2 over cleartext (prior knowledge).
// The gRPC ports serve grpc.health.v1.Health, and every answer carries
// the pod's name in the "pod" header. On the HTTP ports, /bytes?n=N
// answers N bytes and /upgrade switches protocols (as a WebSocket
// handshake does) and echoes lines.
//
// It prints "ready" on stdout once every port is bound, and serves until
// it is terminated.
package main

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/pires/go-proxyproto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// Reply is what every request gets back, as JSON.
type Reply struct {
	Name   string `json:"name"`
	Local  string `json:"local"`
	Client string `json:"client"`
	Echo   string `json:"echo,omitempty"`
	// Proxy is the PROXY protocol version the connection started with
	// ("v1", "v2"), empty on a plain port.
	Proxy string `json:"proxy,omitempty"`
	// Proto is the request's HTTP version ("HTTP/1.1", "HTTP/2.0").
	Proto string `json:"proto,omitempty"`
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
	proxyTCP := flag.String("proxy-tcp", "", "comma-separated TCP ports served over HTTP after a required PROXY protocol header")
	grpcPorts := flag.String("grpc", "", "comma-separated TCP ports served over gRPC (the health service)")
	flag.Parse()
	if err := run(*name, *tcp, *udp, *proxyTCP, *grpcPorts); err != nil {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
}

// proxyVersionKey is the context key of a connection's PROXY version.
type proxyVersionKey struct{}

func run(name, tcpPorts, udpPorts, proxyTCPPorts, grpcPorts string) error {
	tps, err := ports(tcpPorts)
	if err != nil {
		return err
	}
	ups, err := ports(udpPorts)
	if err != nil {
		return err
	}
	pps, err := ports(proxyTCPPorts)
	if err != nil {
		return err
	}
	gps, err := ports(grpcPorts)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		local := ""
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			local = a.String()
		}
		version, _ := r.Context().Value(proxyVersionKey{}).(string)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{Name: name, Local: local, Client: r.RemoteAddr, Proxy: version, Proto: r.Proto})
	})
	// /bytes?n=N answers N bytes, for large bodies.
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want n=<bytes>", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		chunk := make([]byte, 64*1024)
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	// /upgrade switches the connection to the protocol the Upgrade
	// header names (a WebSocket's handshake, without its framing), then
	// answers every line with "<pod>: <line>".
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		proto := r.Header.Get("Upgrade")
		if proto == "" {
			http.Error(w, "want an Upgrade header", http.StatusBadRequest)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n", proto)
		if key := r.Header.Get("Sec-WebSocket-Key"); key != "" {
			// RFC 6455's answer to the key, which proxies check.
			sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
			fmt.Fprintf(rw, "Sec-WebSocket-Accept: %s\r\n", base64.StdEncoding.EncodeToString(sum[:]))
		}
		fmt.Fprint(rw, "\r\n")
		for rw.Flush() == nil {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(rw, "%s: %s", name, line)
		}
	})
	server := &http.Server{
		Handler: mux,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*proxyproto.Conn); ok {
				if h := pc.ProxyHeader(); h != nil {
					return context.WithValue(ctx, proxyVersionKey{}, fmt.Sprintf("v%d", h.Version))
				}
			}
			return ctx
		},
	}
	server.Protocols = new(http.Protocols)
	server.Protocols.SetHTTP1(true)
	server.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, len(tps)+len(ups)+len(pps)+len(gps))
	for _, p := range tps {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return err
		}
		go func() { errc <- server.Serve(l) }()
	}
	for _, p := range pps {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return err
		}
		// A connection without the header is closed: an endpoint that
		// expects the PROXY protocol refuses plain clients.
		pl := &proxyproto.Listener{Listener: l, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REQUIRE, nil
		}}
		go func() { errc <- server.Serve(pl) }()
	}
	for _, p := range ups {
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: p})
		if err != nil {
			return err
		}
		go func() { errc <- echo(c, name) }()
	}
	if len(gps) > 0 {
		gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			_ = grpc.SetHeader(ctx, metadata.Pairs("pod", name))
			return handler(ctx, req)
		}))
		healthpb.RegisterHealthServer(gs, health.NewServer())
		for _, p := range gps {
			l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
			if err != nil {
				return err
			}
			go func() { errc <- gs.Serve(l) }()
		}
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
