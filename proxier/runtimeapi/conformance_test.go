package runtimeapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

// step is one batch of a scenario and the sentinel error each of its
// commands must produce (nil: success).
type step struct {
	name  string
	build func(b *Batch)
	want  []error
}

// conformance runs the same scenario against an Interface: the Fake must
// behave as the real HAProxy does. holdConn attaches one connection to
// dyn/s2 (which is ready at that point).
func conformance(t *testing.T, api Interface, s2Addr string, s2Port int, holdConn func(t *testing.T) (release func())) {
	ctx := context.Background()
	run := func(st step) {
		t.Helper()
		var b Batch
		st.build(&b)
		err := api.Run(ctx, &b)
		failed := map[int]error{}
		if err != nil {
			var be *BatchError
			require.ErrorAs(t, err, &be, "%s", st.name)
			for _, f := range be.Failed {
				failed[f.Index] = f
			}
		}
		require.Len(t, st.want, b.Len(), st.name)
		for i, want := range st.want {
			if want == nil {
				require.NoError(t, failed[i], "%s: command %d %q", st.name, i, b.Commands()[i])
			} else {
				require.ErrorIs(t, failed[i], want, "%s: command %d %q", st.name, i, b.Commands()[i])
			}
		}
	}
	state := func(name string) ServerStatus {
		t.Helper()
		servers, err := api.ShowServers(ctx, "dyn")
		require.NoError(t, err)
		for _, s := range servers {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("server dyn/%s not loaded; have %+v", name, servers)
		return ServerStatus{}
	}

	run(step{"add", func(b *Batch) {
		b.AddServer("dyn", ServerSpec{Name: "s2", ID: 2, Addr: s2Addr, Port: s2Port})
		b.AddServer("dyn", ServerSpec{Name: "s2", ID: 3, Addr: s2Addr, Port: s2Port})
		b.AddServer("dyn", ServerSpec{Name: "s3", ID: 2, Addr: s2Addr, Port: s2Port})
		b.AddServer("nope", ServerSpec{Name: "s3", ID: 3, Addr: s2Addr, Port: s2Port})
		b.AddServer("static", ServerSpec{Name: "s3", ID: 3, Addr: s2Addr, Port: s2Port})
	}, []error{nil, ErrServerExists, ErrIDInUse, ErrNoSuchBackend, ErrNotDynamicBackend}})
	s2 := state("s2")
	require.Equal(t, StateMaint, s2.State(), "added servers start in maintenance")
	require.Equal(t, 2, s2.ID)
	require.Equal(t, s2Addr, s2.Addr)
	require.Equal(t, s2Port, s2.Port)

	run(step{"health checks", func(b *Batch) {
		b.AddServer("dyn", ServerSpec{Name: "c1", ID: 9, Addr: s2Addr, Port: s2Port, Options: []string{"check", "inter", "1s"}})
		b.EnableHealth("dyn", "c1")
		b.EnableHealth("dyn", "s2")
		b.EnableHealth("dyn", "zz")
		b.EnableHealth("nope", "c1")
	}, []error{nil, nil, ErrNoHealthCheck, ErrNoSuchServer, ErrNoSuchBackend}})
	run(step{"a checked server is deleted like any other", func(b *Batch) {
		b.DelServer("dyn", "c1")
	}, []error{nil}})

	run(step{"unknown and not in maintenance", func(b *Batch) {
		b.DelServer("dyn", "s1")
		b.DelServer("dyn", "zz")
		b.DelServer("nope", "zz")
		b.SetState("dyn", "zz", StateReady)
		b.SetState("nope", "s1", StateReady)
		b.ShutdownSessions("dyn", "zz")
	}, []error{ErrNotInMaintenance, ErrNoSuchServer, ErrNoSuchBackend, ErrNoSuchServer, ErrNoSuchBackend, ErrNoSuchServer}})

	run(step{"modify", func(b *Batch) {
		b.SetWeight("dyn", "s2", 7)
		b.SetAddr("dyn", "s2", "127.0.0.99", 81)
		b.SetAddr("dyn", "s2", s2Addr, s2Port)
		b.SetState("dyn", "s2", StateReady)
		b.SetState("dyn", "s1", StateMaint)
	}, []error{nil, nil, nil, nil, nil}})
	s2 = state("s2")
	require.Equal(t, StateReady, s2.State())
	require.Equal(t, 7, s2.Weight)
	require.Equal(t, StateMaint, state("s1").State())

	release := holdConn(t)
	defer release()
	run(step{"drain then delete with a connection attached", func(b *Batch) {
		b.SetState("dyn", "s2", StateDrain)
		b.DelServer("dyn", "s2")
		b.SetState("dyn", "s2", StateMaint)
		b.DelServer("dyn", "s2")
	}, []error{nil, ErrNotInMaintenance, nil, ErrServerHasConns}})
	require.Equal(t, StateMaint, state("s2").State())

	run(step{"shutdown sessions", func(b *Batch) { b.ShutdownSessions("dyn", "s2") }, []error{nil}})
	// Closing the sessions completes asynchronously in HAProxy.
	waitFor(t, func() bool {
		var b Batch
		b.DelServer("dyn", "s2")
		return api.Run(ctx, &b) == nil
	})
	servers, err := api.ShowServers(ctx, "dyn")
	require.NoError(t, err)
	require.Len(t, servers, 1)
	require.Equal(t, "s1", servers[0].Name)

	_, err = api.ShowServers(ctx, "nope")
	require.ErrorIs(t, err, ErrNoSuchBackend)

	backends, err := api.ShowBackends(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"dyn", "static"}, backends)

	rows, err := api.ShowStat(ctx)
	require.NoError(t, err)
	found := false
	for _, r := range rows {
		if r.Proxy == "dyn" && r.Name == "s1" {
			found = true
			require.Equal(t, "MAINT", r.Status)
		}
	}
	require.True(t, found, "show stat lists dyn/s1: %+v", rows)

	// Filtered: only the named backends' rows; an unknown name has none.
	rows, err = api.ShowStat(ctx, "static", "nope")
	require.NoError(t, err)
	var got []string
	for _, r := range rows {
		got = append(got, r.Proxy+"/"+r.Name)
	}
	require.ElementsMatch(t, []string{"static/s1", "static/BACKEND"}, got)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFakeConformance(t *testing.T) {
	f := NewFake()
	f.LoadBackend("dyn", true, FakeServer{ServerStatus: ServerStatus{Name: "s1", ID: 1, Addr: "127.0.0.51", Port: 8080}})
	f.LoadBackend("static", false, FakeServer{ServerStatus: ServerStatus{Name: "s1", ID: 1, Addr: "127.0.0.51", Port: 8080}})
	conformance(t, f, "127.0.0.52", 8080, func(t *testing.T) func() {
		require.NoError(t, f.SetSessions("dyn", "s2", 1))
		return func() {}
	})
}

func TestClientConformance(t *testing.T) {
	backendLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer backendLn.Close()
	feLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fePort := feLn.Addr().(*net.TCPAddr).Port
	feLn.Close()

	in := haproxytest.Start(t, `
frontend fe
  bind 127.0.0.1:`+strconv.Itoa(fePort)+`
  default_backend dyn
backend dyn
  balance roundrobin
  server s1 127.0.0.51:8080 id 1
backend static
  balance source
  server s1 127.0.0.51:8080 id 1
`)
	api := New(in.StatsSocket)
	ba := backendLn.Addr().(*net.TCPAddr)
	conformance(t, api, ba.IP.String(), ba.Port, func(t *testing.T) func() {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(fePort))
		require.NoError(t, err)
		srv, err := backendLn.Accept()
		require.NoError(t, err)
		// HAProxy counts the session once the connection to the server is up.
		waitFor(t, func() bool {
			rows, err := api.ShowStat(context.Background())
			require.NoError(t, err)
			for _, r := range rows {
				if r.Proxy == "dyn" && r.Name == "s2" {
					return r.CurrentSessions == 1
				}
			}
			return false
		})
		return func() { c.Close(); srv.Close() }
	})
}

