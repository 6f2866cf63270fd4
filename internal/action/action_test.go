package action_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

func TestMain(m *testing.M) {
	// wal_level=logical: a logical walsender is a session with a
	// database, which selectors would find were it not protected.
	// A physical walsender needs a replication line in pg_hba.conf.
	pgtest.Main(m, pgtest.Options{Settings: map[string]string{"wal_level": "logical"}, HBA: []string{"local replication all trust"}})
}

// open opens a pgreap connection, as the CLI does, to the shared cluster.
func open(t *testing.T, user string) *pgx.Conn { return pgtest.Pgreap(t, user) }

func mustSelector(t *testing.T, spec selector.Spec) *selector.Selector {
	t.Helper()
	s, err := selector.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// run chooses and carries out a request, failing the test on error.
func run(t *testing.T, cn *pgx.Conn, req action.Request, opt action.Options) []action.Result {
	t.Helper()
	plan, err := action.Choose(pgtest.Context(t), cn, req)
	if err != nil {
		t.Fatal(err)
	}
	res, err := action.Execute(pgtest.Context(t), cn, plan, opt)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func outcomes(res []action.Result) map[int32]action.Result {
	m := map[int32]action.Result{}
	for _, r := range res {
		m[r.PID] = r
	}
	return m
}

func want(t *testing.T, res []action.Result, pid int32, o action.Outcome, detail string) {
	t.Helper()
	r, ok := outcomes(res)[pid]
	if !ok {
		t.Fatalf("no result for %d in %+v", pid, res)
	}
	if r.Outcome != o || !strings.Contains(r.Detail, detail) {
		t.Fatalf("%d: %s (%s), want %s (%q)", pid, r.Outcome, r.Detail, o, detail)
	}
}

func TestTerminateSelectionHitsExactlyTheChosen(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	tag := pgtest.Tag(t)
	var victims []*pgtest.Victim
	for range 3 {
		victims = append(victims, pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-v"}))
	}
	victims[1].Exec("BEGIN")
	victims[2].Start("SELECT pg_catalog.pg_sleep(60)")
	victims[2].WaitState("active", "")
	bystander := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-bystander"})
	other := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-v"}) // same app, other database

	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{
		Action:   action.Terminate,
		Selector: mustSelector(t, selector.Spec{DB: []string{db}, App: []string{tag + "-v"}}),
	}, action.Options{Wait: 10 * time.Second})
	if len(res) != 3 {
		t.Fatalf("%d results, want 3: %+v", len(res), res)
	}
	for _, v := range victims {
		want(t, res, v.PID, action.Terminated, "")
		if v.Alive() {
			t.Errorf("victim %d reported terminated but is still there", v.PID)
		}
	}
	if !bystander.Alive() || !other.Alive() {
		t.Fatal("a session outside the selection was ended")
	}
	bystander.Exec("SELECT 1")
}

func TestCancelEndsTheQueryKeepsTheConnection(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{}) // same tag, idle: no query to cancel
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")

	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{
		Action:   action.Cancel,
		Selector: mustSelector(t, selector.Spec{App: []string{v.App}}),
	}, action.Options{Wait: 10 * time.Second})
	if len(res) != 1 {
		t.Fatalf("%d results, want only the running one: %+v", len(res), res)
	}
	want(t, res, v.PID, action.Cancelled, "")
	if err := v.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("victim's query ended with %v, want a cancel (57014)", err)
	}
	v.Exec("SELECT 1") // the connection is still there
	if !idle.Alive() {
		t.Fatal("idle session ended")
	}

	// Named by pid, the idle session has nothing to cancel.
	res = run(t, cn, action.Request{Action: action.Cancel, PIDs: []int32{idle.PID}}, action.Options{Wait: time.Second})
	want(t, res, idle.PID, action.Changed, "no query running (idle)")
}

