package runtimeapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Interface is what the proxier needs from HAProxy's runtime API.
type Interface interface {
	// Run sends the batch's commands, in order, over one connection. HAProxy
	// runs every command even when an earlier one fails, so Run does too; it
	// returns a *BatchError listing each failed command, or nil.
	Run(ctx context.Context, b *Batch) error
	// ShowServers returns the servers HAProxy has loaded ("show servers
	// state"), of one backend or, with backend "", of all backends.
	ShowServers(ctx context.Context, backend string) ([]ServerStatus, error)
	// ShowStat returns the rows of "show stat": one per frontend, backend and
	// server, with their current session counts. With backends, only the
	// rows of those backends and their servers (one "show stat <backend>
	// -1 -1" each, over one connection): at 100,000 servers the whole
	// table is megabytes to parse, while a sync removing an endpoint needs
	// the sessions of a few servers. A named backend that does not exist
	// has no rows.
	ShowStat(ctx context.Context, backends ...string) ([]StatRow, error)
	// ShowBackends returns the names of the loaded backends ("show
	// backend"), also those without servers.
	ShowBackends(ctx context.Context) ([]string, error)
	// ShowMap returns the entries of a map ("show map <file>"), in the
	// order HAProxy lists them: insertion order, duplicates included. A
	// file that is not a loaded map is an error wrapping ErrNoSuchMap.
	ShowMap(ctx context.Context, mapFile string) ([]MapEntry, error)
	// ShowACL returns the patterns of an ACL file ("show acl <file>"), in
	// insertion order, duplicates included. A file that is not a loaded
	// ACL is an error wrapping ErrNoSuchMap.
	ShowACL(ctx context.Context, aclFile string) ([]string, error)
	// ShowMaps returns the files of the loaded maps ("show map"), in the
	// order the configuration references them.
	ShowMaps(ctx context.Context) ([]string, error)
}

// MasterInterface is what the proxier needs from the master CLI of an
// HAProxy in master-worker mode.
type MasterInterface interface {
	// ShowProc returns the master and worker processes ("show proc").
	ShowProc(ctx context.Context) (*ProcInfo, error)
	// Reload asks the master to re-read its configuration and start a new
	// worker. HAProxy 2.6 answers nothing: callers confirm the outcome from
	// ShowProc (see ProcInfo.ReloadOutcome).
	Reload(ctx context.Context) error
}

// State is the administrative state of a server.
type State string

const (
	// StateReady: the server takes new traffic.
	StateReady State = "ready"
	// StateDrain: established connections continue, no new ones (except
	// persistent ones).
	StateDrain State = "drain"
	// StateMaint: no traffic at all; the only state in which a server can be
	// deleted.
	StateMaint State = "maint"
)

// ServerSpec describes a server to add at runtime. HAProxy does not apply a
// backend's default-server line to servers added at runtime, so every
// option a server needs must be in Options.
type ServerSpec struct {
	// Name of the server inside its backend.
	Name string
	// ID is the server's numeric id. Always set it: HAProxy 2.6 with
	// "balance random" never picks a server added without an explicit id,
	// and stable ids keep stats and stick tables meaningful across reloads.
	ID int
	// Addr is the IP address (IPv6 without brackets).
	Addr string
	// Port is the TCP port.
	Port int
	// Weight is the server's weight, 0..256; 0 means HAProxy's default (1).
	Weight int
	// Options are extra server keywords, one token each ("check",
	// "send-proxy-v2", "inter", "2s", ...).
	Options []string
}

// ServerStatus is one server as HAProxy has it loaded.
type ServerStatus struct {
	BackendID int
	Backend   string
	ID        int
	Name      string
	Addr      string
	Port      int
	// OpState is HAProxy's operational state: 0 stopped, 1 starting,
	// 2 running, 3 stopping.
	OpState int
	// AdminFlags is HAProxy's srv_admin_state bit field.
	AdminFlags int
	// Weight is the current user weight.
	Weight int
}

// Admin flag bits of srv_admin_state (HAProxy's SRV_ADMF_*).
const (
	adminForcedMaint    = 0x01
	adminInheritedMaint = 0x02
	adminConfigMaint    = 0x04
	adminForcedDrain    = 0x08
	adminInheritedDrain = 0x10
	adminResolvMaint    = 0x20
	adminHostnameMaint  = 0x40
	adminMaintMask      = adminForcedMaint | adminInheritedMaint | adminConfigMaint | adminResolvMaint | adminHostnameMaint
	adminDrainMask      = adminForcedDrain | adminInheritedDrain
)

// State derives the administrative state from the admin flags.
func (s ServerStatus) State() State {
	switch {
	case s.AdminFlags&adminMaintMask != 0:
		return StateMaint
	case s.AdminFlags&adminDrainMask != 0:
		return StateDrain
	default:
		return StateReady
	}
}