func TestClientBatchLarge(t *testing.T) {
	in := haproxytest.Start(t, `
backend dyn
  balance roundrobin
`)
	api := New(in.StatsSocket)
	var b Batch
	const n = 1000
	for i := 1; i <= n; i++ {
		b.AddServer("dyn", ServerSpec{Name: "s" + strconv.Itoa(i), ID: i, Addr: "127.0.0.1", Port: 10000 + i})
		b.SetState("dyn", "s"+strconv.Itoa(i), StateReady)
	}
	require.NoError(t, New(in.StatsSocket).Run(context.Background(), &b))
	servers, err := api.ShowServers(context.Background(), "dyn")
	require.NoError(t, err)
	require.Len(t, servers, n)
	for _, s := range servers {
		require.Equal(t, StateReady, s.State(), s.Name)
	}
}

func TestMasterShowProcAndReload(t *testing.T) {
	in := haproxytest.Start(t, `
backend dyn
  balance roundrobin
`)
	m := NewMaster(in.MasterSocket)
	ctx := context.Background()
	before, err := m.ShowProc(ctx)
	require.NoError(t, err)
	require.Equal(t, in.MasterPID(), before.MasterPID)
	require.NotNil(t, before.CurrentWorker())

	require.NoError(t, m.Reload(ctx))
	var after *ProcInfo
	waitFor(t, func() bool {
		after, err = m.ShowProc(ctx)
		if err != nil {
			return false // the master re-executes itself and rebinds its socket
		}
		done, _ := ReloadOutcome(before, after)
		return done
	})
	_, ok := ReloadOutcome(before, after)
	require.True(t, ok, "reload succeeded: before %+v after %+v", before, after)
	require.Equal(t, before.MasterPID, after.MasterPID)

	// A configuration HAProxy refuses: the reload fails, the old worker stays.
	require.NoError(t, appendFile(in.Config, "\nnot_a_keyword\n"))
	before = after
	require.NoError(t, m.Reload(ctx))
	waitFor(t, func() bool {
		after, err = m.ShowProc(ctx)
		if err != nil {
			return false
		}
		done, _ := ReloadOutcome(before, after)
		return done
	})
	_, ok = ReloadOutcome(before, after)
	require.False(t, ok, "reload of a bad config must fail: before %+v after %+v", before, after)
	require.Equal(t, 1, after.FailedReloads)
	require.Contains(t, pids(after.Workers), before.CurrentWorker().PID, "old worker keeps serving")
}

