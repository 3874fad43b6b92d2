package translate

import (
	"cmp"
	"maps"
	"reflect"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/kubernetes/pkg/proxy"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Translator is Translate for a proxier that syncs again and again: it
// keeps the translation of each service port and translates again only
// the service ports whose Service or endpoints changed since, so an
// endpoint change among 10,000 Services costs one Service's translation
// instead of all of them.
//
// It relies on how upstream's change trackers update their maps: a
// Service or endpoint change replaces the proxy.ServicePort or the
// []proxy.Endpoint of the service ports it touches with new values and
// leaves every other one as it was, so identity says "unchanged". The
// zero value is ready to use; it is not safe for concurrent use.
type Translator struct {
	opts Options
	// names are the service ports of the last call, sorted, and ports
	// their translations (nil: none yet).
	names []proxy.ServicePortName
	ports []*portTranslation
	// listeners is reused from call to call.
	listeners map[string]string
}

// Translate returns what Translate(opts, services, endpoints) returns.
// The haproxycfg.ServicePorts of unchanged service ports are the ones of
// the previous call: callers must not modify a Result.
//
// A change of opts translates everything again, except a change of
// TakenNodePorts (the node's listening ports, which come and go with its
// processes): that translates again only the service ports whose NodePort
// was taken and is free now, or the other way round.
func (t *Translator) Translate(opts Options, services proxy.ServicePortMap, endpoints proxy.EndpointsMap) *Result {
	if t.ports == nil || !sameOptions(opts, t.opts) {
		t.ports = make([]*portTranslation, 0, len(services))
		t.names = nil
	}
	t.opts = opts
	// A copy, so that a caller changing its map in place is still seen
	// to change the options.
	t.opts.TopologyLabels = maps.Clone(opts.TopologyLabels)
	if len(t.names) == len(services) {
		if res, ok := t.translate(services, endpoints); ok {
			return res
		}
	}
	// Service ports came or went: sort the names again, keeping the
	// translations of those that stay.
	old := make(map[proxy.ServicePortName]*portTranslation, len(t.names))
	for i, n := range t.names {
		old[n] = t.ports[i]
	}
	t.names = t.names[:0]
	for name := range services {
		t.names = append(t.names, name)
	}
	slices.SortFunc(t.names, compareServicePortNames)
	t.ports = t.ports[:0]
	for _, n := range t.names {
		t.ports = append(t.ports, old[n])
	}
	res, _ := t.translate(services, endpoints)
	return res
}

// TranslateEndpointChanges is Translate for a sync in which no Service
// was added, changed or removed, and only the endpoints of the Services in
// changed may differ from the last call (upstream's
// UpdateServiceMapResult was empty, and changed is the
// UpdateEndpointsMapResult's UpdatedServices). It translates again only
// the service ports of those Services, found by binary search, so an
// endpoint change costs work in proportion to its Service and a copy of
// the list of translations, not a lookup of every Service. When the
// options or the Services are not those of the last call, it is
// Translate.
func (t *Translator) TranslateEndpointChanges(opts Options, services proxy.ServicePortMap, endpoints proxy.EndpointsMap, changed sets.Set[types.NamespacedName]) *Result {
	if t.ports == nil || len(t.names) != len(services) || !sameOptions(opts, t.opts) ||
		!maps.Equal(opts.TakenNodePorts, t.opts.TakenNodePorts) {
		return t.Translate(opts, services, endpoints)
	}
	t.opts.TakenNodePorts = opts.TakenNodePorts
	t.opts.RoutedHere = opts.RoutedHere
	for nn := range changed {
		i, _ := slices.BinarySearchFunc(t.names, nn, func(n proxy.ServicePortName, nn types.NamespacedName) int {
			return cmp.Or(strings.Compare(n.Namespace, nn.Namespace), strings.Compare(n.Name, nn.Name))
		})
		for ; i < len(t.names) && t.names[i].NamespacedName == nn; i++ {
			name, pt := t.names[i], t.ports[i]
			svc, ok := services[name]
			if !ok || pt == nil || pt.svc != svc {
				// Not the Services of the last call after all.
				return t.Translate(opts, services, endpoints)
			}
			eps := endpoints[name]
			if sameEndpoints(pt.eps, eps) {
				continue
			}
			// The Service is unchanged, so its listeners meet the owners
			// they met last time: those claims are all it needs to see.
			listeners := make(map[string]string, len(pt.claims))
			for _, c := range pt.claims {
				if c.owner != "" {
					listeners[c.key] = c.owner
				}
			}
			t.ports[i] = translatePort(t.opts, name, svc, eps, listeners)
		}
	}
	res := &Result{ServicePorts: make([]*haproxycfg.ServicePort, 0, len(t.ports))}
	for _, pt := range t.ports {
		res.add(&pt.res)
	}
	return res
}

// translate translates the service ports of t.names, which must be those
// of services (false if one is not).
func (t *Translator) translate(services proxy.ServicePortMap, endpoints proxy.EndpointsMap) (*Result, bool) {
	res := &Result{ServicePorts: make([]*haproxycfg.ServicePort, 0, len(t.names))}
	// The map of the last call, emptied: no rehashing as it fills.
	if t.listeners == nil {
		t.listeners = make(map[string]string, len(t.names))
	}
	listeners := t.listeners
	clear(listeners)
	for i, name := range t.names {
		svc, ok := services[name]
		if !ok {
			return nil, false
		}
		eps := endpoints[name]
		pt := t.ports[i]
		if pt == nil || !pt.reuse(svc, eps, t.opts.TakenNodePorts, listeners) {
			pt = translatePort(t.opts, name, svc, eps, listeners)
			t.ports[i] = pt
		}
		res.add(&pt.res)
	}
	return res, true
}

// portTranslation is the translation of one service port and what it was
// made from: the Service, the endpoints and who had the addresses it
// asked for (the other service ports before it in name order).
type portTranslation struct {
	base   string
	svc    proxy.ServicePort
	eps    []proxy.Endpoint
	claims []listenerClaim
	// nodePort is the service port's NodePort (0: none), and nodePortTaken
	// whether it was in Options.TakenNodePorts.
	nodePort      uint16
	nodePortTaken bool
	res           Result
}

// reuse says whether pt still is the translation of svc and eps, and if
// so claims its addresses as translating again would: in the same order,
// each against the owner it found then. Otherwise listeners is left as it
// was.
func (pt *portTranslation) reuse(svc proxy.ServicePort, eps []proxy.Endpoint, taken map[uint16]bool, listeners map[string]string) bool {
	if pt.svc != svc || !sameEndpoints(pt.eps, eps) {
		return false
	}
	if pt.nodePort != 0 && taken[pt.nodePort] != pt.nodePortTaken {
		return false
	}
	for i, c := range pt.claims {
		if listeners[c.key] != c.owner {
			// Undo the claims of this call: their keys were free.
			for _, u := range pt.claims[:i] {
				if u.owner == "" {
					delete(listeners, u.key)
				}
			}
			return false
		}
		if c.owner == "" {
			listeners[c.key] = pt.base
		}
	}
	return true
}

// sameOptions reports whether a and b translate every service port alike;
// TakenNodePorts, which touches only some, is compared port by port, and
// RoutedHere not at all (see Options).
func sameOptions(a, b Options) bool {
	a.TakenNodePorts, b.TakenNodePorts = nil, nil
	a.RoutedHere, b.RoutedHere = nil, nil
	return reflect.DeepEqual(a, b)
}

// sameEndpoints: the same slice, not only equal content.
func sameEndpoints(a, b []proxy.Endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// translatePort translates one service port on its own.
func translatePort(opts Options, name proxy.ServicePortName, svc proxy.ServicePort, eps []proxy.Endpoint, listeners map[string]string) *portTranslation {
	pt := &portTranslation{svc: svc, eps: eps}
	if svc.Protocol() == v1.ProtocolTCP {
		pt.base = BaseName(opts.Family, name, svc.Port())
	}
	if np, ok := validPort(svc.NodePort()); ok {
		pt.nodePort, pt.nodePortTaken = np, opts.TakenNodePorts[np]
	}
	translateServicePort(opts, name, svc, eps, listeners, &pt.res, &pt.claims)
	return pt
}

// add appends the translation of one service port.
func (r *Result) add(p *Result) {
	r.ServicePorts = append(r.ServicePorts, p.ServicePorts...)
	r.Skipped = append(r.Skipped, p.Skipped...)
	r.BadEndpoints += p.BadEndpoints
	r.NoLocalEndpointsInternal += p.NoLocalEndpointsInternal
	r.NoLocalEndpointsExternal += p.NoLocalEndpointsExternal
}
