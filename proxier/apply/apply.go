// Package apply makes a running HAProxy serve the desired model, with a
// reload only when haproxy.cfg itself changes.
//
// haproxy.cfg holds settings and one dispatcher per IP family, nothing per
// Service (see package haproxycfg): new, changed and deleted Services and
// endpoints are entries of the dispatchers' map files, which the runtime
// API changes in place ("add map", "set map", "del map"), in one batch over
// one connection, ordered so that no connection ever meets an entry that
// points at something not there yet (maps.go). The map files are
// rewritten after the batches, so HAProxy's files and memory agree and a
// restarted or reloaded HAProxy starts from today's Services.
//
// The Applier keeps no copy of HAProxy's maps in steady state: it compares
// the Service ports of the new model with those of the last model applied
// (unchanged ones are the same objects, see translate.Translator), so a
// change costs work in proportion to what changed. It reads the maps back
// ("show map") whenever HAProxy's content may differ from the last model:
// after adopting a running HAProxy, after a failed batch, after HAProxy
// restarted, and every FullReadInterval, which also repairs entries
// someone changed by hand (that periodic read comes after the change of
// the sync that runs it has been sent). The map files on disk follow
// HAProxy's memory within MapFilesLag, written by a timer, off the path
// of the change; a reload writes them first.
//
// A change of haproxy.cfg (a setting, a new IP family) is rendered,
// validated with "haproxy -c" together with the map files, written
// atomically and loaded with a reload through the master CLI (reload.go).
// A configuration that fails is never loaded: the last good one keeps
// serving, an event and a metric say why, and the same configuration is
// tried again only after a backoff. Meanwhile Services and endpoints still
// change at runtime in the maps the last good configuration reads.
package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
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
	// reload is made before each has handed its first model, so an
	// adopted HAProxy never loses the dispatcher of a family whose proxier
	// has not synced yet.
	Families []v1.IPFamily
	// Validate checks a configuration file; default: "haproxy -c -f".
	Validate func(ctx context.Context, file string) error
	// FileLimit is the file-descriptor limit HAProxy runs with (0: not
	// known). A model without a global maxconn gets the largest one its
	// listeners leave room for.
	FileLimit int
	// FullReadInterval bounds how long the maps are trusted to equal the
	// last model without reading them back.
	FullReadInterval time.Duration
	// MapFilesLag bounds how long the map files on disk may trail what
	// the runtime API gave HAProxy (default DefaultMapFilesLag). A reload
	// always writes them first; only a restarted HAProxy would start
	// from older files, and the applier's read-back after a restart
	// repairs that.
	MapFilesLag time.Duration
	// RetryBackoff is the first delay before the same rejected
	// configuration is tried again; it doubles up to MaxRetryBackoff.
	RetryBackoff, MaxRetryBackoff time.Duration
	// Recorder and NodeName: events about rejected configurations are
	// recorded on the Node, as kube-proxy records its own.
	Recorder events.EventRecorder
	NodeName string
	// Clock, for tests; default the real clock.
	Clock  clock.PassiveClock
	Logger klog.Logger
}

func (o *Options) setDefaults() {
	if o.Validate == nil {
		bin := o.Binary
		o.Validate = func(ctx context.Context, file string) error { return validateWithBinary(ctx, bin, file) }
	}
	if o.FullReadInterval == 0 {
		o.FullReadInterval = time.Minute
	}
	if o.MapFilesLag == 0 {
		o.MapFilesLag = DefaultMapFilesLag
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
// configuration was rejected recently and its retry backoff has not passed.
var ErrRejected = errors.New("HAProxy configuration not loaded")

// ErrStopped is returned by Apply and Resync after Stop.
var ErrStopped = errors.New("apply: stopped")

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
	// loadedKey identifies the haproxy.cfg HAProxy has loaded ("" when
	// unknown: the next sync reloads); lastGood is its text.
	loadedKey string
	lastGood  []byte
	// applied is, per family, the dispatcher whose map content HAProxy
	// has (nil: unknown, read the maps back at the next sync), and
	// lastRead when the maps were last read or fully written.
	applied  map[bool]*haproxycfg.Dispatcher
	lastRead time.Time
	// filesMu guards files, pendingFiles and flushTimer: the files are
	// written after the runtime update, by a timer, so that writing
	// megabytes of map text is not on the path of a change (see
	// queueMapFiles). Lock order: mu, then filesMu.
	filesMu sync.Mutex
	// files writes each family's map files.
	files map[bool]*mapFiles
	// pendingFiles are the map files HAProxy's memory is ahead of, by
	// family; flushTimer writes them.
	pendingFiles map[bool]*pendingFiles
	flushTimer   *time.Timer
	// filesStopped: Stop was called; a failed write is not tried again.
	filesStopped bool
	// indexes validate each family's Service ports.
	indexes map[bool]*portIndex
	// rejectedKey/rejectedErr/retryAt/backoff remember the last rejected
	// configuration, so it is not retried before retryAt.
	rejectedKey string
	rejectedErr error
	retryAt     time.Time
	backoff     time.Duration
	// reloads counts successful reloads and starts, for tests.
	reloads int
	// stopped: Stop was called; nothing touches HAProxy any more.
	stopped bool
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
		opts:    opts,
		logger:  opts.Logger,
		desired: map[v1.IPFamily]*haproxycfg.Config{},
		applied: map[bool]*haproxycfg.Dispatcher{},
		files:   map[bool]*mapFiles{},
		indexes: map[bool]*portIndex{},

		pendingFiles: map[bool]*pendingFiles{},
	}, nil
}

