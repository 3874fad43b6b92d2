// Package proxier runs the scope-node proxier for real, through its
// handlers as kube-proxy's informers would drive it: the test binary is
// re-executed inside a "node" network namespace (so HAProxy, nft and
// netlink calls from any goroutine act on the node), pods and a client are
// namespaces of their own, and connections go through the kernel, a real
// HAProxy behind its one listener and maps, and, for UDP and SCTP service
// ports, upstream's nftables proxier the proxier drives.
//
// Tests of the one listener: Services served from a client, the node and
// a bridged pod (proxier_test.go), dual stack, structural changes without
// reload and NodePorts held by host processes (structure_test.go). UDP and
// SCTP: udp_test.go. A proxy.Provider has no Stop: each test cancels its
// proxier and removes what it left (CleanupLeftovers) before the next.
package proxier

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

func TestMain(m *testing.M) { os.Exit(netns.RunTestsInNamespace(m, "node")) }

const (
	nodeName    = "node1"
	serviceCIDR = "10.96.0.0/16"
)

var (
	nodeIP = netns.NodeIP.String()
	podGW  = netns.PodGateway.String()
)

// topology is the node (this process's namespace) with a client on its
// LAN and a pod bridge. Pods serve HTTP on TCP 53 and 8080 and echo on UDP
// 53 and 5353.
type topology struct {
	kit *netns.Kit
	*netns.Node
}

// newTopology builds the node with br_netfilter on, as kubeadm requires
// (IPv4 connections from bridged pods then reach HAProxy by NAT, not
// TPROXY: see package serviceguard), and forwarding on (upstream's
// nftables proxier DNATs UDP to the pods).
func newTopology(t *testing.T, o netns.NodeOptions) *topology {
	netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	o.NS = k.Self()
	o.BridgeNetfilter, o.Forwarding = true, true
	o.PodTCPPorts, o.PodUDPPorts = []int{53, 8080}, []int{53, 5353}
	return &topology{kit: k, Node: k.Node(o)}
}

// nodeConfig is the proxier's configuration on the node: scope node, its
// state in the test's directory, the node's IPv4 address. No
// NodePortAddresses: NodePorts listen on every address, so HAProxy's own
// wildcard bind would answer on every ClusterIP too if the guard let it.
func (tp *topology) nodeConfig(t *testing.T) proxier.Config {
	return proxier.Config{
		Scope:         proxier.ScopeNode,
		HAProxyPath:   netns.RequireBinary(t, "haproxy"),
		StateDir:      filepath.Join(tp.kit.Dir(), "state"),
		ManageProcess: true,
		NodeName:      nodeName,
		NodeIPs:       map[v1.IPFamily]net.IP{v1.IPv4Protocol: netns.NodeIP.AsSlice()},
		SyncPeriod:    30 * time.Second,
		MinSyncPeriod: 100 * time.Millisecond,
		NBThread:      1,
	}
}

// startProxier starts the proxier of cfg (one for both families when
// dualStack), tells it the ServiceCIDRs, and removes what it left after
// the test. cancel stops its sync loop.
func startProxier(t *testing.T, cfg proxier.Config, dualStack bool, cidrs ...string) (p proxy.Provider, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	if dualStack {
		p, err = proxier.NewDualStackProxier(ctx, cfg)
	} else {
		p, err = proxier.NewProxier(ctx, v1.IPv4Protocol, cfg)
	}
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		// Let a sync that started before the cancel finish (syncs are
		// 100ms apart at most and take a few ms here).
		time.Sleep(time.Second)
		assert.False(t, proxier.CleanupLeftovers(context.Background(), cfg), "CleanupLeftovers reports an error")
	})
	go p.SyncLoop()
	p.OnServiceCIDRsChanged(cidrs)
	return p, cancel
}

func servicePort(name string, proto v1.Protocol, port, target, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target), NodePort: nodePort}
}

// service is an IPv4 Service on ip with ports, of type NodePort when a
// port has one.
func service(name, ip, version string, ports ...v1.ServicePort) *v1.Service {
	typ := v1.ServiceTypeClusterIP
	for _, p := range ports {
		if p.NodePort != 0 {
			typ = v1.ServiceTypeNodePort
		}
	}
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, ResourceVersion: version},
		Spec: v1.ServiceSpec{
			Type: typ, ClusterIP: ip, ClusterIPs: []string{ip},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, Ports: ports,
		},
	}
}

// slice lists pods as ready endpoints of the service's ports (by name;
// the pods serve every port).
func slice(svc *v1.Service, version string, pods ...*netns.Pod) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: svc.Name + "-abcde", ResourceVersion: version,
			Labels: map[string]string{discovery.LabelServiceName: svc.Name},
		},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To(p.TargetPort.IntVal)})
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		})
	}
	return s
}

// eventually retries check until it returns nil, or fails the test with
// its last error: a sync and a runtime update or reload take a moment.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func oneOf(name string, pods []string) bool {
	for _, p := range pods {
		if name == p {
			return true
		}
	}
	return false
}

func httpAnswered(ns *netns.Namespace, url string, pods ...string) func() error {
	return func() error {
		r, err := ns.HTTPGet(url)
		if err != nil {
			return err
		}
		if !oneOf(r.Name, pods) {
			return fmt.Errorf("%s from %s answered by %s, want one of %v", url, ns.Short, r.Name, pods)
		}
		return nil
	}
}

func udpAnswered(ns *netns.Namespace, addr string, pods ...string) func() error {
	return func() error {
		r, err := ns.UDPEcho(addr, "hello", time.Second)
		if err != nil {
			return fmt.Errorf("udp %s from %s: %w", addr, ns.Short, err)
		}
		if !oneOf(r.Name, pods) {
			return fmt.Errorf("udp %s from %s answered by %s, want one of %v", addr, ns.Short, r.Name, pods)
		}
		if r.Echo != "hello" {
			return fmt.Errorf("udp %s: echo %q", addr, r.Echo)
		}
		return nil
	}
}