func pids(ws []Worker) []int {
	var out []int
	for _, w := range ws {
		out = append(out, w.PID)
	}
	return out
}

func TestInvalidArgumentsNeverSent(t *testing.T) {
	f := NewFake()
	f.LoadBackend("dyn", true)
	for name, build := range map[string]func(b *Batch){
		"newline in name": func(b *Batch) { b.DelServer("dyn", "a\nshutdown sessions server x/y") },
		"semicolon":       func(b *Batch) { b.DelServer("dyn;show info", "a") },
		"space in option": func(b *Batch) {
			b.AddServer("dyn", ServerSpec{Name: "a", ID: 1, Addr: "10.0.0.1", Port: 80, Options: []string{"check inter"}})
		},
		"missing id":       func(b *Batch) { b.AddServer("dyn", ServerSpec{Name: "a", Addr: "10.0.0.1", Port: 80}) },
		"bad port":         func(b *Batch) { b.SetAddr("dyn", "a", "10.0.0.1", 70000) },
		"weight too large": func(b *Batch) { b.SetWeight("dyn", "a", 300) },
		"bad state":        func(b *Batch) { b.SetState("dyn", "a", State("up")) },
		"relative map":     func(b *Batch) { b.AddMap("services.map", "k", "v") },
		"space in map":     func(b *Batch) { b.ClearMap("/etc/my maps/x.map") },
		"map by id":        func(b *Batch) { b.ClearMap("/x#1") },
		"empty map value":  func(b *Batch) { b.SetMap("/x.map", "k", "") },
		"empty map key":    func(b *Batch) { b.DelMap("/x.map", "") },
		"space in value":   func(b *Batch) { b.AddMap("/x.map", "k", "a b") },
		"newline in key":   func(b *Batch) { b.AddMap("/x.map", "k\nclear map /x.map", "v") },
		"semicolon in acl": func(b *Batch) { b.AddACL("/x.acl", "10.0.0.0/8;clear acl /x.acl") },
		"quote in value":   func(b *Batch) { b.AddMap("/x.map", "k", `"v"`) },
		"backslash in acl": func(b *Batch) { b.DelACL("/x.acl", `10.0.0.0\/8`) },
		"non-ASCII key":    func(b *Batch) { b.AddMap("/x.map", "ké", "v") },
		"tab in file":      func(b *Batch) { b.ClearACL("/x\t.acl") },
	} {
		t.Run(name, func(t *testing.T) {
			var b Batch
			b.AddServer("dyn", ServerSpec{Name: "ok", ID: 9, Addr: "10.0.0.9", Port: 80})
			build(&b)
			err := f.Run(context.Background(), &b)
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.Nil(t, f.Server("dyn", "ok"), "nothing of a batch with a bad argument is applied")
		})
	}
}