// Stop makes the Applier leave HAProxy alone from now on, as when
// kube-proxy shuts down: HAProxy keeps serving what it has, and the map
// files are brought up to date with it.
func (a *Applier) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	a.filesMu.Lock()
	a.filesStopped = true
	a.filesMu.Unlock()
	a.FlushMapFiles()
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

// Resync reads HAProxy's maps back and applies the stored models again,
// e.g. after HAProxy was restarted.
func (a *Applier) Resync(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.desired) == 0 {
		return nil
	}
	return a.syncLocked(ctx, true)
}

func (a *Applier) syncLocked(ctx context.Context, fullRead bool) error {
	if a.stopped {
		return ErrStopped
	}
	parts := make([]*haproxycfg.Config, 0, len(a.opts.Families))
	for _, f := range a.opts.Families {
		if a.desired[f] == nil {
			a.logger.V(2).Info("Waiting for the model of every IP family before changing HAProxy", "missing", f)
			return nil
		}
		parts = append(parts, a.desired[f])
	}
	want, err := haproxycfg.Merge(parts...)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if want.Global.StatsSocket == "" {
		// Without it every change would cost a reload.
		configRejectedTotal.WithLabelValues("model").Inc()
		return fmt.Errorf("%w: invalid model: the global section has no stats socket for the runtime API", ErrRejected)
	}
	autoMaxConn := a.opts.FileLimit > 0 && want.Global.MaxConn == 0
	if autoMaxConn {
		// HAProxy refuses to start when its listeners and maxconn need
		// more descriptors than it may open.
		want.Global.MaxConn = haproxycfg.MaxConnForFileLimit(a.opts.FileLimit, want.Listeners())
	}
	// The whole model is validated (the Service ports in proportion to
	// what changed): an invalid one is never loaded, nor sent to HAProxy.
	text, err := a.validateModel(want)
	if err != nil {
		configRejectedTotal.WithLabelValues("model").Inc()
		return fmt.Errorf("%w: invalid model: %w", ErrRejected, err)
	}
	key := configKey(text)

	if !a.started {
		adopted, err := a.opts.Process.Adopt(ctx)
		if err != nil {
			return fmt.Errorf("apply: looking for a running HAProxy: %w", err)
		}
		if adopted {
			a.started = true
			clear(a.applied)
			a.adoptLoadedKey()
		}
	}

	if a.started && key == a.loadedKey {
		if fullRead {
			clear(a.applied)
		}
		err := a.runtimeUpdate(ctx, want, false)
		if err == nil && a.opts.Clock.Now().Sub(a.lastRead) >= a.opts.FullReadInterval {
			// The change is served; reading every map back (megabytes
			// at 10,000 Services) and repairing what differs comes
			// after it, not before.
			clear(a.applied)
			err = a.runtimeUpdate(ctx, want, false)
		}
		if err == nil {
			return nil
		}
		a.logger.Error(err, "Runtime API update failed; reloading HAProxy from the files")
		clear(a.applied)
		a.loadedKey = ""
	}
	err = a.reload(ctx, want, key, text, autoMaxConn)
	if err != nil && errors.Is(err, ErrRejected) && a.started && !errors.Is(err, supervisor.ErrNotRunning) {
		// HAProxy keeps serving the last good haproxy.cfg, whose
		// dispatchers read the same maps: Services and endpoints still
		// follow the model while the new settings wait for their retry.
		if uerr := a.runtimeUpdate(ctx, want, true); uerr != nil {
			a.logger.Error(uerr, "Runtime API update of the last good configuration failed")
			clear(a.applied)
		}
	}
	return err
}