func TestProtectedByPID(t *testing.T) {
	t.Parallel()
	cn := open(t, pgtest.Superuser)
	var checkpointer int32
	err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'checkpointer'").Scan(&checkpointer)
	if err != nil {
		t.Fatal(err)
	}
	own := int32(cn.PgConn().PID())
	const nobody = 2147483000 // no such backend
	res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{own, checkpointer, nobody}}, action.Options{Wait: time.Second})
	want(t, res, own, action.Protected, "pgreap's own session")
	want(t, res, checkpointer, action.Protected, "not a client backend (checkpointer)")
	want(t, res, nobody, action.Gone, "no such backend")
	for _, r := range res {
		if (r.Outcome == action.Protected) != r.Incomplete() {
			t.Errorf("%d: protected by pid must make the action incomplete", r.PID)
		}
	}
	// Still connected: our own session was not signalled.
	if err := cn.Ping(pgtest.Context(t)); err != nil {
		t.Fatal(err)
	}
}

func TestParallelWorkerByPIDIsProtectedAndNothingIsTouched(t *testing.T) {
	t.Parallel()
	_, leader, worker := pgtest.Parallel(t)
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{worker}}, action.Options{Wait: time.Second})
	detail := "parallel worker"
	if pgtest.Shared(t).Major >= 13 {
		detail = "parallel worker of " + itoa(leader.PID)
	}
	want(t, res, worker, action.Protected, detail)
	if !leader.Alive() {
		t.Fatal("the leader was ended")
	}
	var n int
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", worker).Scan(&n); err != nil || n != 1 {
		t.Fatalf("worker gone (%d, %v)", n, err)
	}
}

func TestTerminateByDatabaseActsOnLeadersNotWorkers(t *testing.T) {
	t.Parallel()
	db, leader, worker := pgtest.Parallel(t)
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{
		Action:   action.Terminate,
		Selector: mustSelector(t, selector.Spec{DB: []string{db}}),
	}, action.Options{Wait: 10 * time.Second})
	want(t, res, leader.PID, action.Terminated, "")
	for _, r := range res {
		if r.IsParallelWorker() && (r.Outcome != action.Protected || r.Incomplete()) {
			t.Errorf("worker %d: %s, want protected (not named, so not incomplete)", r.PID, r.Outcome)
		}
		if r.PID == worker && r.Outcome != action.Protected {
			t.Errorf("worker %d: %s", worker, r.Outcome)
		}
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func TestPlanWhoseQueryMovedOnIsChanged(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{
		Action: action.Cancel, Selector: mustSelector(t, selector.Spec{App: []string{v.App}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The backend moves on to another query between the plan and the act.
	admin := pgtest.Admin(t)
	if _, err := admin.Exec(pgtest.Context(t), "SELECT pg_catalog.pg_cancel_backend($1)", v.PID); err != nil {
		t.Fatal(err)
	}
	_ = v.Wait()
	v.Start("SELECT pg_catalog.pg_sleep(60) /* the new query */")
	pgtest.Eventually(t, "the new query", func() (bool, error) {
		var q string
		err := admin.QueryRow(pgtest.Context(t), "SELECT query FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active'", v.PID).Scan(&q)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return strings.Contains(q, "the new query"), err
	})
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Changed, "moved on")
	if !res[0].Incomplete() {
		t.Error("changed must make the action incomplete")
	}
	v.WaitState("active", "") // the new query keeps running
}

func TestForgedBackendStartIsChanged(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}})
	if err != nil {
		t.Fatal(err)
	}
	// As if the pid had been reused by a newer backend since.
	plan.Results[0].BackendStart = plan.Results[0].BackendStart.Add(-time.Microsecond)
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Changed, "pid reused")
	if !v.Alive() {
		t.Fatal("the session was ended")
	}
}