func TestBatchErrorUnwrap(t *testing.T) {
	err := error(&BatchError{Failed: []*CommandError{{Index: 0, Command: "del server a/b", Response: "No such server.", Err: ErrNoSuchServer}}})
	require.ErrorIs(t, err, ErrNoSuchServer)
	require.False(t, errors.Is(err, ErrNoSuchBackend))
	require.Contains(t, err.Error(), "No such server.")
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(s)
	return err
}

// BenchmarkClientBatch adds and readies 1,000 servers in one batch on a
// real HAProxy, then deletes them.
func BenchmarkClientBatch(b *testing.B) {
	in := haproxytest.Start(b, "backend dyn\n  balance roundrobin\n")
	api := New(in.StatsSocket)
	const n = 1000
	for i := 0; i < b.N; i++ {
		var add, del Batch
		for j := 1; j <= n; j++ {
			name := "s" + strconv.Itoa(j)
			add.AddServer("dyn", ServerSpec{Name: name, ID: j, Addr: "127.0.0.1", Port: 10000 + j})
			add.SetState("dyn", name, StateReady)
			del.SetState("dyn", name, StateMaint)
			del.DelServer("dyn", name)
		}
		if err := api.Run(context.Background(), &add); err != nil {
			b.Fatal(err)
		}
		if err := api.Run(context.Background(), &del); err != nil {
			b.Fatal(err)
		}
	}
}

// answer is HAProxy's answer to one command ("" for success) and the
// sentinel error it maps to.
type answer struct {
	text string
	err  error
}

// HAProxy 2.6's answers to map and ACL commands.
var (
	okAnswer         = answer{}
	unknownMapAnswer = answer{"Unknown map identifier. Please use #<id> or <file>.", ErrNoSuchMap}
	unknownACLAnswer = answer{"Unknown ACL identifier. Please use #<id> or <file>.", ErrNoSuchMap}
	noEntryAnswer    = answer{"entry not found.", ErrNoSuchEntry}
	noKeyAnswer      = answer{"Key not found.", ErrNoSuchEntry}
	aclIsMapAnswer   = answer{"This ACL is shared with a map containing samples. You must use the command 'add map' to add values.", ErrNoSuchMap}
)

func invalidIPAnswer(s string) answer {
	return answer{"'" + s + "' is not a valid IPv4 or IPv6 address.", ErrInvalidArgument}
}

// patternFiles names the files of the map conformance scenario. services
// starts with servicesAtLoad, other empty, acl with aclAtLoad; the nope
// files are not loaded.
type patternFiles struct {
	services, other, acl, nopeMap, nopeACL string
}

var (
	servicesAtLoad = []MapEntry{
		{"10.96.0.10:80", "default.web:http:tcp|default.web:http:tcp|reject|0"},
		{"10.96.0.11:80", "a"},
		{"10.96.0.11:80", "b"},
	}
	aclAtLoad = []string{"10.244.0.0/16"}
)

