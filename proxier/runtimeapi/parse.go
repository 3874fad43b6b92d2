package runtimeapi

import (
	"encoding/csv"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// knownErrors maps HAProxy 2.6's answers (checked against the real
// process) to sentinel errors. First match wins.
var knownErrors = []struct {
	text string
	err  error
}{
	{"No such backend.", ErrNoSuchBackend},
	{"Can't find backend.", ErrNoSuchBackend},
	{"No such server.", ErrNoSuchServer},
	{"Already exists a server with the same name in backend.", ErrServerExists},
	{"already used at", ErrIDInUse},
	{"Backend must use a dynamic load balancing to support dynamic servers.", ErrNotDynamicBackend},
	{"Only servers in maintenance mode can be deleted.", ErrNotInMaintenance},
	{"Server still has connections attached to it, cannot remove it.", ErrServerHasConns},
	{"Unknown command", ErrUnknownCommand},
	{"Permission denied", ErrPermissionDenied},
	{"custom id has to be > 0", ErrInvalidArgument},
	{"Absolute weight can only be between", ErrInvalidArgument},
	{"Invalid addr", ErrInvalidArgument},
	{"unknown keyword", ErrInvalidArgument},
	{"expects 'ready', 'drain' and 'maint'", ErrInvalidArgument},
	{"Require ", ErrInvalidArgument},
	// Map and ACL commands. "Unknown ACL identifier" answers "add acl" and
	// "clear acl"; "del acl" on an unknown file answers with the map text.
	{"Unknown map identifier.", ErrNoSuchMap},
	{"Unknown ACL identifier.", ErrNoSuchMap},
	{"This ACL is shared with a map containing samples.", ErrNoSuchMap}, // add acl on a map
	{"entry not found.", ErrNoSuchEntry},                                // set map
	{"Key not found.", ErrNoSuchEntry},                                  // del map, del acl
	{"is not a valid IPv4 or IPv6 address.", ErrInvalidArgument},
	{"Health check was not configured on this server", ErrNoHealthCheck},
	{"expects three parameters", ErrInvalidArgument},
	{"expects two parameters", ErrInvalidArgument},
	{"Missing map identifier.", ErrInvalidArgument},
	{"Missing ACL identifier.", ErrInvalidArgument},
}

// classify turns the answer to one command into nil or an error. HAProxy's
// answers carry no status code: success is a known text per command.
func classify(c Command, response string) error {
	resp := strings.TrimSpace(response)
	ok := false
	switch c.verb {
	case verbAddServer:
		ok = resp == "New server registered."
	case verbDelServer:
		ok = resp == "Server deleted."
	case verbSetState, verbSetWeight, verbShutdownSessions, verbEnableHealth:
		ok = resp == ""
	case verbAddMap, verbSetMap, verbDelMap, verbClearMap, verbAddACL, verbDelACL, verbClearACL:
		// HAProxy 2.6 answers nothing when a map or ACL command succeeds.
		ok = resp == ""
	case verbSetAddr:
		ok = strings.Contains(resp, " changed from ") || strings.HasPrefix(resp, "no need to change")
	}
	if ok {
		return nil
	}
	return responseError(resp)
}

// responseError maps an unsuccessful answer to its sentinel error.
func responseError(resp string) error {
	for _, k := range knownErrors {
		if strings.Contains(resp, k.text) {
			return k.err
		}
	}
	return ErrUnexpectedResponse
}

// serversStateColumns are the leading columns of "show servers state"
// (format version 1), the ones this package reads.
var serversStateColumns = []string{"be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state", "srv_uweight", "srv_iweight", "srv_time_since_last_change", "srv_check_status", "srv_check_result", "srv_check_health", "srv_check_state", "srv_agent_state", "bk_f_forced_id", "srv_f_forced_id", "srv_fqdn", "srv_port"}

// parseServersState parses the answer to "show servers state".
func parseServersState(out string) ([]ServerStatus, error) {
	out = strings.TrimSpace(out)
	if out == "" {
		return nil, fmt.Errorf("%w: empty answer to show servers state", ErrUnexpectedResponse)
	}
	lines := strings.Split(out, "\n")
	if lines[0] != "1" {
		if err := responseError(out); err != ErrUnexpectedResponse {
			return nil, err
		}
		return nil, fmt.Errorf("%w: servers state format %q (want 1)", ErrUnexpectedResponse, lines[0])
	}
	var index map[string]int
	var servers []ServerStatus
	for _, line := range lines[1:] {
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			cols := strings.Fields(strings.TrimPrefix(line, "#"))
			index = make(map[string]int, len(cols))
			for i, c := range cols {
				index[c] = i
			}
			for _, c := range serversStateColumns {
				if _, ok := index[c]; !ok {
					return nil, fmt.Errorf("%w: servers state lacks column %s", ErrUnexpectedResponse, c)
				}
			}
			continue
		}
		if index == nil {
			return nil, fmt.Errorf("%w: servers state without header", ErrUnexpectedResponse)
		}
		f := strings.Fields(line)
		if len(f) < len(index) {
			return nil, fmt.Errorf("%w: short servers state line %q", ErrUnexpectedResponse, line)
		}
		var s ServerStatus
		var err error
		num := func(col string) int {
			if err != nil {
				return 0
			}
			var n int
			n, err = strconv.Atoi(f[index[col]])
			return n
		}
		s.BackendID = num("be_id")
		s.Backend = f[index["be_name"]]
		s.ID = num("srv_id")
		s.Name = f[index["srv_name"]]
		s.Addr = f[index["srv_addr"]]
		s.OpState = num("srv_op_state")
		s.AdminFlags = num("srv_admin_state")
		s.Weight = num("srv_uweight")
		s.Port = num("srv_port")
		if err != nil {
			return nil, fmt.Errorf("%w: servers state line %q: %w", ErrUnexpectedResponse, line, err)
		}
		servers = append(servers, s)
	}
	return servers, nil
}