func TestSelectionRecheckedAtTheSignal(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	v.WaitState("idle in transaction", "")
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{
		Action: action.Terminate, Selector: mustSelector(t, selector.Spec{App: []string{v.App}, State: []string{"idle in transaction"}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Count(action.Planned) != 1 {
		t.Fatalf("plan: %+v", plan.Results)
	}
	v.Exec("COMMIT") // no longer idle in transaction
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Changed, "")
	if !v.Alive() {
		t.Fatal("the session was ended")
	}
}

func TestPrivilegeDecidedPerSession(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		grants    []string
		superuser string // detail for the superuser's session
	}{
		// Without pg_read_all_stats the role cannot see the other
		// session's backend_start, so it cannot guard its identity.
		{"plain", nil, "cannot see the backend_start"},
		{"read_all_stats", []string{"pg_read_all_stats"}, "is a superuser"},
		{"signal_backend", []string{"pg_read_all_stats", "pg_signal_backend"}, "is a superuser"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			role := pgtest.NewRole(t, "NOSUPERUSER", tt.grants...)
			mine := pgtest.NewVictim(t, pgtest.VictimOptions{User: role})
			super := pgtest.NewVictim(t, pgtest.VictimOptions{})
			other := pgtest.NewRole(t, "NOSUPERUSER")
			theirs := pgtest.NewVictim(t, pgtest.VictimOptions{User: other})
			cn := open(t, role)
			res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{mine.PID, super.PID, theirs.PID}},
				action.Options{Wait: 10 * time.Second})
			want(t, res, mine.PID, action.Terminated, "")
			want(t, res, super.PID, action.Denied, tt.superuser)
			if len(tt.grants) == 2 {
				want(t, res, theirs.PID, action.Terminated, "")
			} else {
				want(t, res, theirs.PID, action.Denied, "")
			}
			if !super.Alive() {
				t.Fatal("the superuser's session was ended")
			}
		})
	}
}

func TestGraceCancelsFirst(t *testing.T) {
	t.Parallel()
	running := pgtest.NewVictim(t, pgtest.VictimOptions{})
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{})
	running.Start("SELECT pg_catalog.pg_sleep(60)")
	running.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Terminate, Selector: mustSelector(t, selector.Spec{App: []string{running.App}})},
		action.Options{Grace: 10 * time.Second, Wait: 10 * time.Second})
	// The query ended on the cancel: the connection is spared.
	want(t, res, running.PID, action.Cancelled, "")
	if r := outcomes(res)[running.PID]; r.Action != action.Cancel {
		t.Errorf("action %s, want cancel", r.Action)
	}
	_ = running.Wait()
	running.Exec("SELECT 1")
	// An idle session has no query to cancel: it is terminated.
	want(t, res, idle.PID, action.Terminated, "")
}

// startStubborn starts on v a query that ignores cancels (the function
// catches query_canceled and goes on), and waits until it runs.
func startStubborn(v *pgtest.Victim) {
	v.Exec(`CREATE FUNCTION pg_temp.stubborn() RETURNS void LANGUAGE plpgsql AS $$
		BEGIN
			LOOP
				BEGIN
					PERFORM pg_catalog.pg_sleep(60);
				EXCEPTION WHEN query_canceled THEN
					NULL;
				END;
			END LOOP;
		END $$`)
	v.Start("SELECT pg_temp.stubborn()")
	v.WaitState("active", "")
}

func TestGraceTerminatesWhatStillRuns(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	startStubborn(v)
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}},
		action.Options{Grace: 200 * time.Millisecond, Wait: 10 * time.Second})
	want(t, res, v.PID, action.Terminated, "")
	if v.Alive() {
		t.Fatal("still there")
	}
}

