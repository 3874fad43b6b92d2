package keepalived

import (
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/internal/kit"
)

func dualStack() Config {
	return Config{
		Name:      "lb1",
		Interface: "eth0",
		RouterID:  51,
		VIPs:      []netip.Prefix{netip.MustParsePrefix("192.168.50.10/24"), netip.MustParsePrefix("fd00:50::10/64")},
	}
}

func TestRenderDualStack(t *testing.T) {
	out, err := Render(dualStack())
	require.NoError(t, err)
	want := `# keepalived.conf of the kube-haproxy load balancer lb1: generated, do not edit.
global_defs {
  router_id lb1
  vrrp_version 3
  enable_script_security
  script_user root
}

vrrp_script kube_haproxy_check {
  script "/etc/keepalived/check-kube-haproxy.sh 10400 127.0.0.1:10256 30"
  interval 1
  timeout 2
  fall 2
  rise 2
}

vrrp_instance kube_haproxy {
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority 100
  advert_int 0.50
  virtual_ipaddress {
    192.168.50.10/24 dev eth0
  }
  virtual_ipaddress_excluded {
    fd00:50::10/64 dev eth0
  }
  track_script {
    kube_haproxy_check
  }
}
`
	assert.Equal(t, want, string(out))
}

func TestRenderUnicastIPv6(t *testing.T) {
	c := dualStack()
	c.UnicastSource = netip.MustParseAddr("fd00:50::2")
	c.UnicastPeers = []netip.Addr{netip.MustParseAddr("fd00:50::3")}
	out, err := Render(c)
	require.NoError(t, err)
	s := string(out)
	assert.Contains(t, s, "  unicast_src_ip fd00:50::2\n  unicast_peer {\n    fd00:50::3\n  }\n")
	assert.Contains(t, s, "  virtual_ipaddress {\n    fd00:50::10/64 dev eth0\n  }\n  virtual_ipaddress_excluded {\n    192.168.50.10/24 dev eth0\n  }\n")
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Interface = "eth0\n  script_user nobody" }, "interface"},
		{func(c *Config) { c.Name = "" }, "name"},
		{func(c *Config) { c.CheckScript = "check.sh" }, "absolute path"},
		{func(c *Config) { c.CheckScript = "/bin/sh -c reboot" }, "checkScript"},
		{func(c *Config) { c.RouterID = 0 }, "routerID"},
		{func(c *Config) { c.Priority = 255 }, "priority"},
		{func(c *Config) { c.VIPs = nil }, "vips: none"},
		{func(c *Config) { c.VIPs = append(c.VIPs, netip.MustParsePrefix("192.168.50.11/24")) }, "more than one IPv4"},
		{func(c *Config) { c.UnicastPeers = []netip.Addr{netip.MustParseAddr("192.168.50.3")} }, "unicastSource"},
		{func(c *Config) {
			c.UnicastSource = netip.MustParseAddr("192.168.50.2")
			c.UnicastPeers = []netip.Addr{netip.MustParseAddr("fd00:50::3")}
		}, "not of the family"},
		{func(c *Config) { c.AdvertInterval = 1 }, "advertInterval"},
	} {
		c := dualStack()
		tc.mod(&c)
		_, err := Render(c)
		assert.ErrorContains(t, err, tc.want)
	}
}

// keepalived itself accepts what Render writes.
func TestKeepalivedAcceptsTheConfig(t *testing.T) {
	bin := kit.Command(t, "keepalived")
	dir := t.TempDir()
	script := filepath.Join(dir, "check.sh")
	require.NoError(t, os.WriteFile(script, CheckScript, 0o755))
	c := dualStack()
	c.CheckScript = script
	out, err := Render(c)
	require.NoError(t, err)
	conf := filepath.Join(dir, "keepalived.conf")
	require.NoError(t, os.WriteFile(conf, out, 0o644))
	log := filepath.Join(dir, "config-test.log")
	res, err := exec.Command(bin, "--config-test="+log, "--use-file", conf).CombinedOutput()
	logText, _ := os.ReadFile(log)
	require.NoError(t, err, "keepalived --config-test: %s %s", res, logText)
}

// The check passes only when both HAProxy's dispatch port accepts and
// kube-proxy's /healthz answers 200.
func TestCheckScript(t *testing.T) {
	kit.Command(t, "timeout")
	dir := t.TempDir()
	script := filepath.Join(dir, "check.sh")
	require.NoError(t, os.WriteFile(script, CheckScript, 0o755))

	dispatch, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer dispatch.Close()
	go func() {
		for {
			c, err := dispatch.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var healthy bool
	healthz, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || !healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(healthz)
	defer srv.Close()

	port := strconv.Itoa(dispatch.Addr().(*net.TCPAddr).Port)
	// A kube-proxy never seen healthy gets no grace.
	healthy = false
	out0, err := exec.Command(script, port, healthz.Addr().String(), "30").CombinedOutput()
	assert.Error(t, err, "no grace before kube-proxy was ever healthy: %s", out0)
	assert.Contains(t, string(out0), "never healthy yet")
	healthy = true
	run := func(port string, grace ...string) (bool, string) {
		out, err := exec.Command(script, append([]string{port, healthz.Addr().String()}, grace...)...).CombinedOutput()
		return err == nil, strings.TrimSpace(string(out))
	}
	ok, out := run(port)
	assert.True(t, ok, out)

	healthy = false
	ok, out = run(port)
	assert.False(t, ok)
	assert.Contains(t, out, "/healthz")
	assert.Contains(t, out, "503")

	// Within the grace a failing kube-proxy keeps the address here (its
	// HAProxy serves); past it, it does not; answering again resets it.
	ok, out = run(port, "2")
	assert.True(t, ok, "within the grace: %s", out)
	assert.Contains(t, out, "within the grace of 2s")
	time.Sleep(2100 * time.Millisecond)
	ok, out = run(port, "2")
	assert.False(t, ok, "past the grace: %s", out)
	healthy = true
	ok, out = run(port, "2")
	assert.True(t, ok, out)
	healthy = false
	ok, out = run(port, "2")
	assert.True(t, ok, "a new failure starts a new grace: %s", out)

	healthy = true
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedPort := strconv.Itoa(closed.Addr().(*net.TCPAddr).Port)
	closed.Close()
	ok, out = run(closedPort)
	assert.False(t, ok)
	assert.Contains(t, out, "HAProxy does not accept")
}