// mapConformance runs one map and ACL scenario against an Interface: the
// Fake must answer and end in the same state as HAProxy. lookup returns
// what map_str(services) gives for a key (Fake.LookupMap, or traffic
// through a real frontend).
func mapConformance(t *testing.T, api Interface, fs patternFiles, lookup func(t *testing.T, key string) (string, bool)) {
	ctx := context.Background()
	run := func(name string, build func(b *Batch), want ...answer) {
		t.Helper()
		var b Batch
		build(&b)
		err := api.Run(ctx, &b)
		failed := map[int]*CommandError{}
		if err != nil {
			var be *BatchError
			require.ErrorAs(t, err, &be, "%s", name)
			for _, f := range be.Failed {
				failed[f.Index] = f
			}
		}
		require.Len(t, want, b.Len(), name)
		for i, w := range want {
			cmd := b.Commands()[i]
			if w.text == "" {
				require.Nil(t, failed[i], "%s: command %d %q", name, i, cmd)
				continue
			}
			require.NotNil(t, failed[i], "%s: command %d %q must fail", name, i, cmd)
			require.Equal(t, w.text, failed[i].Response, "%s: command %d %q", name, i, cmd)
			require.ErrorIs(t, failed[i], w.err, "%s: command %d %q", name, i, cmd)
		}
	}
	showMap := func(file string) []MapEntry {
		t.Helper()
		entries, err := api.ShowMap(ctx, file)
		require.NoError(t, err)
		return entries
	}
	showACL := func(file string) []string {
		t.Helper()
		values, err := api.ShowACL(ctx, file)
		require.NoError(t, err)
		return values
	}
	requireLookup := func(key, want string, wantOK bool) {
		t.Helper()
		got, ok := lookup(t, key)
		require.Equal(t, wantOK, ok, "lookup %q", key)
		require.Equal(t, want, got, "lookup %q", key)
	}
	svc := fs.services

	maps, err := api.ShowMaps(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{fs.services, fs.other}, maps)
	require.Equal(t, servicesAtLoad, showMap(svc))
	require.Empty(t, showMap(fs.other))
	require.Equal(t, aclAtLoad, showACL(fs.acl))
	requireLookup("10.96.0.11:80", "a", true) // duplicates in the file: the first wins
	requireLookup("10.96.0.12:80", "", false)

	run("add", func(b *Batch) {
		b.AddMap(svc, "[fd00::1]:80", "default.web:http:tcp|x|reject|0")
		b.AddMap(svc, "*:30080", "2")
		b.AddMap(svc, "10.96.0.10:80", "dup")
		b.AddMap(svc, "default.web:http:tcp/ep3", "10.180.0.1|8080|3")
		b.AddMap(fs.nopeMap, "k", "v")
		b.AddACL(fs.acl, "fd00::/64")
		b.AddACL(fs.acl, "10.244.0.0/16")
		b.AddACL(fs.acl, "10.0.0.0/33")
		b.AddACL(fs.nopeACL, "10.0.0.0/8")
		b.AddACL(svc, "10.0.0.0/8")
	}, okAnswer, okAnswer, okAnswer, okAnswer, unknownMapAnswer,
		okAnswer, okAnswer, invalidIPAnswer("10.0.0.0/33"), unknownACLAnswer, aclIsMapAnswer)
	require.Equal(t, append(append([]MapEntry(nil), servicesAtLoad...),
		MapEntry{"[fd00::1]:80", "default.web:http:tcp|x|reject|0"},
		MapEntry{"*:30080", "2"},
		MapEntry{"10.96.0.10:80", "dup"}, // add map adds a duplicate
		MapEntry{"default.web:http:tcp/ep3", "10.180.0.1|8080|3"},
	), showMap(svc))
	requireLookup("10.96.0.10:80", "default.web:http:tcp|default.web:http:tcp|reject|0", true)
	requireLookup("[fd00::1]:80", "default.web:http:tcp|x|reject|0", true)
	require.Equal(t, []string{"10.244.0.0/16", "fd00::/64", "10.244.0.0/16"}, showACL(fs.acl))

	run("set and delete", func(b *Batch) {
		b.SetMap(svc, "*:30080", "3")
		b.SetMap(svc, "10.96.0.10:80", "both")
		b.SetMap(svc, "missing", "v")
		b.DelMap(svc, "missing")
		b.DelMap(svc, "[fd00::1]:80")
		b.DelMap(svc, "10.96.0.11:80")
		b.SetMap(fs.nopeMap, "k", "v")
		b.DelMap(fs.nopeMap, "k")
		b.DelACL(fs.acl, "10.244.0.0/16")
		b.DelACL(fs.acl, "10.1.0.0/16")
		b.DelACL(fs.nopeACL, "10.0.0.0/8")
		b.DelMap(fs.acl, "fd00::/64")
		b.DelACL(svc, "*:30080")
	}, okAnswer, okAnswer, noEntryAnswer, noKeyAnswer, okAnswer, okAnswer, unknownMapAnswer, unknownMapAnswer,
		okAnswer, noKeyAnswer, unknownMapAnswer, unknownMapAnswer, unknownMapAnswer)
	require.Equal(t, []MapEntry{
		{"10.96.0.10:80", "both"}, // set map changes every duplicate
		{"*:30080", "3"},
		{"10.96.0.10:80", "both"},
		{"default.web:http:tcp/ep3", "10.180.0.1|8080|3"},
	}, showMap(svc))
	requireLookup("*:30080", "3", true)
	requireLookup("[fd00::1]:80", "", false)
	requireLookup("10.96.0.11:80", "", false) // del map removes every duplicate
	require.Equal(t, []string{"fd00::/64"}, showACL(fs.acl))

	run("re-add after delete", func(b *Batch) {
		b.DelMap(svc, "10.96.0.10:80")
		b.AddMap(svc, "10.96.0.10:80", "first")
		b.AddMap(svc, "10.96.0.10:80", "second")
	}, okAnswer, okAnswer, okAnswer)
	require.Equal(t, []MapEntry{
		{"*:30080", "3"},
		{"default.web:http:tcp/ep3", "10.180.0.1|8080|3"},
		{"10.96.0.10:80", "first"},
		{"10.96.0.10:80", "second"},
	}, showMap(svc))
	requireLookup("10.96.0.10:80", "first", true)

	// HAProxy 2.6 lets add map and set map change an ACL file.
	run("map commands on an ACL", func(b *Batch) {
		b.AddMap(fs.acl, "10.9.0.0/16", "v")
		b.SetMap(fs.acl, "fd00::/64", "w")
		b.AddMap(fs.acl, "notip", "v")
	}, okAnswer, okAnswer, invalidIPAnswer("notip"))
	require.Equal(t, []string{"fd00::/64 w", "10.9.0.0/16 v"}, showACL(fs.acl))

	run("clear", func(b *Batch) {
		b.AddMap(fs.other, "k", "v")
		b.ClearMap(fs.other)
		b.ClearACL(fs.acl)
		b.ClearMap(fs.nopeMap)
		b.ClearACL(fs.nopeACL)
		b.ClearMap(fs.acl)
		b.ClearACL(svc)
	}, okAnswer, okAnswer, okAnswer, unknownMapAnswer, unknownACLAnswer, unknownMapAnswer, unknownACLAnswer)
	require.Empty(t, showMap(fs.other))
	require.Empty(t, showACL(fs.acl))
	require.Len(t, showMap(svc), 4)

	for _, f := range []string{fs.nopeMap, fs.acl} {
		_, err = api.ShowMap(ctx, f)
		require.ErrorIs(t, err, ErrNoSuchMap, f)
	}
	for _, f := range []string{fs.nopeACL, svc} {
		_, err = api.ShowACL(ctx, f)
		require.ErrorIs(t, err, ErrNoSuchMap, f)
	}
	_, err = api.ShowMap(ctx, "services.map")
	require.ErrorIs(t, err, ErrInvalidArgument, "relative map file")
}

