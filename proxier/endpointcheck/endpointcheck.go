// Package endpointcheck runs HAProxy's active checks of endpoints, for
// the Service ports that ask for them. Each checked endpoint is a server
// of a Dispatcher's checks backend, added and removed with the runtime
// API, so nothing reloads; no connection is ever sent to that backend.
// A Checker reads its servers' state back and says which endpoints the
// checks find down, for the proxier to leave them out of the maps.
//
// Servers added at runtime are lost when HAProxy reloads or restarts: the
// Checker finds them missing at its next poll and adds them again.
package endpointcheck

import (
	"context"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"maps"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// Target is one endpoint checked one way.
type Target struct {
	Endpoint netip.AddrPort
	Check    haproxycfg.EndpointCheck
}

// ServerName is the name of t's server: a hash of the endpoint and the
// check, so one endpoint checked the same way by several Service ports is
// one server, and a changed check is a new server.
func (t Target) ServerName() string {
	h := fnv.New64a()
	h.Write(t.Endpoint.AppendTo(nil))
	for _, o := range t.Check.ServerOptions() {
		h.Write([]byte{' '})
		h.Write([]byte(o))
	}
	return "ep-" + hex.EncodeToString(h.Sum(nil))
}

// PollInterval is how often a Checker reads its servers' state: it adds
// to the time an endpoint takes to leave or rejoin the maps.
const PollInterval = 200 * time.Millisecond

// Checker keeps the servers of one checks backend in line with its
// targets and reports which are down.
type Checker struct {
	api      runtimeapi.Interface
	backend  string
	onChange func()
	logger   logr.Logger

	mu      sync.Mutex
	targets map[string]Target
	// down holds the servers the checks last found down.
	down map[string]bool
	// present: the backend held servers at the last poll, so a poll is
	// needed even without targets (to delete them).
	present bool
}

// New returns a Checker of backend. onChange is called, from Run, when
// the set of endpoints found down changes.
func New(api runtimeapi.Interface, backend string, onChange func(), logger logr.Logger) *Checker {
	return &Checker{api: api, backend: backend, onChange: onChange, logger: logger,
		targets: map[string]Target{}, down: map[string]bool{}}
}

// SetTargets replaces what is checked. Servers follow at the next poll.
func (c *Checker) SetTargets(targets []Target) {
	next := make(map[string]Target, len(targets))
	for _, t := range targets {
		next[t.ServerName()] = t
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.targets = next
}

// Down reports whether the checks of t find its endpoint down. A target
// not checked yet is up, as readiness said.
func (c *Checker) Down(t Target) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down[t.ServerName()]
}

// Run polls every PollInterval until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	ticker := time.NewTicker(PollInterval)
	defer ticker.Stop()
	for {
		if err := c.Poll(ctx); err != nil && ctx.Err() == nil {
			c.logger.V(2).Info("Endpoint checks not polled", "backend", c.backend, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// Poll does one round: it reads the backend's servers, notes which
// targets are down, adds the servers of new targets (checks enabled,
// ready) and deletes those of old ones. It calls onChange when the
// endpoints found down changed.
func (c *Checker) Poll(ctx context.Context) error {
	c.mu.Lock()
	targets := c.targets
	idle := len(targets) == 0 && !c.present
	c.mu.Unlock()
	if idle {
		return nil
	}
	servers, err := c.api.ShowServers(ctx, c.backend)
	if err != nil {
		return err
	}
	have := make(map[string]runtimeapi.ServerStatus, len(servers))
	used := make(map[int]bool, len(servers))
	down := map[string]bool{}
	for _, s := range servers {
		have[s.Name] = s
		used[s.ID] = true
		if _, ok := targets[s.Name]; ok && s.OpState == 0 && s.State() != runtimeapi.StateMaint {
			down[s.Name] = true
		}
	}
	var b runtimeapi.Batch
	nextID := 1
	for name, t := range targets {
		if _, ok := have[name]; ok {
			continue
		}
		for used[nextID] {
			nextID++
		}
		used[nextID] = true
		b.AddServer(c.backend, runtimeapi.ServerSpec{Name: name, ID: nextID, Addr: t.Endpoint.Addr().Unmap().String(),
			Port: int(t.Endpoint.Port()), Options: t.Check.ServerOptions()})
		b.EnableHealth(c.backend, name)
		b.SetState(c.backend, name, runtimeapi.StateReady)
	}
	for name, s := range have {
		if _, ok := targets[name]; ok {
			continue
		}
		if s.State() != runtimeapi.StateMaint {
			b.SetState(c.backend, name, runtimeapi.StateMaint)
		}
		b.DelServer(c.backend, name)
	}
	var runErr error
	if b.Len() > 0 {
		runErr = c.api.Run(ctx, &b)
		if runErr != nil {
			runErr = errors.Join(errors.New("endpoint checks: "+strconv.Itoa(b.Len())+" runtime commands"), runErr)
		}
	}

	c.mu.Lock()
	// Targets set meanwhile are kept; their state comes at the next poll.
	c.present = len(servers) > 0 || b.Len() > 0
	changed := !maps.Equal(down, c.down)
	for name := range down {
		if !c.down[name] {
			c.logger.Info("Endpoint failed its checks: left out of its Services", "endpoint", targets[name].Endpoint.String(), "server", c.backend+"/"+name)
		}
	}
	for name := range c.down {
		if t, ok := targets[name]; ok && !down[name] {
			c.logger.Info("Endpoint passes its checks again", "endpoint", t.Endpoint.String(), "server", c.backend+"/"+name)
		}
	}
	c.down = down
	c.mu.Unlock()
	if changed && c.onChange != nil {
		c.onChange()
	}
	return runErr
}
