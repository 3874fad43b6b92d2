package runtimeapi

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/internal/haproxytest"
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
