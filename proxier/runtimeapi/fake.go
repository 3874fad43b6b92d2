package runtimeapi

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
)

// Fake is an in-memory Interface that keeps server state the way HAProxy
// 2.6 does and answers with HAProxy's own words (which Run then turns into
// the same errors as the real client):
//   - servers are added in maintenance, only to backends with a dynamic
//     balance algorithm, with a unique name and id;
//   - only servers in maintenance, without attached connections, can be
//     deleted;
//   - unknown backends and servers fail as they do in HAProxy;
//   - maps (string keys, as map_str uses them) and ACL files (IP patterns,
//     as "src -f" uses them) keep entries in insertion order, "add map"
//     and "add acl" add duplicates, "set map" and "del map" act on every
//     entry with the key.
//
// Backends, maps and ACLs appear only through LoadBackend, LoadMap and
// LoadACL, as in HAProxy they appear only through the configuration.
type Fake struct {
	mu            sync.Mutex
	backends      map[string]*FakeBackend
	nextBackendID int
	// patterns holds the maps and ACL files by file name.
	patterns       map[string]*fakePatterns
	nextPatternSeq int
	// Batches records the commands of every Run, one slice per connection.
	Batches [][]string
}

// FakeBackend is a backend of the Fake.
type FakeBackend struct {
	Name string
	ID   int
	// Dynamic says whether the backend's balance algorithm accepts servers
	// added at runtime.
	Dynamic bool
	Servers map[string]*FakeServer
}

// FakeServer is a server of a FakeBackend.
type FakeServer struct {
	ServerStatus
	Options []string
	// Sessions is the number of connections attached to the server.
	Sessions int
	// HealthEnabled: the server was added with "check" and its checks
	// were enabled; SetCheckResult then decides whether it is up.
	HealthEnabled bool
	// CheckDown is the last check result given by SetCheckResult.
	CheckDown bool
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake without backends, maps or ACLs.
func NewFake() *Fake {
	return &Fake{backends: map[string]*FakeBackend{}, nextBackendID: 1, patterns: map[string]*fakePatterns{}}
}

// LoadBackend replaces (or creates) a backend as a (re)load of the
// configuration would: servers from the configuration start ready unless
// their AdminFlags say otherwise.
func (f *Fake) LoadBackend(name string, dynamic bool, servers ...FakeServer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	be, ok := f.backends[name]
	if !ok {
		be = &FakeBackend{Name: name, ID: f.nextBackendID}
		f.nextBackendID++
		f.backends[name] = be
	}
	be.Dynamic = dynamic
	be.Servers = map[string]*FakeServer{}
	for i := range servers {
		s := servers[i]
		s.Backend, s.BackendID = name, be.ID
		if s.Weight == 0 {
			s.Weight = 1
		}
		s.OpState = opStateFor(s.AdminFlags)
		be.Servers[s.Name] = &s
	}
}

// RemoveBackend forgets a backend, as a reload without it would.
func (f *Fake) RemoveBackend(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.backends, name)
}

// Reset forgets every backend, map and ACL.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends = map[string]*FakeBackend{}
	f.patterns = map[string]*fakePatterns{}
}

// SetSessions sets the number of connections attached to a server.
func (f *Fake) SetSessions(backend, server string, n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.server(backend, server)
	if err != nil {
		return err
	}
	s.Sessions = n
	return nil
}

// Server returns a copy of one server, or nil.
func (f *Fake) Server(backend, server string) *FakeServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.server(backend, server)
	if err != nil {
		return nil
	}
	c := *s
	c.Options = append([]string(nil), s.Options...)
	return &c
}

// Dump returns "backend/server addr:port id=N state" lines, sorted, then
// the maps' and ACLs' entries (see dumpPatterns), for tests that compare
// the whole state.
func (f *Fake) Dump() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, be := range f.sortedBackends() {
		for _, s := range sortedServers(be) {
			out = append(out, fmt.Sprintf("%s/%s %s id=%d weight=%d %s", be.Name, s.Name, hostPort(s.Addr, s.Port), s.ID, s.Weight, s.State()))
		}
	}
	return append(out, f.dumpPatterns()...)
}

