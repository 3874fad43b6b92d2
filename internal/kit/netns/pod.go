package netns

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// PodServerPackage is the import path of the pods' server, built by the Kit.
const PodServerPackage = "kube-haproxy.io/kube-haproxy/test/podserver"

// Reply is a pod's answer (the JSON of test/podserver).
type Reply struct {
	Name   string `json:"name"`
	Local  string `json:"local"`
	Client string `json:"client"`
	Echo   string `json:"echo,omitempty"`
	// Proxy is the PROXY protocol version the pod read ("v1", "v2").
	Proxy string `json:"proxy,omitempty"`
	// Proto is the HTTP version of the request the pod got.
	Proto string `json:"proto,omitempty"`
}

// PodSpec says how a pod is wired and what it serves.
type PodSpec struct {
	// Bridge (in BridgeNS) the pod's eth0 is plugged into. Without a
	// Bridge the pod is routed, as routed CNIs do: a veth to BridgeNS, a
	// /32 route to the pod over it, proxy ARP answering for every
	// address the pod asks for (its default route is the link itself).
	BridgeNS *Namespace
	Bridge   string
	// Addr is the pod's address with the bridge's prefix length.
	Addr netip.Prefix
	// Gateway is the default route (the node's address on the bridge).
	Gateway netip.Addr
	// TCPPorts answer HTTP; UDPPorts echo. Default: TCP 8080.
	TCPPorts []int
	UDPPorts []int
	// ProxyTCPPorts answer HTTP after a PROXY protocol header, which
	// they require.
	ProxyTCPPorts []int
	// GRPCPorts serve gRPC's health service, naming the pod in the
	// "pod" header of every answer.
	GRPCPorts []int
}

// Pod is a namespace running test/podserver.
type Pod struct {
	*Namespace
	IP   netip.Addr
	Proc *Proc
}

// Pod creates a namespace, plugs it into spec.Bridge and starts the pod
// server, returning once the server listens.
func (k *Kit) Pod(name string, spec PodSpec) *Pod {
	k.t.Helper()
	bin := k.podServer()
	ns := k.Namespace(name)
	if spec.Bridge != "" {
		k.Plug(spec.BridgeNS, spec.Bridge, ns, "eth0", spec.Addr)
		if spec.Gateway.IsValid() {
			ns.DefaultRoute(spec.Gateway)
		}
	} else {
		k.route(spec.BridgeNS, ns, spec.Addr.Addr())
	}
	tcp := spec.TCPPorts
	if len(tcp) == 0 && len(spec.UDPPorts) == 0 && len(spec.ProxyTCPPorts) == 0 && len(spec.GRPCPorts) == 0 {
		tcp = []int{8080}
	}
	r, w, err := os.Pipe()
	if err != nil {
		k.t.Fatalf("%v", err)
	}
	p := k.start(ns, "podserver", w, bin, "-name", name, "-tcp", joinPorts(tcp), "-udp", joinPorts(spec.UDPPorts),
		"-proxy-tcp", joinPorts(spec.ProxyTCPPorts), "-grpc", joinPorts(spec.GRPCPorts))
	w.Close()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected first line %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, r)
		r.Close()
	}()
	select {
	case err := <-ready:
		if err != nil {
			k.t.Fatalf("pod %s did not start: %v\n%s", name, err, p.Log())
		}
	case <-time.After(30 * time.Second):
		k.t.Fatalf("pod %s not ready after 30s\n%s", name, p.Log())
	}
	return &Pod{Namespace: ns, IP: spec.Addr.Addr(), Proc: p}
}

// route wires ns to node as a routed CNI does (see PodSpec.Bridge).
func (k *Kit) route(node, ns *Namespace, addr netip.Addr) {
	k.t.Helper()
	k.mu.Lock()
	k.linkSeq++
	hostIf := fmt.Sprintf("r%d", k.linkSeq)
	k.mu.Unlock()
	k.Link(node, hostIf, netip.Prefix{}, ns, "eth0", netip.PrefixFrom(addr, addr.BitLen()))
	node.Sysctl("net.ipv4.conf."+hostIf+".proxy_arp", "1")
	node.IP("route", "add", netip.PrefixFrom(addr, addr.BitLen()).String(), "dev", hostIf)
	ns.IP("route", "add", "default", "dev", "eth0")
}

func joinPorts(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// podServer builds test/podserver once per Kit into its temp dir.
func (k *Kit) podServer() string {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.podserver != "" {
		return k.podserver
	}
	bin := filepath.Join(k.dir, "podserver")
	cmd := exec.Command("go", "build", "-o", bin, PodServerPackage)
	if out, err := cmd.CombinedOutput(); err != nil {
		k.t.Fatalf("go build %s: %v\n%s", PodServerPackage, err, out)
	}
	k.podserver = bin
	return bin
}

// HTTPGet sends GET url from inside the namespace and decodes the pod's
// reply.
func (n *Namespace) HTTPGet(url string) (Reply, error) {
	return n.HTTPGetWith(url, HTTPOptions{Timeout: 5 * time.Second})
}

// HTTPGetWith is HTTPGet with the request shaped by o, on a new connection.
func (n *Namespace) HTTPGetWith(url string, o HTTPOptions) (Reply, error) {
	var r Reply
	resp, err := n.httpClient(o).Get(url)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return r, err
	}
	if resp.StatusCode != 200 {
		return r, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("GET %s: not a pod reply: %w: %q", url, err, body)
	}
	return r, nil
}

// UDPEcho sends msg to addr from inside the namespace and decodes the
// pod's reply.
func (n *Namespace) UDPEcho(addr, msg string, timeout time.Duration) (Reply, error) {
	var r Reply
	c, err := n.Dial("udp", addr, timeout)
	if err != nil {
		return r, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return r, err
	}
	buf := make([]byte, 64*1024)
	nr, err := c.Read(buf)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(buf[:nr], &r); err != nil {
		return r, fmt.Errorf("udp %s: not a pod reply: %w", addr, err)
	}
	return r, nil
}

// WaitTCP waits until a TCP connection to addr from inside the namespace
// succeeds (a server coming up), or timeout passes.
func (n *Namespace) WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := n.Dial("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable from %s after %v: %w", addr, n.Short, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TCPAccepts reports whether a TCP connection from the namespace to addr
// is accepted; the error says how it failed otherwise (refused, timeout).
func (n *Namespace) TCPAccepts(addr string, timeout time.Duration) error {
	c, err := n.Dial("tcp", addr, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// ServedBy sends batches of GET url from inside the namespace, each on a
// new connection shaped by o, until a whole batch is answered by exactly
// the pods named want: each at least once, no other (a stale endpoint,
// picked by chance less often than not, shows up in a batch). It returns
// how long that took, the last batch included, or after timeout an error
// saying what the last batch saw.
func (n *Namespace) ServedBy(url string, o HTTPOptions, timeout time.Duration, want ...string) (time.Duration, error) {
	start := time.Now()
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	var last string
	for time.Since(start) < timeout {
		seen := map[string]bool{}
		ok := true
		for range max(4*len(want), 10) {
			r, err := n.HTTPGetWith(url, o)
			if err != nil {
				last, ok = err.Error(), false
				break
			}
			if !wantSet[r.Name] {
				last, ok = "answered by "+r.Name, false
				break
			}
			seen[r.Name] = true
		}
		if ok && len(seen) == len(wantSet) {
			return time.Since(start), nil
		}
		if ok {
			last = fmt.Sprintf("only %d of %v answered", len(seen), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s from %s: want answers from exactly %v after %v; last: %s", url, n.Short, want, timeout, last)
}