func TestDryRunSignalsNothing(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	super := pgtest.NewVictim(t, pgtest.VictimOptions{App: v.App + "-s"})
	role := pgtest.NewRole(t, "NOSUPERUSER", "pg_read_all_stats")
	cn := open(t, role)
	res := run(t, cn, action.Request{Action: action.Terminate, Selector: mustSelector(t, selector.Spec{App: []string{v.App + "*"}})},
		action.Options{DryRun: true})
	want(t, res, v.PID, action.Denied, "is a superuser")
	want(t, res, super.PID, action.Denied, "is a superuser")
	mine := pgtest.NewVictim(t, pgtest.VictimOptions{User: role, App: v.App + "-mine"})
	res = run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{mine.PID}}, action.Options{DryRun: true})
	want(t, res, mine.PID, action.Planned, "")
	if !mine.Alive() || !v.Alive() {
		t.Fatal("a dry run ended a session")
	}
}

func TestNothingChosenIsRefused(t *testing.T) {
	t.Parallel()
	cn := open(t, pgtest.Superuser)
	_, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate})
	if !errors.Is(err, action.ErrNothingChosen) {
		t.Fatalf("err = %v", err)
	}
}

func TestLogicalWalsender(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	slot := pgtest.Name(t, "s_")
	recv := exec.Command(clientTool(t, c, "pg_recvlogical"), "-h", c.SocketDir(), "-p", itoa(int32(c.Port)),
		"-U", pgtest.Superuser, "-d", "postgres", "--slot", slot, "--create-slot", "--start", "-P", "test_decoding", "-f", os.DevNull)
	recv.Env = append(os.Environ(), "PGAPPNAME="+pgtest.Tag(t))
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = recv.Process.Kill()
		_ = recv.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			// The slot can be dropped once its walsender has exited.
			_, err := pgtest.Admin(t).Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot($1)", slot)
			if err == nil || pgtest.SQLState(err) == "42704" { // gone already
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	var walsender int32
	pgtest.Eventually(t, "the logical walsender", func() (bool, error) {
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
			"SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1", pgtest.Tag(t)).Scan(&walsender)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	cn := open(t, pgtest.Superuser)
	// A selection that finds it: reported, not touched.
	res := run(t, cn, action.Request{Action: action.Terminate, Selector: mustSelector(t, selector.Spec{DB: []string{"postgres"}, App: []string{pgtest.Tag(t)}})},
		action.Options{Wait: time.Second})
	want(t, res, walsender, action.Protected, "--include-replication")
	// By pid: refused.
	res = run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{walsender}}, action.Options{Wait: time.Second})
	want(t, res, walsender, action.Protected, "walsender")
	var n int
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", walsender).Scan(&n); err != nil || n != 1 {
		t.Fatalf("walsender gone (%d, %v)", n, err)
	}
	// Planned all the same (a forged or stale plan): the statement refuses.
	res = forged(t, cn, walsender)
	want(t, res, walsender, action.Protected, "--include-replication")
	// Allowed explicitly.
	res = run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{walsender}, IncludeReplication: true}, action.Options{Wait: 10 * time.Second})
	want(t, res, walsender, action.Terminated, "")
}

// forged makes a plan to terminate some client session, then swaps in the
// identity of another backend, as a forged or stale plan file would: only
// the signalling statement's own checks stand between it and the signal.
func forged(t *testing.T, cn *pgx.Conn, pid int32) []action.Result {
	t.Helper()
	decoy := pgtest.NewVictim(t, pgtest.VictimOptions{App: pgtest.Tag(t) + "-decoy"})
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{decoy.PID}})
	if err != nil {
		t.Fatal(err)
	}
	var start time.Time
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&start); err != nil {
		t.Fatal(err)
	}
	plan.Results[0].PID, plan.Results[0].BackendStart = pid, start
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestStatementRefusesProtectedSessionsInAPlan(t *testing.T) {
	t.Parallel()
	_, leader, worker := pgtest.Parallel(t)
	cn := open(t, pgtest.Superuser)
	var checkpointer int32
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'checkpointer'").Scan(&checkpointer); err != nil {
		t.Fatal(err)
	}
	own := int32(cn.PgConn().PID())
	want(t, forged(t, cn, own), own, action.Protected, "pgreap's own session")
	want(t, forged(t, cn, worker), worker, action.Protected, "parallel worker")
	want(t, forged(t, cn, checkpointer), checkpointer, action.Protected, "not a client backend (checkpointer)")
	if !leader.Alive() {
		t.Fatal("the leader was ended")
	}
	if err := cn.Ping(pgtest.Context(t)); err != nil {
		t.Fatal(err)
	}
}

