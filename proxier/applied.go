package proxier

import (
	"context"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// appliedLog wraps the Applier and remembers, per family, the last model
// HAProxy accepted and when each Service port last changed in it, for
// explain: the model the proxier handed over is what HAProxy should hold,
// and the time a port changed is the time it was applied. Unchanged
// Service ports stay the same object from sync to sync (see translate),
// so a change is a new pointer.
type appliedLog struct {
	next Applier
	// reloads counts HAProxy's reloads (nil: unknown).
	reloads func() int

	mu       sync.Mutex
	families map[v1.IPFamily]*appliedFamily
}

type appliedFamily struct {
	dispatcher *haproxycfg.Dispatcher
	ports      map[string]appliedPort
}

type appliedPort struct {
	port    *haproxycfg.ServicePort
	changed time.Time
	// reloaded: HAProxy reloaded while the change was applied (the count
	// is shared by both families, so a reload for the other family's
	// change shows too).
	reloaded bool
}

func newAppliedLog(next Applier, reloads func() int) *appliedLog {
	return &appliedLog{next: next, reloads: reloads, families: map[v1.IPFamily]*appliedFamily{}}
}

// Apply implements Applier.
func (l *appliedLog) Apply(ctx context.Context, family v1.IPFamily, desired *haproxycfg.Config) error {
	before := l.reloadCount()
	if err := l.next.Apply(ctx, family, desired); err != nil {
		return err
	}
	reloaded := l.reloadCount() != before
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// Updated in place: at 10,000 Service ports a new map per sync was a
	// third of kube-proxy's CPU for an endpoint change.
	f := l.families[family]
	if f == nil {
		f = &appliedFamily{ports: map[string]appliedPort{}}
		l.families[family] = f
	}
	total := 0
	for _, d := range desired.Dispatchers {
		f.dispatcher = d
		total += len(d.ServicePorts)
		for _, sp := range d.ServicePorts {
			if old, ok := f.ports[sp.Name]; ok && old.port == sp {
				continue
			}
			f.ports[sp.Name] = appliedPort{port: sp, changed: now, reloaded: reloaded}
		}
	}
	if len(f.ports) > total {
		keep := make(map[string]bool, total)
		for _, d := range desired.Dispatchers {
			for _, sp := range d.ServicePorts {
				keep[sp.Name] = true
			}
		}
		for name := range f.ports {
			if !keep[name] {
				delete(f.ports, name)
			}
		}
	}
	return nil
}

func (l *appliedLog) reloadCount() int {
	if l.reloads == nil {
		return 0
	}
	return l.reloads()
}

// SetServiceCIDRs implements ServiceCIDRObserver for an Applier that
// observes them.
func (l *appliedLog) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	if o, ok := l.next.(ServiceCIDRObserver); ok {
		o.SetServiceCIDRs(family, cidrs)
	}
}

// port returns the last applied state of a Service port of family, and
// the family's dispatcher (nil before the first Apply).
func (l *appliedLog) port(family v1.IPFamily, name string) (appliedPort, *haproxycfg.Dispatcher, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.families[family]
	if f == nil {
		return appliedPort{}, nil, false
	}
	p, ok := f.ports[name]
	return p, f.dispatcher, ok
}