func (f *Fake) server(backend, server string) (*FakeServer, error) {
	be, ok := f.backends[backend]
	if !ok {
		return nil, ErrNoSuchBackend
	}
	s, ok := be.Servers[server]
	if !ok {
		return nil, ErrNoSuchServer
	}
	return s, nil
}

func (f *Fake) sortedBackends() []*FakeBackend {
	bes := make([]*FakeBackend, 0, len(f.backends))
	for _, be := range f.backends {
		bes = append(bes, be)
	}
	sort.Slice(bes, func(i, j int) bool { return bes[i].ID < bes[j].ID })
	return bes
}

func sortedServers(be *FakeBackend) []*FakeServer {
	ss := make([]*FakeServer, 0, len(be.Servers))
	for _, s := range be.Servers {
		ss = append(ss, s)
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].ID < ss[j].ID })
	return ss
}

func opStateFor(adminFlags int) int {
	if adminFlags&adminMaintMask != 0 {
		return 0
	}
	return 2
}

// opState is the server's operational state: stopped in maintenance or
// when its enabled checks failed, running otherwise.
func (s *FakeServer) opState() int {
	if s.HealthEnabled && s.CheckDown {
		return 0
	}
	return opStateFor(s.AdminFlags)
}

// SetCheckResult stands in for the health checks of a server: down makes a
// server whose checks are enabled stopped (operational state 0), as
// HAProxy marks it after "fall" failed checks; up makes it running again.
func (f *Fake) SetCheckResult(backend, server string, down bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.server(backend, server)
	if err != nil {
		return err
	}
	s.CheckDown = down
	s.OpState = s.opState()
	return nil
}

// Run implements Interface.
func (f *Fake) Run(ctx context.Context, b *Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.Len() == 0 {
		return nil
	}
	if err := b.validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Batches = append(f.Batches, b.Commands())
	answers := make([]string, len(b.cmds))
	for i, c := range b.cmds {
		answers[i] = f.execute(c)
	}
	return batchResult(b, answers)
}

// execute applies one command and answers as HAProxy 2.6 would.
func (f *Fake) execute(c Command) string {
	if c.verb.onPatterns() {
		return f.executePatterns(c)
	}
	be, ok := f.backends[c.backend]
	if !ok {
		return "No such backend.\n"
	}
	if c.verb == verbAddServer {
		if !be.Dynamic {
			return "Backend must use a dynamic load balancing to support dynamic servers.\n"
		}
		if _, exists := be.Servers[c.server]; exists {
			return "Already exists a server with the same name in backend.\n"
		}
		for _, s := range be.Servers {
			if s.ID == c.spec.ID {
				return fmt.Sprintf("'id' : custom id %d already used at (null):0 ('server %s').\n", c.spec.ID, s.Name)
			}
		}
		w := c.spec.Weight
		if w == 0 {
			w = 1
		}
		be.Servers[c.server] = &FakeServer{
			ServerStatus: ServerStatus{
				BackendID: be.ID, Backend: be.Name, ID: c.spec.ID, Name: c.server,
				Addr: c.spec.Addr, Port: c.spec.Port, Weight: w,
				AdminFlags: adminForcedMaint, OpState: 0,
			},
			Options: append([]string(nil), c.spec.Options...),
		}
		return "New server registered.\n"
	}
	s, ok := be.Servers[c.server]
	if !ok {
		return "No such server.\n"
	}
	switch c.verb {
	case verbDelServer:
		if s.State() != StateMaint {
			return "Only servers in maintenance mode can be deleted.\n"
		}
		if s.Sessions > 0 {
			return "Server still has connections attached to it, cannot remove it.\n"
		}
		delete(be.Servers, c.server)
		return "Server deleted.\n"
	case verbSetState:
		switch c.state {
		case StateReady:
			s.AdminFlags = 0
		case StateDrain:
			s.AdminFlags = adminForcedDrain
		case StateMaint:
			s.AdminFlags = adminForcedMaint
		}
		s.OpState = s.opState()
		return ""
	case verbEnableHealth:
		if !slices.Contains(s.Options, "check") {
			return "Health check was not configured on this server, cannot enable.\n"
		}
		s.HealthEnabled = true
		s.OpState = s.opState()
		return ""
	case verbSetWeight:
		s.Weight = c.weight
		return ""
	case verbShutdownSessions:
		s.Sessions = 0
		return ""
	case verbSetAddr:
		if s.Addr == c.addr && s.Port == c.port {
			return "no need to change the addr, port\n"
		}
		msg := fmt.Sprintf("IP changed from '%s' to '%s', port changed from '%d' to '%d' by 'stats socket command'\n", s.Addr, c.addr, s.Port, c.port)
		s.Addr, s.Port = c.addr, c.port
		return msg
	}
	return "Unknown command.\n"
}

