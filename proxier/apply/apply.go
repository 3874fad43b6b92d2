// Package apply makes a running HAProxy serve the desired configuration
// model, choosing the cheapest safe way for each change.
//
// Endpoint changes, the frequent case, go through the runtime API and never
// cost a reload: a new endpoint is added with an explicit, stable id and set
// ready; an endpoint that goes away is set to drain (no new connections),
// and once its connections are gone or DrainTimeout has passed it is put in
// maintenance, its sessions are shut down and it is deleted.
//
// The proxier is the only writer of HAProxy's servers, so the Applier keeps
// its own record of what HAProxy has loaded, updated from each successful
// runtime update and each reload, instead of reading every server back at
// every sync (at 100,000 servers that read costs more than the change).
// The record is read again from the runtime API whenever it may be wrong:
// after an adopt, a failed command or reload, at each Resync (e.g. after
// HAProxy restarted), and at least every FullReadInterval, so that a server
// changed behind the proxier's back is repaired at the next sync after it.
// Session counts are read only for the backends that lose a server.
//
// Any other change (a frontend, bind, ACL, backend or global setting) is
// structural: the whole model is rendered with every current endpoint as a
// real server line (stable names and ids; nothing depends on a server-state
// file), validated with "haproxy -c", written atomically (temporary file,
// rename) and loaded with a reload through the master CLI, confirmed from
// "show proc". A configuration that fails validation, or a reload that
// fails, is never retried blindly: the last good configuration keeps
// serving (and is put back on disk), an event and a metric say why, and the
// same structure is tried again only after a backoff; a different one is
// tried at once.
package apply

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// Process is the HAProxy process as the applier needs it; a
// *supervisor.Supervisor is one.
type Process interface {
	// Adopt reports whether an HAProxy already runs (and watches it).
	Adopt(ctx context.Context) (bool, error)
	// Start runs HAProxy on the configuration file.
	Start(ctx context.Context) error
	// Reload loads the configuration file into the running HAProxy and
	// confirms it; an error means the previous configuration keeps serving.
	Reload(ctx context.Context) error
}

// ReloadHooks run around each structural change: BeforeReload with the
// configuration about to be loaded (e.g. make its bind addresses local),
// AfterReload with the one now loaded (e.g. remove what the previous one
// needed). An error from BeforeReload aborts the change.
type ReloadHooks interface {
	BeforeReload(ctx context.Context, next *haproxycfg.Config) error
	AfterReload(ctx context.Context, loaded *haproxycfg.Config) error
}

// Options configure an Applier.
type Options struct {
	// ConfigFile is the haproxy.cfg HAProxy reads.
	ConfigFile string
	// Binary is the haproxy executable, used for "haproxy -c".
	Binary string
	// Runtime is the runtime API of the HAProxy.
	Runtime runtimeapi.Interface
	// Process starts and reloads HAProxy.
	Process Process
	// Families are the IP families whose proxiers share this HAProxy. No
	// structural change is made before each has handed its first model,
	// so an adopted HAProxy never loses the listeners of a family whose
	// proxier has not synced yet.
	Families []v1.IPFamily
	// Validate checks a configuration file; default: "haproxy -c -f".
	Validate func(ctx context.Context, file string) error
	// DrainTimeout bounds how long a removed endpoint keeps its
	// connections before they are shut down and the server deleted.
	DrainTimeout time.Duration
	// DrainCheckInterval is how often draining servers are looked at, to
	// delete them as soon as their last connection is gone.
	DrainCheckInterval time.Duration
	// FileLimit is the file-descriptor limit HAProxy runs with (0: not
	// known). A model without a global maxconn gets the largest one its
	// listeners leave room for; a structure that does not fit is rejected
	// like one "haproxy -c" refuses, and the last good one keeps serving.
	FileLimit int
	// FullReadInterval bounds how long the record of HAProxy's servers is
	// trusted without reading them back: a sync after it reads every
	// server again, which repairs changes made by someone else.
	FullReadInterval time.Duration
	// RetryBackoff is the first delay before the same rejected structure
	// is tried again; it doubles up to MaxRetryBackoff.
	RetryBackoff, MaxRetryBackoff time.Duration
	// Hooks, when set, run around each structural change.
	Hooks ReloadHooks
	// Recorder and NodeName: events about rejected configurations are
	// recorded on the Node, as kube-proxy records its own.
	Recorder events.EventRecorder
	NodeName string
	// Clock, for tests; default the real clock.
	Clock  clock.WithDelayedExecution
	Logger klog.Logger
}

