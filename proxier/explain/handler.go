package explain

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// PathPrefix is where the Handler serves, on kube-proxy's metrics address:
// GET PathPrefix + "<namespace>/<name>".
const PathPrefix = "/haproxy/explain/"

// Explainer explains a Service; found is false when no family serves a
// Service of that name (unknown, headless, ExternalName, or another
// proxy's).
type Explainer interface {
	Explain(ctx context.Context, namespace, name string) (s *Service, found bool)
}

// Handler serves e's explanations: text by default, JSON with
// ?format=json or "Accept: application/json".
func Handler(e Explainer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		rest, ok := strings.CutPrefix(r.URL.Path, PathPrefix)
		ns, name, ok2 := strings.Cut(rest, "/")
		// Namespaces and Service names are DNS labels: anything else names
		// no Service, and is not echoed back.
		if !ok || !ok2 || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Label(name)) > 0 {
			http.Error(w, "usage: GET "+PathPrefix+"<namespace>/<name>[?format=json]", http.StatusBadRequest)
			return
		}
		s, found := e.Explain(r.Context(), ns, name)
		asJSON := r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json")
		if !found {
			http.Error(w, "Service "+ns+"/"+name+" is not served by this kube-proxy (unknown, headless, ExternalName, or left to another proxy)", http.StatusNotFound)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if asJSON {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(s)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_ = WriteText(w, s, time.Now())
	})
}