func TestSessionThatNoLongerMatchesIsChanged(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{
		Action: action.Terminate, Selector: mustSelector(t, selector.Spec{App: []string{v.App}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Only the selection can tell: the guard does not pin the query of a
	// selection by name.
	v.Exec("SET application_name = 'moved-elsewhere'")
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Changed, "no longer matches the selection")
	if !v.Alive() {
		t.Fatal("the session was ended")
	}
}

// Not parallel: it changes how the package builds its statements.
func TestFailedSetStatementFallsBackToEachSession(t *testing.T) {
	a := pgtest.NewVictim(t, pgtest.VictimOptions{})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	defer action.FailSetStatements()()
	res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{a.PID, b.PID}}, action.Options{Wait: 10 * time.Second})
	want(t, res, a.PID, action.Terminated, "")
	want(t, res, b.PID, action.Terminated, "")
}

// clientTool finds a client program (pg_recvlogical): beside the server, else any installed (the npm server packages carry no
// client tools; the replication protocol they speak is the same from 12 to
// 18).
func clientTool(t *testing.T, c *pgtest.Cluster, name string) string {
	t.Helper()
	candidates := []string{filepath.Join(c.BinDir, name)}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	candidates = append(candidates, more...)
	if p, err := exec.LookPath(name); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no " + name + " to open a walsender with (Debian: apt-get install postgresql-client)")
	return ""
}

// A physical walsender (a replication=true connection, as pg_receivewal or
// a standby opens: no database, so never listed and never found by a
// selector) named by pid: protected, unless --include-replication, then
// terminated.
func TestPhysicalWalsender(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	repl, err := pgconn.Connect(ctx, pgtest.Shared(t).DSN("postgres", pgtest.Superuser)+" replication=true application_name="+pgtest.Tag(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repl.Close(context.Background()) })
	identify := func() error { _, err := repl.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); return err }
	if err := identify(); err != nil {
		t.Fatal(err)
	}
	var walsender int32
	var datname *string
	if err := pgtest.Admin(t).QueryRow(ctx,
		"SELECT pid, datname FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender' AND application_name = $1",
		pgtest.Tag(t)).Scan(&walsender, &datname); err != nil || datname != nil {
		t.Fatalf("the physical walsender: %v, datname %v", err, datname)
	}
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{walsender}}, action.Options{Wait: time.Second})
	want(t, res, walsender, action.Protected, "--include-replication")
	// A selector never finds it (no database).
	plan, err := action.Choose(ctx, cn, action.Request{Action: action.Terminate,
		Selector: mustSelector(t, selector.Spec{App: []string{pgtest.Tag(t)}}), IncludeReplication: true})
	if err != nil || len(plan.Results) != 0 {
		t.Fatalf("a selector found %+v (%v)", plan, err)
	}
	if err := identify(); err != nil {
		t.Fatalf("the walsender was touched: %v", err)
	}
	res = run(t, cn, action.Request{Action: action.Terminate, PIDs: []int32{walsender}, IncludeReplication: true}, action.Options{Wait: 10 * time.Second})
	want(t, res, walsender, action.Terminated, "")
	if err := identify(); err == nil {
		t.Fatal("the replication connection still answers")
	}
}

