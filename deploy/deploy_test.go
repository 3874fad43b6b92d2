// Package deploy holds the manifests of the three deployments (node.yaml,
// cluster.yaml, external.yaml). Its tests check them against the real
// kube-apiserver and the built kube-proxy: every object is accepted
// (server-side dry run), each account may do what its component does and
// nothing more, kube-proxy accepts each embedded configuration, and the
// shipped keepalived.conf is what keepalived-config renders.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/keepalived"
)

var scopes = []string{"node", "cluster", "external"}

// objects reads the documents of a manifest.
func objects(t *testing.T, scope string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(scope + ".yaml")
	require.NoError(t, err)
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err, "%s.yaml", scope)
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func configMapData(t *testing.T, scope, key string) string {
	t.Helper()
	for _, u := range objects(t, scope) {
		if u.GetKind() == "ConfigMap" {
			v, _, err := unstructured.NestedString(u.Object, "data", key)
			require.NoError(t, err)
			require.NotEmpty(t, v, "%s.yaml: ConfigMap has no %s", scope, key)
			return v
		}
	}
	t.Fatalf("%s.yaml has no ConfigMap", scope)
	return ""
}

// TestManifestsOnARealAPIServer: every object is accepted by
// kube-apiserver (server-side dry run, with admission), and each
// ServiceAccount is allowed what its component does and refused the
// rest, by the real RBAC authorizer.
func TestManifestsOnARealAPIServer(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Config{ServiceClusterIPRange: "10.96.0.0/16"})
	dyn, err := dynamic.NewForConfig(cp.RESTConfig)
	require.NoError(t, err)
	disc, err := discovery.NewDiscoveryClientForConfig(cp.RESTConfig)
	require.NoError(t, err)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))

	for _, scope := range scopes {
		t.Run(scope, func(t *testing.T) {
			for _, u := range objects(t, scope) {
				gvk := u.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				require.NoError(t, err, "%s %s", gvk, u.GetName())
				r := dyn.Resource(m.Resource).Namespace(u.GetNamespace())
				opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
				if gvk.Group == "rbac.authorization.k8s.io" {
					// RBAC is created for real, to ask the authorizer
					// below (replacing another manifest's of that name).
					_ = r.Delete(t.Context(), u.GetName(), metav1.DeleteOptions{})
					opts = metav1.CreateOptions{}
				}
				_, err = r.Create(t.Context(), u, opts)
				require.NoError(t, err, "%s.yaml: %s %s/%s refused", scope, u.GetKind(), u.GetNamespace(), u.GetName())
			}
			may := func(sa string, attrs authorizationv1.ResourceAttributes) bool {
				sar, err := cp.Client.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User:               "system:serviceaccount:kube-system:" + sa,
						Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"},
						ResourceAttributes: &attrs,
					},
				}, metav1.CreateOptions{})
				require.NoError(t, err)
				return sar.Status.Allowed
			}
			proxy := "kube-haproxy-" + scope
			for _, a := range []authorizationv1.ResourceAttributes{
				{Verb: "list", Resource: "services"},
				{Verb: "watch", Resource: "services"},
				{Verb: "list", Group: "discovery.k8s.io", Resource: "endpointslices"},
				{Verb: "list", Group: "networking.k8s.io", Resource: "servicecidrs"},
				{Verb: "get", Resource: "nodes", Name: "node1"},
				{Verb: "create", Group: "events.k8s.io", Resource: "events", Namespace: "default"},
			} {
				assert.True(t, may(proxy, a), "%s may not %s %s", proxy, a.Verb, a.Resource)
			}
			for _, a := range []authorizationv1.ResourceAttributes{
				{Verb: "update", Resource: "services", Subresource: "status", Namespace: "default"},
				{Verb: "create", Resource: "services", Namespace: "default"},
				{Verb: "get", Resource: "secrets", Namespace: "kube-system"},
				{Verb: "list", Resource: "pods"},
				{Verb: "update", Resource: "nodes", Name: "node1"},
			} {
				assert.False(t, may(proxy, a), "%s may %s %s/%s", proxy, a.Verb, a.Resource, a.Subresource)
			}
			if scope == "node" {
				return
			}
			const lbc = "kube-haproxy-lb-controller"
			for _, a := range []authorizationv1.ResourceAttributes{
				{Verb: "list", Resource: "services"},
				{Verb: "update", Resource: "services", Subresource: "status", Namespace: "default", Name: "web"},
				{Verb: "create", Resource: "events", Namespace: "default"},
				{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system"},
				{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system", Name: lbc},
			} {
				assert.True(t, may(lbc, a), "%s may not %s %s/%s", lbc, a.Verb, a.Resource, a.Subresource)
			}
			for _, a := range []authorizationv1.ResourceAttributes{
				{Verb: "update", Resource: "services", Namespace: "default", Name: "web"},
				{Verb: "delete", Resource: "services", Namespace: "default", Name: "web"},
				{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system", Name: "kube-scheduler"},
				{Verb: "list", Group: "discovery.k8s.io", Resource: "endpointslices"},
				{Verb: "get", Resource: "secrets", Namespace: "kube-system"},
			} {
				assert.False(t, may(lbc, a), "%s may %s %s %s", lbc, a.Verb, a.Resource, a.Name)
			}
		})
	}
}