func TestFakeMapConformance(t *testing.T) {
	fs := patternFiles{
		services: "/etc/haproxy/services.map", other: "/etc/haproxy/other.map", acl: "/etc/haproxy/allowed.acl",
		nopeMap: "/etc/haproxy/nope.map", nopeACL: "/etc/haproxy/nope.acl",
	}
	f := NewFake()
	f.LoadACL(fs.acl, aclAtLoad...)
	f.LoadMap(fs.services, servicesAtLoad...)
	f.LoadMap(fs.other)
	mapConformance(t, f, fs, func(t *testing.T, key string) (string, bool) { return f.LookupMap(fs.services, key) })

	require.Equal(t, []string{
		"map /etc/haproxy/services.map *:30080 3",
		"map /etc/haproxy/services.map default.web:http:tcp/ep3 10.180.0.1|8080|3",
		"map /etc/haproxy/services.map 10.96.0.10:80 first",
		"map /etc/haproxy/services.map 10.96.0.10:80 second",
	}, f.Dump())
	f.Reset()
	_, err := f.ShowMap(context.Background(), fs.services)
	require.ErrorIs(t, err, ErrNoSuchMap, "Reset forgets maps")
	require.Empty(t, f.Dump())
}

func TestClientMapConformance(t *testing.T) {
	dir := t.TempDir()
	fs := patternFiles{
		services: filepath.Join(dir, "services.map"), other: filepath.Join(dir, "other.map"), acl: filepath.Join(dir, "allowed.acl"),
		nopeMap: filepath.Join(dir, "nope.map"), nopeACL: filepath.Join(dir, "nope.acl"),
	}
	var svc strings.Builder
	for _, e := range servicesAtLoad {
		svc.WriteString(e.Key + " " + e.Value + "\n")
	}
	require.NoError(t, os.WriteFile(fs.services, []byte(svc.String()), 0o644))
	require.NoError(t, os.WriteFile(fs.other, nil, 0o644))
	require.NoError(t, os.WriteFile(fs.acl, []byte(strings.Join(aclAtLoad, "\n")+"\n"), 0o644))
	port := freePort(t)

	// The lookup answers 200 with map_str's result, or 404 when the key is
	// not in the map: the real match, not the CLI's "get map".
	in := haproxytest.Start(t, `
frontend fe
  mode http
  bind 127.0.0.1:`+strconv.Itoa(port)+`
  acl allowed src -f `+fs.acl+`
  acl found req.hdr(k),map_str(`+fs.services+`) -m found
  tcp-request connection set-var(sess.other) src,map_str(`+fs.other+`)
  http-request set-var(txn.allowed) bool(1) if allowed
  http-request return status 404 if !found
  http-request return status 200 content-type text/plain lf-string "%[req.hdr(k),map_str(`+fs.services+`)]"
`)
	client := &http.Client{Timeout: 5 * time.Second}
	mapConformance(t, New(in.StatsSocket), fs, func(t *testing.T, key string) (string, bool) {
		req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+"/", nil)
		require.NoError(t, err)
		req.Header.Set("k", key)
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		if resp.StatusCode == http.StatusNotFound {
			return "", false
		}
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return string(body), true
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestClientShowMapLarge reads a map of 250,000 entries (a 15 MB answer):
// reading and parsing must stay linear.
func TestClientShowMapLarge(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "endpoints.map")
	const n = 250000
	var sb strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "default.web%d:http:tcp/ep%d 10.%d.%d.%d|8080|%d\n", i/10, i%10, i>>16&255, i>>8&255, i&255, i%10)
	}
	require.NoError(t, os.WriteFile(file, []byte(sb.String()), 0o644))
	in := haproxytest.Start(t, `
frontend fe
  bind 127.0.0.1:`+strconv.Itoa(freePort(t))+`
  tcp-request connection set-var(sess.x) src,map_str(`+file+`)
`)
	start := time.Now()
	entries, err := New(in.StatsSocket).ShowMap(context.Background(), file)
	require.NoError(t, err)
	t.Logf("show map of %d entries: %v", len(entries), time.Since(start))
	require.Len(t, entries, n)
	require.Equal(t, MapEntry{"default.web0:http:tcp/ep0", "10.0.0.0|8080|0"}, entries[0])
	require.Equal(t, MapEntry{"default.web24999:http:tcp/ep9", "10.3.208.143|8080|9"}, entries[n-1])
}