func TestGraceOnAnIdentityCancelsTheQueryRunningNow(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60) /* first */")
	v.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{
		Action: action.Terminate, Selector: mustSelector(t, selector.Spec{App: []string{v.App}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The session runs another query by the time the signal goes: chosen
	// by its name alone, it is still the session meant; the grace cancels
	// the query it runs now and spares the connection.
	pgtest.Exec(t, "SELECT pg_catalog.pg_cancel_backend($1)", v.PID)
	_ = v.Wait()
	v.Start("SELECT pg_catalog.pg_sleep(60) /* second */")
	v.WaitState("active", "")
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Grace: 10 * time.Second, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Cancelled, "")
	_ = v.Wait()
	v.Exec("SELECT 1")
}

func TestCancelWithGraceIsACancel(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Cancel, PIDs: []int32{v.PID}}, action.Options{Grace: time.Second, Wait: 10 * time.Second})
	want(t, res, v.PID, action.Cancelled, "")
}

func TestZeroBackendStartIsNeverSignalled(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}})
	if err != nil {
		t.Fatal(err)
	}
	plan.Results[0].BackendStart = time.Time{} // sent as NULL
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want(t, res, v.PID, action.Changed, "pid reused")
	if !v.Alive() {
		t.Fatal("ended")
	}
}

func TestRefusedConnectionsAndSelections(t *testing.T) {
	t.Parallel()
	cn := open(t, pgtest.Superuser)
	ctx := pgtest.Context(t)
	if _, err := action.Choose(ctx, cn, action.Request{Action: action.Terminate, Selector: mustSelector(t, selector.Spec{})}); !errors.Is(err, action.ErrNothingChosen) {
		t.Fatalf("empty selection: %v", err)
	}
	if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	_, err := action.Choose(ctx, cn, action.Request{Action: action.Terminate, PIDs: []int32{1}})
	if err == nil || !strings.Contains(err.Error(), "in a transaction") {
		t.Fatalf("in a transaction: %v", err)
	}
}

// A connection already closed (a restart ended it while nobody read)
// sends nothing: the session is not reported maybe signalled, it is still
// planned, and the error says why.
func TestNothingSentOnAClosedConnection(t *testing.T) {
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}})
	if err != nil {
		t.Fatal(err)
	}
	cn.Close(pgtest.Context(t))
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: 5 * time.Second})
	if !errors.Is(err, pgconn.ErrConnClosed) {
		t.Fatalf("err %v, want conn closed", err)
	}
	want(t, res, v.PID, action.Planned, "")
	if !v.Alive() {
		t.Fatal("terminated")
	}

	// The same in a grace: the cancel was sent, the terminate after the
	// grace could not be: survived, and it says so.
	startStubborn(v)
	cn = open(t, pgtest.Superuser)
	defer action.BeforeStatement(2, func() { cn.Close(pgtest.Context(t)) })()
	plan, err = action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}})
	if err != nil {
		t.Fatal(err)
	}
	res, err = action.Execute(pgtest.Context(t), cn, plan, action.Options{Grace: 100 * time.Millisecond, Wait: 5 * time.Second})
	if !errors.Is(err, pgconn.ErrConnClosed) {
		t.Fatalf("err %v, want conn closed", err)
	}
	want(t, res, v.PID, action.Survived, "cancelled, still running the same query after the grace; not terminated: ")
	if !v.Alive() {
		t.Fatal("terminated")
	}
}