// TestKubeProxyAcceptsEachConfiguration runs the built kube-proxy on the
// KubeProxyConfiguration of each manifest: it must parse and validate it,
// and keep the scope and the external HAProxy process.
func TestKubeProxyAcceptsEachConfiguration(t *testing.T) {
	bin := controlplane.Binary(t, "kube-proxy")
	for _, scope := range scopes {
		t.Run(scope, func(t *testing.T) {
			dir := t.TempDir()
			config := filepath.Join(dir, "config.conf")
			require.NoError(t, os.WriteFile(config, []byte(configMapData(t, scope, "config.conf")), 0o600))
			written := filepath.Join(dir, "written.yaml")
			out, err := exec.Command(bin, "--config="+config, "--write-config-to="+written).CombinedOutput()
			require.NoError(t, err, "kube-proxy refused the %s configuration:\n%s", scope, out)
			data, err := os.ReadFile(written)
			require.NoError(t, err)
			var got struct {
				Mode    string `json:"mode"`
				HAProxy struct {
					Scope         string `json:"scope"`
					ManageProcess bool   `json:"manageProcess"`
				} `json:"haproxy"`
			}
			require.NoError(t, yaml.Unmarshal(data, &got))
			assert.Equal(t, "haproxy", got.Mode)
			assert.Equal(t, scope, got.HAProxy.Scope)
			assert.False(t, got.HAProxy.ManageProcess, "HAProxy runs in a container of its own")
		})
	}
}

// TestShippedKeepalivedConfig: the keepalived.conf of the central
// manifests is what keepalived-config renders for the flags its comment
// gives, so regenerating it is one command.
func TestShippedKeepalivedConfig(t *testing.T) {
	want, err := keepalived.Render(keepalived.Config{
		Name:      "kube-haproxy-lb",
		Interface: "eth0",
		RouterID:  51,
		VIPs:      []netip.Prefix{netip.MustParsePrefix("192.168.50.10/24")},
	})
	require.NoError(t, err)
	for _, scope := range []string{"cluster", "external"} {
		manifest, err := os.ReadFile(scope + ".yaml")
		require.NoError(t, err)
		assert.Contains(t, string(manifest), "# keepalived-config -name kube-haproxy-lb -interface eth0 -router-id 51 -vip 192.168.50.10/24\n")
		assert.Equal(t, string(want), configMapData(t, scope, "keepalived.conf"), scope)
	}
	node, err := os.ReadFile("node.yaml")
	require.NoError(t, err)
	assert.False(t, bytes.Contains(node, []byte("keepalived")), "scope node has no VRRP pair")
	assert.True(t, strings.HasPrefix(string(want), "# keepalived.conf"))
}