// StatRow is one row of "show stat". Fields holds every column by name; the
// common ones are also parsed into fields.
type StatRow struct {
	// Proxy is the frontend or backend name (pxname).
	Proxy string
	// Name is FRONTEND, BACKEND or the server name (svname).
	Name string
	// Status is e.g. OPEN, UP, DOWN, MAINT, DRAIN, "no check".
	Status string
	// CurrentSessions is scur.
	CurrentSessions int
	Fields          map[string]string
}

// MapEntry is one entry of a map: the key HAProxy matches and the value
// it returns.
type MapEntry struct {
	Key   string
	Value string
}

// Sentinel errors, wrapped by the errors Run returns. They name HAProxy's
// answers so callers never match text.
var (
	ErrNoSuchBackend     = errors.New("no such backend")
	ErrNoSuchServer      = errors.New("no such server")
	ErrServerExists      = errors.New("server already exists")
	ErrIDInUse           = errors.New("server id already in use")
	ErrNotDynamicBackend = errors.New("backend does not support dynamic servers")
	ErrNotInMaintenance  = errors.New("server is not in maintenance")
	ErrServerHasConns    = errors.New("server still has connections")
	ErrNoHealthCheck     = errors.New("server has no health check configured")
	// ErrNoSuchMap: the file is not a loaded map (map commands) or not a
	// loaded ACL (ACL commands, also "add acl" on a map file). One
	// sentinel for both because HAProxy 2.6 itself answers "del acl" on an
	// unknown file with its map wording.
	ErrNoSuchMap = errors.New("no such map or acl file")
	// ErrNoSuchEntry: "set map", "del map" or "del acl" named a key that
	// the map or ACL does not hold.
	ErrNoSuchEntry        = errors.New("no such map or acl entry")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrUnknownCommand     = errors.New("unknown command")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnexpectedResponse = errors.New("unexpected response")
)

// CommandError is the failure of one command of a batch.
type CommandError struct {
	// Index of the command in its batch.
	Index int
	// Command as sent.
	Command string
	// Response is HAProxy's answer, trimmed.
	Response string
	// Err is the sentinel the response maps to.
	Err error
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%q: %s", e.Command, e.Response)
}

func (e *CommandError) Unwrap() error { return e.Err }

// BatchError lists the failed commands of a batch.
type BatchError struct {
	Failed []*CommandError
}

func (e *BatchError) Error() string {
	msgs := make([]string, 0, len(e.Failed))
	for _, f := range e.Failed {
		msgs = append(msgs, f.Error())
	}
	return fmt.Sprintf("%d runtime API command(s) failed: %s", len(e.Failed), strings.Join(msgs, "; "))
}

// Unwrap lets errors.Is/As look at every failed command.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, f := range e.Failed {
		errs = append(errs, f)
	}
	return errs
}

// verb names the commands a Batch can hold.
type verb int

const (
	verbAddServer verb = iota
	verbDelServer
	verbSetState
	verbSetAddr
	verbSetWeight
	verbShutdownSessions
	verbEnableHealth
	verbAddMap
	verbSetMap
	verbDelMap
	verbClearMap
	verbAddACL
	verbDelACL
	verbClearACL
)

// onPatterns says whether the verb changes a map or an ACL rather than a
// server.
func (v verb) onPatterns() bool { return v >= verbAddMap }

// Command is one runtime API command of a Batch.
type Command struct {
	verb    verb
	backend string
	server  string
	spec    ServerSpec
	state   State
	addr    string
	port    int
	weight  int
	// file, key and value are the arguments of map and ACL commands; an
	// ACL command's pattern is in key.
	file  string
	key   string
	value string
}

// String renders the command as HAProxy reads it.
func (c Command) String() string {
	target := c.backend + "/" + c.server
	switch c.verb {
	case verbAddServer:
		var b strings.Builder
		b.WriteString("add server ")
		b.WriteString(target)
		b.WriteString(" ")
		b.WriteString(hostPort(c.spec.Addr, c.spec.Port))
		b.WriteString(" id ")
		b.WriteString(strconv.Itoa(c.spec.ID))
		if c.spec.Weight > 0 {
			b.WriteString(" weight ")
			b.WriteString(strconv.Itoa(c.spec.Weight))
		}
		for _, o := range c.spec.Options {
			b.WriteString(" ")
			b.WriteString(o)
		}
		return b.String()
	case verbDelServer:
		return "del server " + target
	case verbSetState:
		return "set server " + target + " state " + string(c.state)
	case verbSetAddr:
		return "set server " + target + " addr " + c.addr + " port " + strconv.Itoa(c.port)
	case verbSetWeight:
		return "set server " + target + " weight " + strconv.Itoa(c.weight)
	case verbShutdownSessions:
		return "shutdown sessions server " + target
	case verbEnableHealth:
		return "enable health " + target
	case verbAddMap:
		return "add map " + c.file + " " + c.key + " " + c.value
	case verbSetMap:
		return "set map " + c.file + " " + c.key + " " + c.value
	case verbDelMap:
		return "del map " + c.file + " " + c.key
	case verbClearMap:
		return "clear map " + c.file
	case verbAddACL:
		return "add acl " + c.file + " " + c.key
	case verbDelACL:
		return "del acl " + c.file + " " + c.key
	case verbClearACL:
		return "clear acl " + c.file
	}
	return ""
}