// The statement for a whole set fails in the server after it signalled one
// session, and the connection is gone before the retry: nothing can be
// known, so every session is "may have been signalled", never planned
// (which would say nothing was sent) nor done.
func TestSetFailedThenConnectionLost(t *testing.T) {
	a := pgtest.NewVictim(t, pgtest.VictimOptions{})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	defer action.FailSetAfterSignalThen(func() { cn.Close(pgtest.Context(t)) })()
	plan, err := action.Choose(pgtest.Context(t), cn, action.Request{Action: action.Terminate, PIDs: []int32{a.PID, b.PID}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := action.Execute(pgtest.Context(t), cn, plan, action.Options{Wait: 5 * time.Second})
	if !errors.Is(err, pgconn.ErrConnClosed) {
		t.Fatalf("err %v, want conn closed", err)
	}
	want(t, res, a.PID, action.Survived, "may have been signalled, not verified")
	want(t, res, b.PID, action.Survived, "may have been signalled, not verified")
	pgtest.Eventually(t, "the first one terminated by the failed statement", func() (bool, error) { return !a.Alive(), nil })
}

// TestFreshReadSeesWhatTheSnapshotHides proves, on the server under test,
// what the action statement relies on: a backend keeps one copy of
// pg_stat_activity for its whole transaction, and pg_stat_clear_snapshot()
// followed by pg_stat_get_activity(pid) reads the backend status array
// anew. A session that moved on after that copy was taken is judged
// "moved" on a fresh read, and "ok" on the copy.
func TestFreshReadSeesWhatTheSnapshotHides(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	plan, err := action.Choose(ctx, cn, action.Request{Action: action.Cancel, PIDs: []int32{v.PID}})
	if err != nil {
		t.Fatal(err)
	}
	queryStart := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) time.Time {
		var qs time.Time
		if err := q.QueryRow(ctx, "SELECT query_start FROM pg_catalog.pg_stat_activity WHERE pid = $1", v.PID).Scan(&qs); err != nil {
			t.Fatal(err)
		}
		return qs
	}
	if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = cn.Exec(context.Background(), "ROLLBACK") }()
	first := queryStart(cn) // the transaction's copy is taken here
	if !first.Equal(plan.Results[0].QueryStart) {
		t.Fatalf("query_start %v, planned %v", first, plan.Results[0].QueryStart)
	}
	// The victim moves on to another query, as the rest of the server sees.
	admin := pgtest.Admin(t)
	if _, err := admin.Exec(ctx, "SELECT pg_catalog.pg_cancel_backend($1)", v.PID); err != nil {
		t.Fatal(err)
	}
	_ = v.Wait()
	v.Start("SELECT pg_catalog.pg_sleep(60) /* the next query */")
	pgtest.Eventually(t, "the next query", func() (bool, error) { return !queryStart(admin).Equal(first), nil })

	if again := queryStart(cn); !again.Equal(first) {
		t.Fatalf("the transaction's copy changed (%v, then %v): the premise does not hold on this server", first, again)
	}
	stale, err := action.Judge(ctx, cn, plan, false)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := action.Judge(ctx, cn, plan, true)
	if err != nil {
		t.Fatal(err)
	}
	if stale[0] != "ok" || fresh[0] != "moved" {
		t.Fatalf("on the copy: %s (want ok); read afresh: %s (want moved)", stale[0], fresh[0])
	}
}

// A write outside a transaction block, cancelled: its transaction id says
// it rolled back.
func TestCancelledWriteRolledBack(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	v.Exec("CREATE TABLE w (id int)")
	v.Start("WITH ins AS (INSERT INTO w VALUES (1) RETURNING id) SELECT pg_catalog.pg_sleep(60) FROM ins")
	v.WaitState("active", "Timeout")
	res := run(t, open(t, pgtest.Superuser), action.Request{Action: action.Cancel, PIDs: []int32{v.PID}}, action.Options{Wait: 5 * time.Second})
	want(t, res, v.PID, action.Cancelled, "its transaction rolled back")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the client got %q, want 57014", code)
	}
}

