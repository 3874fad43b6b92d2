package apply

import (
	"errors"
	"fmt"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// portIndex validates the dispatchers of one IP family from one sync to
// the next the way haproxycfg.ValidateDispatcher does, in proportion to
// what changed: haproxycfg.Validate looks at every Service port (at
// 10,000 of them, tens of milliseconds per sync), while the proxier hands
// in the same, already validated objects for unchanged Service ports.
// Every new or changed Service port is validated on its own; the listener
// keys and endpoint set names, which must be unique in the dispatcher,
// are kept in indexes updated with what changed.
type portIndex struct {
	// d is the last dispatcher found valid, which the indexes describe;
	// nil: validate the next one whole.
	d *haproxycfg.Dispatcher
	// keys and sets map each listener key and endpoint set name to the
	// Service port that has it.
	keys, sets map[string]*haproxycfg.ServicePort
}

// check reports why d is not a valid dispatcher, or nil; the indexes then
// describe d.
func (x *portIndex) check(d *haproxycfg.Dispatcher) error {
	if d == nil {
		return errors.New("nil dispatcher")
	}
	if d == x.d {
		return nil
	}
	if x.d == nil {
		return x.whole(d)
	}
	before, after, ok := changedSorted(x.d.ServicePorts, d.ServicePorts)
	if !ok {
		before, after = changedByName(x.d.ServicePorts, d.ServicePorts)
	}
	if len(after) > len(d.ServicePorts)/4 {
		// Most of it changed: the indexes built again cost no more.
		return x.whole(d)
	}
	// Everything but the Service ports, which are checked below.
	settings := *d
	settings.ServicePorts = nil
	if err := haproxycfg.ValidateDispatcher(&settings); err != nil {
		return err
	}
	for _, sp := range after {
		if sp == nil {
			return errors.New("nil service port")
		}
		if err := d.ValidateServicePort(sp); err != nil {
			return fmt.Errorf("service port %q: %w", sp.Name, err)
		}
	}
	// Update the indexes, and undo on a conflict.
	type change struct {
		m   map[string]*haproxycfg.ServicePort
		k   string
		old *haproxycfg.ServicePort
	}
	var undo []change
	put := func(m map[string]*haproxycfg.ServicePort, k string, sp *haproxycfg.ServicePort) {
		undo = append(undo, change{m, k, m[k]})
		if sp == nil {
			delete(m, k)
		} else {
			m[k] = sp
		}
	}
	rollback := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			c := undo[i]
			if c.old == nil {
				delete(c.m, c.k)
			} else {
				c.m[c.k] = c.old
			}
		}
	}
	for _, sp := range before {
		for _, l := range sp.Listeners {
			if k := l.Key(); x.keys[k] == sp {
				put(x.keys, k, nil)
			}
		}
		for _, set := range sp.Sets() {
			if x.sets[set.Name] == sp {
				put(x.sets, set.Name, nil)
			}
		}
	}
	for _, sp := range after {
		for _, l := range sp.Listeners {
			k := l.Key()
			if owner := x.keys[k]; owner != nil {
				rollback()
				return fmt.Errorf("service port %q: listener %s already belongs to %q", sp.Name, k, owner.Name)
			}
			put(x.keys, k, sp)
		}
		for _, set := range sp.Sets() {
			if owner := x.sets[set.Name]; owner != nil {
				rollback()
				return fmt.Errorf("service port %q: endpoint set %q appears twice", sp.Name, set.Name)
			}
			put(x.sets, set.Name, sp)
		}
	}
	x.d = d
	return nil
}

// whole validates d with haproxycfg and builds the indexes.
func (x *portIndex) whole(d *haproxycfg.Dispatcher) error {
	x.d = nil
	if err := haproxycfg.ValidateDispatcher(d); err != nil {
		return err
	}
	x.keys = make(map[string]*haproxycfg.ServicePort, len(d.ServicePorts))
	x.sets = make(map[string]*haproxycfg.ServicePort, len(d.ServicePorts))
	for _, sp := range d.ServicePorts {
		for _, l := range sp.Listeners {
			x.keys[l.Key()] = sp
		}
		for _, set := range sp.Sets() {
			x.sets[set.Name] = sp
		}
	}
	x.d = d
	return nil
}

// validateModel validates want, a merged model: its settings and
// dispatchers with haproxycfg (Render), its Service ports with each
// family's portIndex. It returns the text of haproxy.cfg.
func (a *Applier) validateModel(want *haproxycfg.Config) ([]byte, error) {
	settings := *want
	settings.Dispatchers = make([]*haproxycfg.Dispatcher, len(want.Dispatchers))
	for i, d := range want.Dispatchers {
		if d == nil {
			return nil, errors.New("nil dispatcher")
		}
		x := a.indexes[d.IPv6]
		if x == nil {
			x = &portIndex{}
			a.indexes[d.IPv6] = x
		}
		if err := x.check(d); err != nil {
			return nil, fmt.Errorf("dispatcher %s: %w", familyLabel(d), err)
		}
		// haproxy.cfg does not depend on the Service ports.
		c := *d
		c.ServicePorts = nil
		settings.Dispatchers[i] = &c
	}
	return haproxycfg.Render(&settings)
}