// parseStat parses the CSV answer to "show stat".
func parseStat(out string) ([]StatRow, error) {
	out = strings.TrimSpace(out)
	if !strings.HasPrefix(out, "# ") {
		if err := responseError(out); err != ErrUnexpectedResponse {
			return nil, err
		}
		return nil, fmt.Errorf("%w: show stat answered %q", ErrUnexpectedResponse, firstLine(out))
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%w: show stat: %w", ErrUnexpectedResponse, err)
	}
	header := recs[0]
	rows := make([]StatRow, 0, len(recs)-1)
	for _, rec := range recs[1:] {
		row := StatRow{Fields: make(map[string]string, len(header))}
		for i, h := range header {
			if i < len(rec) && h != "" {
				row.Fields[h] = rec[i]
			}
		}
		row.Proxy = row.Fields["pxname"]
		row.Name = row.Fields["svname"]
		row.Status = row.Fields["status"]
		row.CurrentSessions, _ = strconv.Atoi(row.Fields["scur"])
		rows = append(rows, row)
	}
	return rows, nil
}

// ProcInfo is the answer to the master CLI's "show proc".
type ProcInfo struct {
	MasterPID int
	// Reloads counts the master's reloads since it started.
	Reloads int
	// FailedReloads counts failed reloads since the last successful one.
	FailedReloads int
	// Workers lists the worker processes, current and old (still serving
	// connections opened before a reload).
	Workers []Worker
}

// Worker is one worker process.
type Worker struct {
	PID int
	// Reloads counts the reloads this worker has survived: 0 for the
	// current worker, more for old workers that are finishing connections.
	Reloads int
	Uptime  string
	Version string
}

// CurrentWorker returns the worker that serves new connections (the one
// that has survived no reload), or nil when there is none.
func (p *ProcInfo) CurrentWorker() *Worker {
	var cur *Worker
	for i := range p.Workers {
		w := &p.Workers[i]
		if cur == nil || w.Reloads < cur.Reloads {
			cur = w
		}
	}
	if cur == nil || cur.Reloads != 0 {
		return nil
	}
	return cur
}

var masterLine = regexp.MustCompile(`^(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]`)

// parseShowProc parses the answer to "show proc" of HAProxy 2.6.
func parseShowProc(out string) (*ProcInfo, error) {
	var p ProcInfo
	seenMaster := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if m := masterLine.FindStringSubmatch(line); m != nil {
			p.MasterPID, _ = strconv.Atoi(m[1])
			p.Reloads, _ = strconv.Atoi(m[2])
			p.FailedReloads, _ = strconv.Atoi(m[3])
			seenMaster = true
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == "worker" {
			var w Worker
			var err1, err2 error
			w.PID, err1 = strconv.Atoi(f[0])
			w.Reloads, err2 = strconv.Atoi(f[2])
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("%w: show proc line %q", ErrUnexpectedResponse, line)
			}
			if len(f) > 3 {
				w.Uptime = f[3]
			}
			if len(f) > 4 {
				w.Version = f[4]
			}
			p.Workers = append(p.Workers, w)
		}
	}
	if !seenMaster {
		return nil, fmt.Errorf("%w: show proc answered %q", ErrUnexpectedResponse, firstLine(out))
	}
	return &p, nil
}