// hostPort formats addr:port the way HAProxy's server line wants it (an
// IPv6 address followed by :port needs no brackets there, but brackets are
// accepted and unambiguous).
func hostPort(addr string, port int) string {
	if strings.Contains(addr, ":") {
		return "[" + addr + "]:" + strconv.Itoa(port)
	}
	return addr + ":" + strconv.Itoa(port)
}

// validate refuses arguments that could change the meaning of the command
// line: the runtime API splits on spaces and ends a command at a newline or
// a semicolon.
func (c Command) validate() error {
	if c.verb.onPatterns() {
		return c.validatePatterns()
	}
	check := checkToken
	if err := check("backend", c.backend); err != nil {
		return err
	}
	if err := check("server", c.server); err != nil {
		return err
	}
	switch c.verb {
	case verbAddServer:
		if err := check("address", c.spec.Addr); err != nil {
			return err
		}
		if c.spec.ID <= 0 {
			return fmt.Errorf("%w: server %s/%s needs an explicit id > 0", ErrInvalidArgument, c.backend, c.server)
		}
		if c.spec.Port <= 0 || c.spec.Port > 65535 {
			return fmt.Errorf("%w: port %d", ErrInvalidArgument, c.spec.Port)
		}
		if c.spec.Weight < 0 || c.spec.Weight > 256 {
			return fmt.Errorf("%w: weight %d", ErrInvalidArgument, c.spec.Weight)
		}
		for _, o := range c.spec.Options {
			if err := check("option", o); err != nil {
				return err
			}
		}
	case verbSetState:
		switch c.state {
		case StateReady, StateDrain, StateMaint:
		default:
			return fmt.Errorf("%w: state %q", ErrInvalidArgument, c.state)
		}
	case verbSetAddr:
		if err := check("address", c.addr); err != nil {
			return err
		}
		if c.port <= 0 || c.port > 65535 {
			return fmt.Errorf("%w: port %d", ErrInvalidArgument, c.port)
		}
	case verbSetWeight:
		if c.weight < 0 || c.weight > 256 {
			return fmt.Errorf("%w: weight %d", ErrInvalidArgument, c.weight)
		}
	}
	return nil
}

// validatePatterns checks the arguments of a map or ACL command.
func (c Command) validatePatterns() error {
	if err := checkFile(c.file); err != nil {
		return err
	}
	switch c.verb {
	case verbAddMap, verbSetMap:
		if err := checkPattern("map key", c.key); err != nil {
			return err
		}
		return checkPattern("map value", c.value)
	case verbDelMap:
		return checkPattern("map key", c.key)
	case verbAddACL, verbDelACL:
		return checkPattern("acl pattern", c.key)
	}
	return nil
}

// checkToken refuses an argument that is empty or holds a character that
// would end the argument or the command (space, newline, ';'), start a
// comment, or separate backend from server.
func checkToken(what, s string) error {
	return checkChars(what, s, "/")
}

// checkPattern refuses a map key or value, or an ACL pattern, that would
// not reach HAProxy as one argument. '/' is fine there (CIDRs, "tcp/0").
func checkPattern(what, s string) error {
	return checkChars(what, s, "")
}

// checkFile refuses a map or ACL file that is not an absolute path or
// holds a character that would change the command line. HAProxy finds a
// map by the file name exactly as the configuration references it, so
// relative names are a mistake waiting to happen.
func checkFile(file string) error {
	if err := checkChars("map file", file, ""); err != nil {
		return err
	}
	if !strings.HasPrefix(file, "/") {
		return fmt.Errorf("%w: map file %q is not an absolute path", ErrInvalidArgument, file)
	}
	return nil
}

// checkChars refuses an empty argument and one that holds a space or
// control character, ';' (ends a command), '#' (comment, or a map "#id"),
// a backslash or quote (escaping), a character outside ASCII, or one of
// extra.
func checkChars(what, s, extra string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalidArgument, what)
	}
	for _, r := range s {
		if r <= ' ' || r == ';' || r == '#' || r == '\\' || r == '\'' || r == '"' || r > '~' || strings.ContainsRune(extra, r) {
			return fmt.Errorf("%w: %s %q contains %q", ErrInvalidArgument, what, s, r)
		}
	}
	return nil
}