func (o *Options) setDefaults() {
	if o.Validate == nil {
		bin := o.Binary
		o.Validate = func(ctx context.Context, file string) error { return validateWithBinary(ctx, bin, file) }
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.DrainCheckInterval == 0 {
		o.DrainCheckInterval = time.Second
	}
	if o.FullReadInterval == 0 {
		o.FullReadInterval = time.Minute
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = 10 * time.Second
	}
	if o.MaxRetryBackoff == 0 {
		o.MaxRetryBackoff = 5 * time.Minute
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// ErrRejected wraps every error that means "HAProxy keeps serving the last
// good configuration": validation failed, the reload failed, or the same
// structure was rejected recently and its retry backoff has not passed.
var ErrRejected = errors.New("HAProxy configuration not loaded")

// Applier implements the proxier's Applier for one HAProxy shared by the
// proxiers of every IP family.
type Applier struct {
	opts   Options
	logger klog.Logger

	mu sync.Mutex
	// desired is the latest model of each family.
	desired map[v1.IPFamily]*haproxycfg.Config
	// started: HAProxy runs (adopted or started by us).
	started bool
	// autoMaxConn: the current model's maxconn was fitted to FileLimit.
	autoMaxConn bool
	// loadedKey is the structural key of the configuration HAProxy has
	// loaded ("" when unknown: the next sync reloads).
	loadedKey string
	// clones are the copies of the backends of the last merged model (see
	// cloneBackends).
	clones map[*haproxycfg.Backend]*haproxycfg.Backend
	// lastModel is the last model written (ids are kept from it), and
	// lastModelKey its structural key.
	lastModel    *haproxycfg.Config
	lastModelKey string
	// loaded is the record of the servers HAProxy has loaded (nil:
	// unknown, read them at the next sync); lastRead is when it was last
	// read from or made equal to HAProxy (a reload).
	loaded   *loadedState
	lastRead time.Time
	// lastGood is the content of the file HAProxy last loaded successfully.
	lastGood []byte
	// spare is memory for the next rendering after a runtime update (a
	// former lastGood): at 100,000 servers the text is megabytes.
	spare []byte
	// rejectedKey/rejectedErr/retryAt/backoff remember the last rejected
	// structure, so it is not retried before retryAt.
	rejectedKey string
	rejectedErr error
	retryAt     time.Time
	backoff     time.Duration
	// draining maps backend/server to when it was set to drain.
	draining map[string]time.Time
	// timer re-applies the stored models to finish drains.
	timer clock.Timer
	// reloads counts successful reloads, for tests.
	reloads int
	// stopped: Stop was called; nothing touches HAProxy any more.
	stopped bool
}

// ErrStopped is returned by Apply and Resync after Stop.
var ErrStopped = errors.New("apply: stopped")

// Stop makes the Applier leave HAProxy alone from now on (pending drain
// checks included), as when kube-proxy shuts down: HAProxy keeps serving
// what it has.
func (a *Applier) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// New returns an Applier. Nothing touches HAProxy before the first Apply.
func New(opts Options) (*Applier, error) {
	opts.setDefaults()
	if opts.ConfigFile == "" || opts.Runtime == nil || opts.Process == nil {
		return nil, errors.New("apply: ConfigFile, Runtime and Process are required")
	}
	if len(opts.Families) == 0 {
		return nil, errors.New("apply: at least one IP family is required")
	}
	registerMetrics()
	return &Applier{
		opts:     opts,
		logger:   opts.Logger,
		desired:  map[v1.IPFamily]*haproxycfg.Config{},
		draining: map[string]time.Time{},
	}, nil
}

// Reloads returns how many reloads (and starts) this Applier made.
func (a *Applier) Reloads() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reloads
}

// Apply implements the proxier's Applier: it records family's model and
// makes HAProxy serve the merge of every family's latest model.
func (a *Applier) Apply(ctx context.Context, family v1.IPFamily, desired *haproxycfg.Config) error {
	if !slices.Contains(a.opts.Families, family) {
		return fmt.Errorf("apply: IP family %s is not served by this HAProxy", family)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.desired[family] = desired
	return a.syncLocked(ctx, false)
}

// Resync reads back every server HAProxy has loaded and applies the stored
// models again, e.g. after HAProxy was restarted (servers added at runtime
// are then gone).
func (a *Applier) Resync(ctx context.Context) error {
	return a.resync(ctx, true)
}

func (a *Applier) resync(ctx context.Context, fullRead bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.desired) == 0 {
		return nil
	}
	return a.syncLocked(ctx, fullRead)
}

func (a *Applier) syncLocked(ctx context.Context, fullRead bool) error {
	if a.stopped {
		return ErrStopped
	}
	for _, f := range a.opts.Families {
		if a.desired[f] == nil {
			a.logger.V(2).Info("Waiting for the model of every IP family before changing HAProxy", "missing", f)
			return nil
		}
	}
	parts := make([]*haproxycfg.Config, 0, len(a.opts.Families))
	for _, f := range a.opts.Families {
		parts = append(parts, a.desired[f])
	}
	merged, err := haproxycfg.Merge(parts...)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	want := a.cloneBackends(merged)
	a.autoMaxConn = a.opts.FileLimit > 0 && want.Global.MaxConn == 0
	if a.autoMaxConn {
		// HAProxy refuses to start when its listeners and maxconn need
		// more descriptors than it may open: fit maxconn to what the
		// listeners leave (each new Service takes one or more).
		want.Global.MaxConn = haproxycfg.MaxConnForFileLimit(a.opts.FileLimit, want.Binds())
	}
	if want.Global.StatsSocket == "" {
		// Without it every endpoint change would cost a reload.
		configRejectedTotal.WithLabelValues("model").Inc()
		return fmt.Errorf("%w: invalid model: the global section has no stats socket for the runtime API", ErrRejected)
	}

	if !a.started {
		adopted, err := a.opts.Process.Adopt(ctx)
		if err != nil {
			return fmt.Errorf("apply: looking for a running HAProxy: %w", err)
		}
		if adopted {
			a.started = true
			a.loaded = nil
			a.adoptLoadedKey()
		}
	}

	// What HAProxy runs now (nothing when it does not run yet).
	var loaded *loadedState
	if a.started {
		now := a.opts.Clock.Now()
		if a.loaded == nil || fullRead || now.Sub(a.lastRead) >= a.opts.FullReadInterval {
			a.loaded = nil
			read, err := a.readLoaded(ctx)
			if err != nil {
				// HAProxy may be restarting; it comes back with the file,
				// whose structure is still loadedKey, so keep it.
				a.logger.Error(err, "Reading the servers HAProxy has loaded failed; reloading instead")
			} else {
				a.loaded, a.lastRead = read, now
			}
		}
		loaded = a.loaded
	}
	a.assignIDs(want, loaded)

	// The common case, only servers changed: change them through the
	// runtime API first (that is the delay a user sees), then render and
	// write the file.
	if a.started && loaded != nil && a.loadedKey != "" && a.lastModel != nil &&
		a.lastModelKey == a.loadedKey && sameStructure(want, a.lastModel) {
		// Everything else was validated with the last model, and so
		// were the backends it shares (their ids come from HAProxy or
		// are new, unique either way).
		for i, be := range want.Backends {
			if be == a.lastModel.Backends[i] {
				continue
			}
			if err := haproxycfg.ValidateBackend(be); err != nil {
				configRejectedTotal.WithLabelValues("model").Inc()
				return fmt.Errorf("%w: invalid model: %w", ErrRejected, err)
			}
		}
		err := a.runtimeSync(ctx, want, loaded)
		if err == nil {
			text, err := haproxycfg.AppendRender(a.spare[:0], want)
			if err != nil {
				// Not expected: the parts were validated above.
				configRejectedTotal.WithLabelValues("model").Inc()
				return fmt.Errorf("%w: invalid model: %w", ErrRejected, err)
			}
			a.writeCurrent(want, text)
			return nil
		}
		a.logger.Error(err, "Runtime API update failed; reloading to load the servers from the configuration file")
		a.loadedKey = ""
	}

	// Render validates the whole model: an invalid one is never loaded.
	text, sum, err := haproxycfg.RenderWithStructure(want)
	if err != nil {
		configRejectedTotal.WithLabelValues("model").Inc()
		return fmt.Errorf("%w: invalid model: %w", ErrRejected, err)
	}
	key := hex.EncodeToString(sum[:])
	if a.started && loaded != nil && key == a.loadedKey {
		err := a.runtimeSync(ctx, want, loaded)
		if err == nil {
			a.writeCurrent(want, text)
			return nil
		}
		a.logger.Error(err, "Runtime API update failed; reloading to load the servers from the configuration file")
		a.loadedKey = ""
	}
	reloadErr := a.reload(ctx, want, key, text)
	if reloadErr != nil && a.started && loaded != nil {
		// The structure cannot be loaded now, but endpoints of the
		// backends that are loaded must keep following their pods.
		if err := a.runtimeSync(ctx, want, loaded); err != nil {
			a.logger.Error(err, "Runtime API update of the loaded backends failed")
		}
	}
	return reloadErr
}

// cloneBackends copies c deeply enough that server ids can be assigned
// without touching the models the proxiers handed in. A backend object
// handed in again (the proxier keeps the objects of unchanged service
// ports) gets the same copy as last time, ids included: no copy of its
// servers, and no validation again when the last model had it.
func (a *Applier) cloneBackends(c *haproxycfg.Config) *haproxycfg.Config {
	out := &haproxycfg.Config{Global: c.Global, Defaults: c.Defaults, Frontends: c.Frontends}
	out.Backends = make([]*haproxycfg.Backend, len(c.Backends))
	clones := make(map[*haproxycfg.Backend]*haproxycfg.Backend, len(c.Backends))
	for i, be := range c.Backends {
		cp := a.clones[be]
		if cp == nil {
			cp = new(haproxycfg.Backend)
			*cp = *be
			cp.Servers = slices.Clone(be.Servers)
		}
		clones[be] = cp
		out.Backends[i] = cp
	}
	a.clones = clones
	return out
}

// sameStructure reports whether a and b, both sorted by name (Merge),
// differ at most in their servers: then they have the same structural
// key. Unchanged service ports keep their frontend objects from one model
// to the next (translate.Translator), so most comparisons are of
// pointers.
func sameStructure(a, b *haproxycfg.Config) bool {
	if a.Global != b.Global || a.Defaults != b.Defaults || len(a.Frontends) != len(b.Frontends) || len(a.Backends) != len(b.Backends) {
		return false
	}
	for i, f := range a.Frontends {
		if g := b.Frontends[i]; f != g && !reflect.DeepEqual(f, g) {
			return false
		}
	}
	for i, be := range a.Backends {
		o := b.Backends[i]
		if be.Name != o.Name || be.Comment != o.Comment || be.Balance != o.Balance {
			return false
		}
		if (be.StickTable == nil) != (o.StickTable == nil) || be.StickTable != nil && *be.StickTable != *o.StickTable {
			return false
		}
	}
	return true
}

// The structural key identifies everything of a model that the runtime API
// cannot change: the hash of the model rendered without servers
// (haproxycfg.RenderWithStructure).

// loadedServer is one server as HAProxy has it loaded.
type loadedServer struct {
	ID    int
	Addr  netip.Addr
	Port  int
	State runtimeapi.State
}

// loadedState is what HAProxy serves: the loaded backends, with their
// servers by name.
type loadedState struct {
	backends map[string]map[string]loadedServer
}

func (a *Applier) readLoaded(ctx context.Context) (*loadedState, error) {
	names, err := a.opts.Runtime.ShowBackends(ctx)
	if err != nil {
		return nil, err
	}
	st := &loadedState{backends: make(map[string]map[string]loadedServer, len(names))}
	for _, n := range names {
		st.backends[n] = map[string]loadedServer{}
	}
	servers, err := a.opts.Runtime.ShowServers(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, s := range servers {
		if st.backends[s.Backend] == nil {
			st.backends[s.Backend] = map[string]loadedServer{}
		}
		// An address that does not parse differs from every wanted
		// one, so it is set again.
		addr, _ := netip.ParseAddr(s.Addr)
		st.backends[s.Backend][s.Name] = loadedServer{ID: s.ID, Addr: addr.Unmap(), Port: s.Port, State: s.State()}
	}
	return st, nil
}

// loadedFromModel is what an HAProxy that just loaded the file rendered
// from c serves: every server of c, ready.
func loadedFromModel(c *haproxycfg.Config) *loadedState {
	st := &loadedState{backends: make(map[string]map[string]loadedServer, len(c.Backends))}
	for _, be := range c.Backends {
		m := make(map[string]loadedServer, len(be.Servers))
		for _, s := range be.Servers {
			m[s.Name] = loadedServer{ID: s.ID, Addr: s.Addr.Unmap(), Port: int(s.Port), State: runtimeapi.StateReady}
		}
		st.backends[be.Name] = m
	}
	return st
}

// sessions returns the current sessions of every server of backends, by
// backend/server ("show stat"; read only when servers are to be removed).
func (a *Applier) sessions(ctx context.Context, backends []string) (map[string]int, error) {
	rows, err := a.opts.Runtime.ShowStat(ctx, backends...)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(rows))
	for _, r := range rows {
		if r.Name != "BACKEND" && r.Name != "FRONTEND" {
			out[r.Proxy+"/"+r.Name] = r.CurrentSessions
		}
	}
	return out, nil
}

// assignIDs gives every server of want its id: the one HAProxy has loaded
// for that name, else the one it had in the last model, else the lowest id
// no loaded server (draining ones included) and no other server uses.
func (a *Applier) assignIDs(want *haproxycfg.Config, loaded *loadedState) {
	var lastBackends map[string]*haproxycfg.Backend
	for _, be := range want.Backends {
		var loadedServers map[string]loadedServer
		if loaded != nil {
			loadedServers = loaded.backends[be.Name]
		}
		// The common case: every server is loaded already. HAProxy keeps
		// ids unique in a backend and want's names are unique, so the
		// loaded ids need no further check.
		missing := false
		for i := range be.Servers {
			s := &be.Servers[i]
			ls, ok := loadedServers[s.Name]
			if !ok {
				missing = true
				break
			}
			s.ID = ls.ID
		}
		if !missing {
			continue
		}
		if lastBackends == nil && a.lastModel != nil {
			lastBackends = make(map[string]*haproxycfg.Backend, len(a.lastModel.Backends))
			for _, be := range a.lastModel.Backends {
				lastBackends[be.Name] = be
			}
		}
		used := map[int]bool{}
		for _, s := range loadedServers {
			used[s.ID] = true
		}
		var prev map[string]int
		if pb := lastBackends[be.Name]; pb != nil {
			prev = make(map[string]int, len(pb.Servers))
			for _, s := range pb.Servers {
				prev[s.Name] = s.ID
			}
		}
		taken := map[int]bool{}
		for i := range be.Servers {
			s := &be.Servers[i]
			s.ID = 0
			if ls, ok := loadedServers[s.Name]; ok && !taken[ls.ID] {
				s.ID = ls.ID
			} else if id, ok := prev[s.Name]; ok && id > 0 && !used[id] && !taken[id] {
				s.ID = id
			}
			if s.ID != 0 {
				taken[s.ID] = true
			}
		}
		free := 1
		for i := range be.Servers {
			s := &be.Servers[i]
			if s.ID != 0 {
				continue
			}
			for used[free] || taken[free] {
				free++
			}
			s.ID = free
			taken[free] = true
		}
	}
}

// recordChange is one change a runtime update makes to the record of
// loaded servers, applied once HAProxy confirmed the whole batch.
type recordChange struct {
	backend, server string
	state           loadedServer
	deleted         bool
}

// runtimeSync brings the servers of every backend that is both wanted and
// loaded to the wanted set through the runtime API, in one batch, and
// keeps loaded (the record) up to date. On failure the record is dropped:
// the next sync reads HAProxy again.
func (a *Applier) runtimeSync(ctx context.Context, want *haproxycfg.Config, loaded *loadedState) error {
	err := a.runtimeSyncRecord(ctx, want, loaded)
	if err != nil && a.loaded == loaded {
		a.loaded = nil
	}
	return err
}

func (a *Applier) runtimeSyncRecord(ctx context.Context, want *haproxycfg.Config, loaded *loadedState) error {
	now := a.opts.Clock.Now()
	var b runtimeapi.Batch
	var changes []recordChange
	var added, drained, deleted int
	nextDeadline := time.Time{}
	// Additions and changes first; backends that lose a server are
	// looked at once their sessions are known.
	var losing []*haproxycfg.Backend
	for _, be := range want.Backends {
		have, ok := loaded.backends[be.Name]
		if !ok {
			continue
		}
		found := 0
		for i := range be.Servers {
			s := &be.Servers[i]
			addr := s.Addr.Unmap()
			cur, ok := have[s.Name]
			switch {
			case !ok:
				b.AddServer(be.Name, runtimeapi.ServerSpec{Name: s.Name, ID: s.ID, Addr: addr.String(), Port: int(s.Port)})
				b.SetState(be.Name, s.Name, runtimeapi.StateReady)
				changes = append(changes, recordChange{backend: be.Name, server: s.Name,
					state: loadedServer{ID: s.ID, Addr: addr, Port: int(s.Port), State: runtimeapi.StateReady}})
				added++
			default:
				found++
				next := cur
				if cur.Addr != addr || cur.Port != int(s.Port) {
					b.SetAddr(be.Name, s.Name, addr.String(), int(s.Port))
					next.Addr, next.Port = addr, int(s.Port)
				}
				if cur.State != runtimeapi.StateReady {
					// Back before its drain ended: serve again.
					b.SetState(be.Name, s.Name, runtimeapi.StateReady)
					next.State = runtimeapi.StateReady
				}
				if next != cur {
					changes = append(changes, recordChange{backend: be.Name, server: s.Name, state: next})
				}
			}
			if len(a.draining) > 0 {
				delete(a.draining, be.Name+"/"+s.Name)
			}
		}
		if found < len(have) {
			losing = append(losing, be)
		}
	}
	var sessions map[string]int
	if len(losing) > 0 {
		names := make([]string, len(losing))
		for i, be := range losing {
			names[i] = be.Name
		}
		var err error
		if sessions, err = a.sessions(ctx, names); err != nil {
			return fmt.Errorf("runtime API: %w", err)
		}
	}
	for _, be := range losing {
		have := loaded.backends[be.Name]
		wanted := make(map[string]bool, len(be.Servers))
		for _, s := range be.Servers {
			wanted[s.Name] = true
		}
		for _, name := range slices.Sorted(maps.Keys(have)) {
			if wanted[name] {
				continue
			}
			cur := have[name]
			key := be.Name + "/" + name
			since, isDraining := a.draining[key]
			if !isDraining {
				since = now
				a.draining[key] = now
			}
			deadline := since.Add(a.opts.DrainTimeout)
			if sessions[key] == 0 || !now.Before(deadline) {
				// No connection left (or no more patience): remove it.
				b.SetState(be.Name, name, runtimeapi.StateMaint)
				b.ShutdownSessions(be.Name, name)
				b.DelServer(be.Name, name)
				changes = append(changes, recordChange{backend: be.Name, server: name, deleted: true})
				deleted++
				continue
			}
			if cur.State == runtimeapi.StateReady {
				b.SetState(be.Name, name, runtimeapi.StateDrain)
				cur.State = runtimeapi.StateDrain
				changes = append(changes, recordChange{backend: be.Name, server: name, state: cur})
				drained++
			}
			// Look again soon: connections may be gone before the deadline.
			if check := now.Add(a.opts.DrainCheckInterval); check.Before(deadline) {
				deadline = check
			}
			if nextDeadline.IsZero() || deadline.Before(nextDeadline) {
				nextDeadline = deadline
			}
		}
	}
	// Forget drains of servers that no longer exist.
	for key := range a.draining {
		bn, sn, _ := strings.Cut(key, "/")
		if _, ok := loaded.backends[bn][sn]; !ok {
			delete(a.draining, key)
		}
	}
	a.scheduleDrainCheck(nextDeadline, now)
	if b.Len() == 0 {
		return nil
	}
	err := a.opts.Runtime.Run(ctx, &b)
	var be *runtimeapi.BatchError
	if errors.As(err, &be) {
		fatal := false
		for _, f := range be.Failed {
			// A connection opened since we looked: delete it next time.
			if !errors.Is(f, runtimeapi.ErrServerHasConns) {
				fatal = true
			}
		}
		if !fatal {
			// The batch did its job, but the record cannot tell which
			// server stayed: read HAProxy again next time.
			a.loaded = nil
			err = nil
		}
	}
	if err != nil {
		runtimeUpdatesTotal.WithLabelValues("failed").Inc()
		return fmt.Errorf("runtime API: %w", err)
	}
	for _, c := range changes {
		if c.deleted {
			delete(loaded.backends[c.backend], c.server)
		} else {
			loaded.backends[c.backend][c.server] = c.state
		}
	}
	runtimeUpdatesTotal.WithLabelValues("success").Inc()
	a.logger.V(2).Info("Updated HAProxy servers through the runtime API", "added", added, "draining", drained, "deleted", deleted, "commands", b.Len())
	return nil
}

// scheduleDrainCheck arranges a re-apply when the next drain times out.
func (a *Applier) scheduleDrainCheck(deadline, now time.Time) {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if deadline.IsZero() {
		return
	}
	a.timer = a.opts.Clock.AfterFunc(deadline.Sub(now), func() {
		// A goroutine of its own: the clock may call this while it holds
		// its lock, and Resync sets the next timer.
		go func() {
			if err := a.resync(context.Background(), false); err != nil && !errors.Is(err, ErrStopped) {
				a.logger.Error(err, "Finishing drained servers failed")
			}
		}()
	})
}

// reload renders want, validates it, writes it and reloads (or starts)
// HAProxy. On any failure the last good file is put back.
func (a *Applier) reload(ctx context.Context, want *haproxycfg.Config, key string, text []byte) error {
	now := a.opts.Clock.Now()
	if key == a.rejectedKey && now.Before(a.retryAt) {
		return fmt.Errorf("%w: the same structure was rejected, next try after %s: %w", ErrRejected, a.retryAt.Format(time.RFC3339), a.rejectedErr)
	}
	if err := a.fitsFileLimit(want); err != nil {
		return a.reject(key, "file-limit", err)
	}
	dir := filepath.Dir(a.opts.ConfigFile)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	tmp, err := writeTemp(a.opts.ConfigFile, text)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer os.Remove(tmp)
	if err := a.opts.Validate(ctx, tmp); err != nil {
		if errors.Is(err, ErrBinaryMissing) {
			// Not the configuration's fault: try again at the next sync.
			configRejectedTotal.WithLabelValues("binary").Inc()
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return a.reject(key, "validation", fmt.Errorf("haproxy -c: %w", err))
	}
	if a.opts.Hooks != nil {
		if err := a.opts.Hooks.BeforeReload(ctx, want); err != nil {
			return fmt.Errorf("apply: preparing the host for the new configuration: %w", err)
		}
	}
	if err := os.Rename(tmp, a.opts.ConfigFile); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	start := a.opts.Clock.Now()
	action := "reload"
	if a.started {
		err = a.opts.Process.Reload(ctx)
	} else {
		action = "start"
		err = a.opts.Process.Start(ctx)
	}
	if err != nil {
		reloadsTotal.WithLabelValues("failed").Inc()
		// Whether the old worker still serves, or none does, read it.
		a.loaded = nil
		a.restoreLastGood()
		if errors.Is(err, supervisor.ErrNotRunning) || errors.Is(err, supervisor.ErrBinaryMissing) {
			// HAProxy is down or cannot run (the supervisor restarts it and
			// the model is applied again then): nothing says the
			// configuration is bad, so no backoff for it.
			configRejectedTotal.WithLabelValues(action).Inc()
			return fmt.Errorf("%w: HAProxy %s: %w", ErrRejected, action, err)
		}
		return a.reject(key, action, fmt.Errorf("HAProxy %s: %w", action, err))
	}
	reloadsTotal.WithLabelValues("success").Inc()
	reloadDuration.Observe(a.opts.Clock.Since(start).Seconds())
	a.started = true
	a.reloads++
	a.loadedKey = key
	a.lastGood = text
	a.lastModel, a.lastModelKey = want, key
	a.loaded, a.lastRead = loadedFromModel(want), now
	a.rejectedKey, a.rejectedErr, a.backoff = "", nil, 0
	// The new worker has exactly the servers of the file.
	clear(a.draining)
	a.scheduleDrainCheck(time.Time{}, now)
	a.writeLoadedMarker(key, text)
	a.logger.Info("HAProxy configuration loaded", "action", action, "frontends", len(want.Frontends), "backends", len(want.Backends), "elapsed", a.opts.Clock.Since(start))
	if a.opts.Hooks != nil {
		if err := a.opts.Hooks.AfterReload(ctx, want); err != nil {
			a.logger.Error(err, "Cleaning up the host after a reload failed")
		}
	}
	return nil
}

// MinAutoMaxConn is the fewest connections a fitted maxconn may allow:
// below it the listeners have taken the file limit, and a configuration
// that accepts almost no connection is refused rather than loaded.
const MinAutoMaxConn = 256

// fitsFileLimit says why want cannot run within Options.FileLimit, or nil.
func (a *Applier) fitsFileLimit(want *haproxycfg.Config) error {
	limit := a.opts.FileLimit
	if limit <= 0 {
		return nil
	}
	binds, conns := want.Binds(), want.Global.MaxConn
	if a.autoMaxConn {
		conns = max(conns, MinAutoMaxConn)
	}
	need := haproxycfg.FileDescriptorsNeeded(conns, binds)
	if need <= limit {
		return nil
	}
	return fmt.Errorf("%d listeners and %d connections need %d file descriptors, more than the file limit %d: "+
		"raise kube-proxy's file limit (HAProxy inherits it) or serve fewer Services from this HAProxy",
		binds, conns, need, limit)
}

// reject records a rejected structure, its backoff, an event and a metric.
func (a *Applier) reject(key, reason string, err error) error {
	configRejectedTotal.WithLabelValues(reason).Inc()
	if key == a.rejectedKey && a.backoff > 0 {
		a.backoff = min(2*a.backoff, a.opts.MaxRetryBackoff)
	} else {
		a.backoff = a.opts.RetryBackoff
	}
	a.rejectedKey = key
	a.rejectedErr = err
	a.retryAt = a.opts.Clock.Now().Add(a.backoff)
	a.logger.Error(err, "HAProxy configuration rejected; the last good configuration keeps serving", "reason", reason, "retryAfter", a.backoff)
	if a.opts.Recorder != nil && a.opts.NodeName != "" {
		node := &v1.ObjectReference{Kind: "Node", Name: a.opts.NodeName, UID: types.UID(a.opts.NodeName)}
		a.opts.Recorder.Eventf(node, nil, v1.EventTypeWarning, "HAProxyConfigRejected", reason,
			"HAProxy configuration rejected (%s), the last good configuration keeps serving: %v", reason, err)
	}
	return fmt.Errorf("%w (%s): %w", ErrRejected, reason, err)
}

// restoreLastGood puts the last configuration HAProxy loaded back on disk,
// so that a restart of HAProxy comes back with it.
func (a *Applier) restoreLastGood() {
	if a.lastGood == nil {
		return
	}
	tmp, err := writeTemp(a.opts.ConfigFile, a.lastGood)
	if err == nil {
		err = os.Rename(tmp, a.opts.ConfigFile)
	}
	if err != nil {
		a.logger.Error(err, "Restoring the last good HAProxy configuration file failed", "file", a.opts.ConfigFile)
	}
}

// writeCurrent rewrites the configuration file with the current servers
// after a runtime update (same structure, already loaded), so that an
// HAProxy restarted from the file starts with today's endpoints.
func (a *Applier) writeCurrent(want *haproxycfg.Config, text []byte) {
	a.lastModel, a.lastModelKey = want, a.loadedKey
	if bytes.Equal(text, a.lastGood) {
		a.spare = text
		return
	}
	tmp, err := writeTempFile(a.opts.ConfigFile, text, false)
	if err == nil {
		err = os.Rename(tmp, a.opts.ConfigFile)
	}
	if err != nil {
		a.logger.Error(err, "Writing the HAProxy configuration file failed", "file", a.opts.ConfigFile)
		a.spare = text
		return
	}
	// Nothing else refers to the former text: its memory is the next
	// rendering's.
	a.lastGood, a.spare = text, a.lastGood
	a.writeLoadedMarker(a.loadedKey, text)
}

// The marker file next to the configuration records which structure the
// running HAProxy loaded and a checksum of the file, so a restarted
// proxier that adopts HAProxy knows whether endpoint changes suffice. A
// file edited by hand (checksum mismatch) forces a reload.
func (a *Applier) markerFile() string { return a.opts.ConfigFile + ".loaded" }

func (a *Applier) writeLoadedMarker(key string, text []byte) {
	sum := sha256.Sum256(text)
	content := key + " " + hex.EncodeToString(sum[:]) + "\n"
	tmp, err := writeTemp(a.markerFile(), []byte(content))
	if err == nil {
		err = os.Rename(tmp, a.markerFile())
	}
	if err != nil {
		a.logger.Error(err, "Writing the loaded-configuration marker failed", "file", a.markerFile())
	}
}

// adoptLoadedKey trusts the marker of an adopted HAProxy only when the
// configuration file still has the content the marker describes.
func (a *Applier) adoptLoadedKey() {
	a.loadedKey = ""
	marker, err := os.ReadFile(a.markerFile())
	if err != nil {
		return
	}
	key, fileSum, ok := strings.Cut(strings.TrimSpace(string(marker)), " ")
	if !ok {
		return
	}
	text, err := os.ReadFile(a.opts.ConfigFile)
	if err != nil {
		return
	}
	sum := sha256.Sum256(text)
	if hex.EncodeToString(sum[:]) != fileSum {
		a.logger.Info("HAProxy configuration file changed since it was loaded; reloading it", "file", a.opts.ConfigFile)
		return
	}
	a.loadedKey = key
	a.lastGood = text
}

// writeTemp writes data to a new temporary file beside path (same file
// system, so a rename is atomic) and flushes it to disk: a configuration
// that is about to be loaded must survive a crash of the node whole.
func writeTemp(path string, data []byte) (string, error) {
	return writeTempFile(path, data, true)
}

// writeTempFile is writeTemp; durable=false skips the flush, for the
// rewrites after runtime updates, which happen at every endpoint change
// and which the next sync rewrites anyway if a crash lost them.
func writeTempFile(path string, data []byte, durable bool) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", err
		}
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// ErrBinaryMissing: the haproxy binary cannot be run to validate a
// configuration.
var ErrBinaryMissing = supervisor.ErrBinaryMissing

// validateWithBinary runs "haproxy -c -f file" (not -q, which hides the
// alerts that say what is wrong).
func validateWithBinary(ctx context.Context, bin, file string) error {
	out, err := exec.CommandContext(ctx, bin, "-c", "-f", file).CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return fmt.Errorf("%w: %s: %w", ErrBinaryMissing, bin, err)
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			return err
		}
		return fmt.Errorf("%w: %s", err, strings.ReplaceAll(msg, "\n", " | "))
	}
	return nil
}