// ShowServers implements Interface.
func (f *Fake) ShowServers(ctx context.Context, backend string) ([]ServerStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var bes []*FakeBackend
	if backend != "" {
		be, ok := f.backends[backend]
		if !ok {
			return nil, ErrNoSuchBackend
		}
		bes = []*FakeBackend{be}
	} else {
		bes = f.sortedBackends()
	}
	var out []ServerStatus
	for _, be := range bes {
		for _, s := range sortedServers(be) {
			out = append(out, s.ServerStatus)
		}
	}
	return out, nil
}

// ShowStat implements Interface: one row per server and per backend.
func (f *Fake) ShowStat(ctx context.Context, backends ...string) ([]StatRow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var rows []StatRow
	bes := f.sortedBackends()
	if len(backends) > 0 {
		bes = bes[:0:0]
		for _, n := range backends {
			if be, ok := f.backends[n]; ok {
				bes = append(bes, be)
			}
		}
	}
	for _, be := range bes {
		total := 0
		for _, s := range sortedServers(be) {
			status := "no check"
			switch s.State() {
			case StateMaint:
				status = "MAINT"
			case StateDrain:
				status = "DRAIN"
			}
			total += s.Sessions
			rows = append(rows, StatRow{Proxy: be.Name, Name: s.Name, Status: status, CurrentSessions: s.Sessions,
				Fields: map[string]string{"pxname": be.Name, "svname": s.Name, "status": status, "scur": strconv.Itoa(s.Sessions), "sid": strconv.Itoa(s.ID)}})
		}
		rows = append(rows, StatRow{Proxy: be.Name, Name: "BACKEND", Status: "UP", CurrentSessions: total,
			Fields: map[string]string{"pxname": be.Name, "svname": "BACKEND", "status": "UP", "scur": strconv.Itoa(total)}})
	}
	return rows, nil
}

// ShowBackends implements Interface.
func (f *Fake) ShowBackends(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for _, be := range f.sortedBackends() {
		names = append(names, be.Name)
	}
	return names, nil
}

// FakeMaster is an in-memory MasterInterface. Each Reload calls OnReload
// (which a test uses to load the new configuration into a Fake) and records
// the outcome the way "show proc" of HAProxy 2.6 shows it.
type FakeMaster struct {
	mu        sync.Mutex
	masterPID int
	reloads   int
	failed    int
	workerPID int
	// OnReload runs at each reload; an error makes the reload fail, and the
	// current worker stays.
	OnReload func() error
}

var _ MasterInterface = (*FakeMaster)(nil)

// NewFakeMaster returns a master with one worker and no reload yet.
func NewFakeMaster() *FakeMaster {
	return &FakeMaster{masterPID: 100, workerPID: 101}
}

// Reloads returns how many reloads were asked (failed ones included).
func (m *FakeMaster) Reloads() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reloads
}

// ShowProc implements MasterInterface.
func (m *FakeMaster) ShowProc(ctx context.Context) (*ProcInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := &ProcInfo{MasterPID: m.masterPID, Reloads: m.reloads, FailedReloads: m.failed}
	// The current worker has survived no reload unless the last reloads
	// failed; then it counts them.
	p.Workers = []Worker{{PID: m.workerPID, Reloads: m.failed, Version: "fake"}}
	return p, nil
}

// Reload implements MasterInterface.
func (m *FakeMaster) Reload(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	hook := m.OnReload
	m.mu.Unlock()
	var err error
	if hook != nil {
		err = hook()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reloads++
	if err != nil {
		m.failed++
		return nil
	}
	m.failed = 0
	m.workerPID++
	return nil
}