// ReloadOutcome compares "show proc" before and after a reload request.
// done is false while the master has not finished the reload; ok says
// whether a new worker took over. A failed reload in 2.6 bumps the reload
// count and the failed count, and the old worker stays current.
func ReloadOutcome(before, after *ProcInfo) (done, ok bool) {
	if after.Reloads <= before.Reloads {
		return false, false
	}
	if after.FailedReloads > 0 {
		return true, false
	}
	cur, prev := after.CurrentWorker(), before.CurrentWorker()
	if cur == nil {
		// The new worker may not be listed yet.
		return false, false
	}
	if prev != nil && cur.PID == prev.PID {
		return true, false
	}
	return true, true
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// parseBackends parses the answer to "show backend": a "# name" header,
// then one name per line.
func parseBackends(out string) ([]string, error) {
	out = strings.TrimSpace(out)
	lines := strings.Split(out, "\n")
	if lines[0] != "# name" {
		if err := responseError(out); err != ErrUnexpectedResponse {
			return nil, err
		}
		return nil, fmt.Errorf("%w: show backend answered %q", ErrUnexpectedResponse, firstLine(out))
	}
	names := make([]string, 0, len(lines)-1)
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			names = append(names, l)
		}
	}
	return names, nil
}

// parseMap parses the answer to "show map <file>": one "<ptr> <key>
// <value>" line per entry, the value being the rest of the line. An empty
// map is an empty answer. It walks the answer once and keeps substrings of
// it: a map of 250,000 entries is a 15 MB answer.
func parseMap(out string) ([]MapEntry, error) {
	entries := make([]MapEntry, 0, strings.Count(out, "\n"))
	err := eachPatternLine(out, "show map", func(line string) error {
		key, value, ok := strings.Cut(line, " ")
		if !ok || key == "" {
			return fmt.Errorf("%w: show map line %q", ErrUnexpectedResponse, line)
		}
		entries = append(entries, MapEntry{Key: key, Value: value})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return entries, nil
}

// parseACL parses the answer to "show acl <file>": one "<ptr> <pattern>"
// line per pattern.
func parseACL(out string) ([]string, error) {
	values := make([]string, 0, strings.Count(out, "\n"))
	err := eachPatternLine(out, "show acl", func(line string) error {
		values = append(values, line)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return values, nil
}

// eachPatternLine calls fn with each line of a "show map <file>" or "show
// acl <file>" answer, without the leading entry pointer. An answer that
// does not start with a pointer is HAProxy's error text.
func eachPatternLine(out, cmd string, fn func(line string) error) error {
	if t := strings.TrimSpace(out); t != "" && !strings.HasPrefix(t, "0x") {
		return fmt.Errorf("%w: %s answered %q", responseError(t), cmd, firstLine(t))
	}
	for len(out) > 0 {
		line := out
		if i := strings.IndexByte(out, '\n'); i >= 0 {
			line, out = out[:i], out[i+1:]
		} else {
			out = ""
		}
		if line == "" {
			continue
		}
		ptr, rest, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(ptr, "0x") || rest == "" {
			return fmt.Errorf("%w: %s line %q", ErrUnexpectedResponse, cmd, line)
		}
		if err := fn(rest); err != nil {
			return err
		}
	}
	return nil
}

// parseMaps parses the answer to "show map": a "# id (file) description"
// header, then "<id> (<file>) pattern loaded from file ..." per map.
func parseMaps(out string) ([]string, error) {
	out = strings.TrimSpace(out)
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "# id") {
		if err := responseError(out); err != ErrUnexpectedResponse {
			return nil, err
		}
		return nil, fmt.Errorf("%w: show map answered %q", ErrUnexpectedResponse, firstLine(out))
	}
	var files []string
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		_, rest, _ := strings.Cut(l, " (")
		file, _, ok := strings.Cut(rest, ") ")
		if !ok {
			return nil, fmt.Errorf("%w: show map line %q", ErrUnexpectedResponse, l)
		}
		// Maps always come from a file; an inline list would show "()".
		if file != "" {
			files = append(files, file)
		}
	}
	return files, nil
}
