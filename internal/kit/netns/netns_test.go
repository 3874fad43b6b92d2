package netns

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func listNamespaces(t *testing.T) string {
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	return string(out)
}

func TestKitBuildsATopologyAndRemovesIt(t *testing.T) {
	k := New(t)
	lan := k.Namespace("lan")
	k.Bridge(lan, "br0", netip.Prefix{})
	node := k.Namespace("node")
	k.Plug(lan, "br0", node, "eth0", netip.MustParsePrefix("192.168.90.1/24"))
	client := k.Namespace("client")
	k.Plug(lan, "br0", client, "eth0", netip.MustParsePrefix("192.168.90.100/24"))
	client.DefaultRoute(netip.MustParseAddr("192.168.90.1"))

	k.Bridge(node, "cbr0", netip.MustParsePrefix("10.244.1.1/24"))
	pod := k.Pod("pod1", PodSpec{
		BridgeNS: node, Bridge: "cbr0",
		Addr:     netip.MustParsePrefix("10.244.1.10/24"),
		Gateway:  netip.MustParseAddr("10.244.1.1"),
		TCPPorts: []int{8080, 9090}, UDPPorts: []int{5353},
	})

	// The node reaches the pod over the node's bridge, on every port.
	for _, port := range []string{"8080", "9090"} {
		r, err := node.HTTPGet("http://10.244.1.10:" + port + "/")
		require.NoError(t, err)
		assert.Equal(t, "pod1", r.Name)
		assert.Equal(t, "10.244.1.10:"+port, r.Local)
		assert.True(t, strings.HasPrefix(r.Client, "10.244.1.1:"), "client %s", r.Client)
	}
	r, err := node.UDPEcho("10.244.1.10:5353", "hello", 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "pod1", r.Name)
	assert.Equal(t, "hello", r.Echo)

	// The client is on the LAN only: it reaches the node, not the pod
	// (the node does not forward).
	assert.Error(t, client.TCPAccepts("10.244.1.10:8080", 500*time.Millisecond),
		"the node must not forward between its bridge and the LAN")

	// A listener opened by the test inside the node namespace is reached
	// from the client, and only through the namespace's addresses.
	l, err := node.Listen("tcp", "0.0.0.0:2222")
	require.NoError(t, err)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	assert.NoError(t, client.TCPAccepts("192.168.90.1:2222", 2*time.Second))

	out := node.MustExec("ip", "-br", "addr", "show", "eth0")
	assert.Contains(t, out, "192.168.90.1/24")

	names := []string{lan.Name, node.Name, client.Name, pod.Name}
	pid := pod.Proc.PID()
	k.Cleanup()
	after := listNamespaces(t)
	for _, n := range names {
		assert.NotContains(t, after, n)
	}
	ended, _ := pod.Proc.Exited()
	assert.True(t, ended, "pod server %d still running", pid)
}

func TestSweepStaleRemovesNamespacesOfDeadRuns(t *testing.T) {
	Require(t)
	// A process that has exited: its pid is free.
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	stale := Prefix + strconv.Itoa(cmd.Process.Pid) + "-1-crashed"
	require.NoError(t, exec.Command("ip", "netns", "add", stale).Run())
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", stale).Run() })
	// A namespace of a live run (this one) must survive.
	k := New(t)
	live := k.Namespace("live")

	require.NoError(t, SweepStale())
	after := listNamespaces(t)
	assert.NotContains(t, after, stale)
	assert.Contains(t, after, live.Name)
}

// A pod plugged into a bridge must not change the bridge's MAC: neighbours
// would keep sending to the old one until their ARP entries expire.
func TestBridgeMACSurvivesNewPorts(t *testing.T) {
	k := New(t)
	node := k.Namespace("node")
	k.Bridge(node, "cbr0", netip.MustParsePrefix("10.244.1.1/24"))
	mac := func() string {
		return strings.TrimSpace(node.IP("-br", "link", "show", "cbr0"))
	}
	before := mac()
	for i := range 3 {
		pod := k.Namespace(fmt.Sprintf("pod%d", i))
		k.Plug(node, "cbr0", pod, "eth0", netip.MustParsePrefix(fmt.Sprintf("10.244.1.%d/24", 10+i)))
		assert.Equal(t, strings.Fields(before)[2], strings.Fields(mac())[2], "bridge MAC after plugging pod%d", i)
	}
}
