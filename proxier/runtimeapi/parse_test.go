package runtimeapi

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// Answers of "show proc" captured from HAProxy 2.6.12.
const (
	procStarted = `#<PID>          <type>          <reloads>       <uptime>        <version>      
8694            master          0 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4
# workers
8695            worker          0               0d00h00m01s     2.6.12-1+deb12u4
# programs

`
	procReloaded = `#<PID>          <type>          <reloads>       <uptime>        <version>      
8694            master          1 [failed: 0]   0d00h00m10s     2.6.12-1+deb12u4
# workers
8887            worker          0               0d00h00m01s     2.6.12-1+deb12u4
8695            worker          1               0d00h00m10s     2.6.12-1+deb12u4
# programs
`
	procFailed = `#<PID>          <type>          <reloads>       <uptime>        <version>      
8694            master          2 [failed: 1]   0d00h00m18s     2.6.12-1+deb12u4
# workers
8887            worker          1               0d00h00m09s     2.6.12-1+deb12u4
# programs
`
)

func TestParseShowProc(t *testing.T) {
	p, err := parseShowProc(procReloaded)
	require.NoError(t, err)
	require.Equal(t, 8694, p.MasterPID)
	require.Equal(t, 1, p.Reloads)
	require.Equal(t, 0, p.FailedReloads)
	require.Len(t, p.Workers, 2)
	require.Equal(t, 8887, p.CurrentWorker().PID, "the worker that survived no reload is current")

	p, err = parseShowProc(procFailed)
	require.NoError(t, err)
	require.Equal(t, 1, p.FailedReloads)
	require.Nil(t, p.CurrentWorker(), "after a failed reload the old worker serves, none is new")

	_, err = parseShowProc("Unknown command.\n")
	require.ErrorIs(t, err, ErrUnexpectedResponse)
}

func TestReloadOutcome(t *testing.T) {
	started, _ := parseShowProc(procStarted)
	reloaded, _ := parseShowProc(procReloaded)
	failed, _ := parseShowProc(procFailed)
	for name, tc := range map[string]struct {
		before, after *ProcInfo
		done, ok      bool
	}{
		"not yet":         {started, started, false, false},
		"new worker":      {started, reloaded, true, true},
		"failed":          {reloaded, failed, true, false},
		"same worker":     {started, &ProcInfo{MasterPID: 8694, Reloads: 1, Workers: []Worker{{PID: 8695}}}, true, false},
		"worker not seen": {started, &ProcInfo{MasterPID: 8694, Reloads: 1}, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			done, ok := ReloadOutcome(tc.before, tc.after)
			require.Equal(t, tc.done, done)
			require.Equal(t, tc.ok, ok)
		})
	}
}

func TestParseServersState(t *testing.T) {
	out := `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 b1 1 s1 127.0.0.51 0 1 1 1 2 1 0 0 0 0 0 1 - 80 - 0 0 - - 0
3 b1 5 s5 127.0.0.52 2 8 3 3 0 1 0 0 0 0 0 1 - 8080 - 0 0 - - 0
3 b1 2 fd00::1.80 fd00::1 2 0 1 1 0 1 0 0 0 0 0 1 - 80 - 0 0 - - 0

`
	servers, err := parseServersState(out)
	require.NoError(t, err)
	require.Equal(t, []ServerStatus{
		{BackendID: 3, Backend: "b1", ID: 1, Name: "s1", Addr: "127.0.0.51", Port: 80, OpState: 0, AdminFlags: 1, Weight: 1},
		{BackendID: 3, Backend: "b1", ID: 5, Name: "s5", Addr: "127.0.0.52", Port: 8080, OpState: 2, AdminFlags: 8, Weight: 3},
		{BackendID: 3, Backend: "b1", ID: 2, Name: "fd00::1.80", Addr: "fd00::1", Port: 80, OpState: 2, AdminFlags: 0, Weight: 1},
	}, servers)
	require.Equal(t, []State{StateMaint, StateDrain, StateReady}, []State{servers[0].State(), servers[1].State(), servers[2].State()})

	_, err = parseServersState("Can't find backend.\n")
	require.ErrorIs(t, err, ErrNoSuchBackend)
}

func TestFakeMaster(t *testing.T) {
	ctx := context.Background()
	m := NewFakeMaster()
	before, err := m.ShowProc(ctx)
	require.NoError(t, err)
	require.NoError(t, m.Reload(ctx))
	after, _ := m.ShowProc(ctx)
	done, ok := ReloadOutcome(before, after)
	require.True(t, done && ok)

	m.OnReload = func() error { return errors.New("bad config") }
	require.NoError(t, m.Reload(ctx), "like HAProxy 2.6, reload itself answers nothing")
	failed, _ := m.ShowProc(ctx)
	done, ok = ReloadOutcome(after, failed)
	require.True(t, done)
	require.False(t, ok)
	require.Equal(t, 2, m.Reloads())
}

func TestSplitAnswers(t *testing.T) {
	stream := "\n> New server registered.\n\n> \n> 1\n# be_id be_name\n3 b1 1 s1\n\n> "
	var got []string
	data := []byte(stream)
	for len(data) > 0 {
		adv, tok, err := splitAnswers(data, true)
		require.NoError(t, err)
		require.NotZero(t, adv)
		got = append(got, string(tok))
		data = data[adv:]
	}
	require.Equal(t, []string{"", "New server registered.\n", "", "1\n# be_id be_name\n3 b1 1 s1\n"}, got)

	// An answer cut before its prompt waits for more, or is an error at EOF.
	adv, tok, err := splitAnswers([]byte("New server reg"), false)
	require.NoError(t, err)
	require.Zero(t, adv)
	require.Nil(t, tok)
	_, _, err = splitAnswers([]byte("New server reg"), true)
	require.Error(t, err)
}
