package proxier

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// TestDeadEndpointIsRedispatched stops the server of one of four pods
// while its EndpointSlice still lists it as ready (the seconds before
// readiness notices): every new connection is still served, by the
// other three, because a refused connect is retried on another endpoint
// of the set. A Service with ClientIP affinity keeps its clients too, on
// the endpoint the retry chose.
func TestDeadEndpointIsRedispatched(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11), tp.Pod("pod3", 12), tp.Pod("pod4", 13)}
	cpod := tp.Pod("cpod", 20).Namespace

	sticky := service("sticky", "10.96.0.11", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	sticky.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}

	p, _ := startProxier(t, tp.nodeConfig(t), false, serviceCIDR)
	p.OnServiceAdd(webService())
	p.OnServiceAdd(sticky)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pods...))
	p.OnEndpointSliceAdd(slice(sticky, "1", pods...))
	p.OnEndpointSlicesSynced()

	clusterURL := fmt.Sprintf("http://%s:80/", clusterIP)
	servedBy(t, tp.Client, clusterURL, "pod1", "pod2", "pod3", "pod4")

	// pod1's process dies; nothing tells the proxier.
	pods[0].Proc.Stop()
	require.Error(t, cpod.TCPAccepts(pods[0].IP.String()+":8080", 2*time.Second), "pod1 still accepts")

	for _, client := range []*netns.Namespace{tp.Client, cpod} {
		served := map[string]int{}
		failed := 0
		for range 200 {
			r, err := client.HTTPGetWith(clusterURL, netns.HTTPOptions{Timeout: 5 * time.Second})
			if err != nil {
				failed++
				continue
			}
			served[r.Name]++
		}
		assert.Zero(t, failed, "failed requests from %s (served: %v)", client.Short, served)
		assert.Zero(t, served["pod1"], "pod1 is dead")
		for _, name := range []string{"pod2", "pod3", "pod4"} {
			assert.Positive(t, served[name], "%s from %s: %v", name, client.Short, served)
		}
	}

	// Affinity: whichever endpoint a client was given, retried or not, it
	// keeps it.
	stickyURL := "http://10.96.0.11:80/"
	for _, client := range []*netns.Namespace{tp.Client, cpod} {
		first, err := client.HTTPGetWith(stickyURL, netns.HTTPOptions{Timeout: 5 * time.Second})
		require.NoError(t, err)
		assert.NotEqual(t, "pod1", first.Name)
		for range 30 {
			r, err := client.HTTPGetWith(stickyURL, netns.HTTPOptions{Timeout: 5 * time.Second})
			require.NoError(t, err)
			assert.Equal(t, first.Name, r.Name, "client %s moved", client.Short)
		}
	}
}