// Batch collects runtime API commands to send over one connection. The zero
// value is empty and ready to use.
type Batch struct {
	cmds []Command
}

// Len is the number of commands.
func (b *Batch) Len() int { return len(b.cmds) }

// Commands returns the commands as HAProxy reads them.
func (b *Batch) Commands() []string {
	out := make([]string, len(b.cmds))
	for i, c := range b.cmds {
		out[i] = c.String()
	}
	return out
}

// AddServer adds a server; HAProxy creates it in maintenance, so follow it
// with SetState(..., StateReady) for it to take traffic.
func (b *Batch) AddServer(backend string, spec ServerSpec) {
	b.cmds = append(b.cmds, Command{verb: verbAddServer, backend: backend, server: spec.Name, spec: spec})
}

// DelServer deletes a server, which must be in maintenance with no
// connection attached.
func (b *Batch) DelServer(backend, server string) {
	b.cmds = append(b.cmds, Command{verb: verbDelServer, backend: backend, server: server})
}

// SetState sets a server's administrative state.
func (b *Batch) SetState(backend, server string, state State) {
	b.cmds = append(b.cmds, Command{verb: verbSetState, backend: backend, server: server, state: state})
}

// SetAddr changes a server's address and port.
func (b *Batch) SetAddr(backend, server, addr string, port int) {
	b.cmds = append(b.cmds, Command{verb: verbSetAddr, backend: backend, server: server, addr: addr, port: port})
}

// SetWeight changes a server's weight (0..256).
func (b *Batch) SetWeight(backend, server string, weight int) {
	b.cmds = append(b.cmds, Command{verb: verbSetWeight, backend: backend, server: server, weight: weight})
}

// ShutdownSessions closes every connection attached to a server.
func (b *Batch) ShutdownSessions(backend, server string) {
	b.cmds = append(b.cmds, Command{verb: verbShutdownSessions, backend: backend, server: server})
}

// EnableHealth starts the health checks of a server added with "check":
// HAProxy adds such a server with its checks stopped. A server without
// "check" fails with ErrNoHealthCheck.
func (b *Batch) EnableHealth(backend, server string) {
	b.cmds = append(b.cmds, Command{verb: verbEnableHealth, backend: backend, server: server})
}

// AddMap adds an entry to a map; mapFile is the map's file as the
// configuration references it. HAProxy does not look for an existing entry:
// adding a key the map holds adds a duplicate, which "show map" lists but
// lookups never return (map_str returns the entry inserted first). So use
// AddMap only for new keys and SetMap for existing ones. HAProxy 2.6 does
// not check that mapFile is a map: AddMap and SetMap on an ACL file succeed
// and give its pattern a value.
func (b *Batch) AddMap(mapFile, key, value string) {
	b.cmds = append(b.cmds, Command{verb: verbAddMap, file: mapFile, key: key, value: value})
}

// SetMap changes the value of every entry with key; a key the map does
// not hold fails with ErrNoSuchEntry (nothing is added).
func (b *Batch) SetMap(mapFile, key, value string) {
	b.cmds = append(b.cmds, Command{verb: verbSetMap, file: mapFile, key: key, value: value})
}

// DelMap deletes every entry with key (duplicates included); a key the map
// does not hold fails with ErrNoSuchEntry.
func (b *Batch) DelMap(mapFile, key string) {
	b.cmds = append(b.cmds, Command{verb: verbDelMap, file: mapFile, key: key})
}

// ClearMap deletes every entry of a map.
func (b *Batch) ClearMap(mapFile string) {
	b.cmds = append(b.cmds, Command{verb: verbClearMap, file: mapFile})
}

// AddACL adds a pattern (value) to an ACL file. As with AddMap, a pattern
// the ACL holds is added again. HAProxy parses the pattern with the ACL's
// match method: for "src -f <file>" it must be an address or CIDR, else
// the command fails with ErrInvalidArgument.
func (b *Batch) AddACL(aclFile, value string) {
	b.cmds = append(b.cmds, Command{verb: verbAddACL, file: aclFile, key: value})
}

// DelACL deletes every copy of a pattern; a pattern the ACL does not hold
// fails with ErrNoSuchEntry.
func (b *Batch) DelACL(aclFile, value string) {
	b.cmds = append(b.cmds, Command{verb: verbDelACL, file: aclFile, key: value})
}

// ClearACL deletes every pattern of an ACL file.
func (b *Batch) ClearACL(aclFile string) {
	b.cmds = append(b.cmds, Command{verb: verbClearACL, file: aclFile})
}

// validate checks every command before anything is sent, so a bad argument
// never leaves a batch half applied.
func (b *Batch) validate() error {
	var errs []error
	for i, c := range b.cmds {
		if err := c.validate(); err != nil {
			errs = append(errs, fmt.Errorf("command %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}