// A COMMIT waiting for a synchronous standby has committed locally: a
// cancel only ends the wait (the client gets a warning, and success), and
// a terminate ends a session whose transaction committed. Both say so.
func TestCommitWaitingForAStandby(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"synchronous_standby_names": "'nobody'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	dsn := c.DSN("postgres", pgtest.Superuser)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE TABLE w (what text)"); err != nil {
		t.Fatal(err)
	}
	reaper := pgtest.PgreapDSN(t, dsn)
	committing := func(what string) (pid int32, done chan error) {
		cn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close(context.Background()) })
		pid = int32(cn.PgConn().PID())
		done = make(chan error, 1)
		go func() {
			_, err := cn.Exec(ctx, "SET synchronous_commit = on; INSERT INTO w VALUES ('"+what+"')")
			done <- err
		}()
		pgtest.Eventually(t, "a commit waiting for the standby", func() (bool, error) {
			var n int
			err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'", pid).Scan(&n)
			return n == 1, err
		})
		return pid, done
	}
	committed := func(what string) bool {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM w WHERE what = $1", what).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	do := func(kind action.Kind, pid int32) action.Result {
		plan, err := action.Choose(ctx, reaper, action.Request{Action: kind, PIDs: []int32{pid}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := action.Execute(ctx, reaper, plan, action.Options{Wait: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}

	pid, done := committing("cancelled")
	r := do(action.Cancel, pid)
	if r.Outcome != action.Cancelled || r.Detail != "committed locally: the cancel can only end its wait for the standby" {
		t.Fatalf("cancel: %s (%s)", r.Outcome, r.Detail)
	}
	if err := <-done; err != nil || !committed("cancelled") {
		t.Fatalf("the client got %v; committed: %v (want no error, committed)", err, committed("cancelled"))
	}

	pid, done = committing("terminated")
	r = do(action.Terminate, pid)
	if r.Outcome != action.Terminated || r.Detail != "its transaction committed before the signal reached it" {
		t.Fatalf("terminate: %s (%s)", r.Outcome, r.Detail)
	}
	<-done
	if !committed("terminated") {
		t.Fatal("the terminated session's transaction is not there: the test's premise is wrong")
	}
}

// A client that rolls back to a savepoint when a statement fails (psql's
// ON_ERROR_ROLLBACK, JDBC's autosave) keeps its transaction going after a
// cancel: the query was cancelled, though the transaction is not aborted.
// pgreap must not say it completed.
func TestCancelInsideASavepoint(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	v.Exec("CREATE TABLE w (id int)")
	v.Exec("BEGIN")
	v.Exec("INSERT INTO w VALUES (1)")
	v.Exec("SAVEPOINT s")
	got := make(chan error, 1)
	go func() {
		_, err := v.Conn.Exec(context.Background(), "SELECT pg_catalog.pg_sleep(60)")
		if err != nil {
			_, _ = v.Conn.Exec(context.Background(), "ROLLBACK TO SAVEPOINT s")
		}
		got <- err
	}()
	v.WaitState("active", "Timeout")
	res := run(t, open(t, pgtest.Superuser), action.Request{Action: action.Cancel, PIDs: []int32{v.PID}}, action.Options{Wait: 5 * time.Second})
	if code := pgtest.SQLState(<-got); code != "57014" {
		t.Fatalf("the client got %q, want 57014", code)
	}
	r := res[0]
	if r.Outcome == action.Changed && !strings.Contains(r.Detail, "may have") {
		t.Fatalf("a cancelled query reported %s (%s)", r.Outcome, r.Detail)
	}
	if r.Outcome != action.Cancelled && r.Outcome != action.Changed {
		t.Fatalf("%s (%s)", r.Outcome, r.Detail)
	}
}

// What a result says of a session is what the signalling statement read,
// on every version: query_id from 14 (leader_pid: TestApplyPrintsAWorkersLeader).
func TestResultsCarryTheQueryIDOfTheirVersion(t *testing.T) {
	t.Parallel()
	major := pgtest.Shared(t).Major
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	if major >= 14 {
		v.Exec("SET compute_query_id = on")
	}
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	cn := open(t, pgtest.Superuser)
	res := run(t, cn, action.Request{Action: action.Cancel, PIDs: []int32{v.PID}}, action.Options{Wait: 10 * time.Second})
	want(t, res, v.PID, action.Cancelled, "")
	if q := outcomes(res)[v.PID].QueryID; (major >= 14) != (q != 0) {
		t.Errorf("on %d: query_id %d", major, q)
	}
}
