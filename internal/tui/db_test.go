package tui

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

// newDB is the Source top uses, on the shared cluster as the superuser,
// narrowed by sel.
func newDB(t *testing.T, sel *selector.Selector) *DB {
	t.Helper()
	return newDBAt(t, pgtest.Shared(t).DSN("postgres", pgtest.Superuser), sel)
}

// newDBAt is newDB on the server of dsn.
func newDBAt(t *testing.T, dsn string, sel *selector.Selector) *DB {
	t.Helper()
	cfg, err := conn.Config(conn.Params{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	connect := func(ctx context.Context) (*pgx.Conn, error) { return conn.Connect(ctx, cfg.Copy()) }
	c, err := connect(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	src := NewDB(c, connect, sel)
	t.Cleanup(func() { src.Close(context.Background()) })
	return src
}

// The blocking tree of a real lock pile-up: the holder first, the waiter
// under it with its wait time.
func TestBlockingTreeOfARealLockWait(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder, waiter := pgtest.LockWait(t, db)
	bystander := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	src := newDB(t, &selector.Selector{DB: []string{db}})
	f, err := src.Frame(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.Server, "PostgreSQL ") {
		t.Errorf("server %q", f.Server)
	}
	var pids []int32
	for _, s := range f.Snap.Sessions {
		pids = append(pids, s.PID)
	}
	slices.Sort(pids)
	want := []int32{holder.PID, waiter.PID, bystander.PID}
	slices.Sort(want)
	if !slices.Equal(pids, want) {
		t.Fatalf("sessions %v, want %v (and not pgreap's own)", pids, want)
	}
	if f.Waits[waiter.PID] <= 0 {
		t.Fatalf("no wait time for the waiter: %v", f.Waits)
	}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(140, 20))
	m.Update(FrameMsg{Frame: f})
	m.key(runes("b"))
	if len(m.view) != 2 || m.view[0].s.PID != holder.PID || m.view[1].s.PID != waiter.PID || m.view[1].depth != 1 {
		t.Fatalf("blocking tree: %+v", m.view)
	}
	if !strings.Contains(m.draw(), "└ "+fmt.Sprint(waiter.PID)) || !strings.Contains(m.draw(), "Lock:relation ") {
		t.Fatalf("screen:\n%s", m.draw())
	}
}

// The end-to-end path of the issue on a real server: filter to one
// session, t, the question, y, exactly that one terminated.
func TestFilterAskTerminateExactlyThatOne(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: "shop-frontend"})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: "shop-backend"})
	a.Exec("SELECT 1")
	b.Exec("SELECT 1")
	src := newDB(t, &selector.Selector{DB: []string{db}})
	s := start(t, Options{Source: src, Interval: 50 * time.Millisecond}, 160, 20)
	s.keys("/", "FRONTEND", "<enter>")
	s.waitFor(`filter "frontend": 1 shown`)
	s.keys("t")
	s.waitFor("terminate 1 session? y/n")
	if !a.Alive() || !b.Alive() {
		t.Fatal("a session ended before the answer")
	}
	s.keys("y")
	s.waitFor("1 terminated")
	m := s.quit()
	if a.Alive() || !b.Alive() {
		t.Fatalf("after y: frontend alive %v, backend alive %v; want only the frontend gone", a.Alive(), b.Alive())
	}
	if want := fmt.Sprintf("terminate: 1 terminated — %d terminated", a.PID); len(m.Done()) != 1 || m.Done()[0] != want {
		t.Fatalf("done %q, want %q", m.Done(), want)
	}
}

// What the screen showed is what is guarded: a query that ended and was
// followed by another between the refresh and the y is reported changed,
// and the new query runs on.
func TestCancelOfAQueryThatMovedOnIsChanged(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "Timeout")
	src := newDB(t, &selector.Selector{App: []string{v.App}})
	s := start(t, Options{Source: src}, 160, 20) // no refresh after the first
	pgtest.Exec(t, "SELECT pg_catalog.pg_cancel_backend($1)", v.PID)
	if err := v.Wait(); err == nil {
		t.Fatal("the first query was not cancelled")
	}
	v.Start("SELECT pg_catalog.pg_sleep(60) /* the next query */")
	v.WaitState("active", "Timeout")
	s.keys("c")
	s.waitFor("cancel the query of 1 session? y/n")
	s.keys("y")
	s.waitFor("1 changed")
	m := s.quit()
	if !strings.Contains(m.Done()[0], fmt.Sprintf("%d changed (", v.PID)) {
		t.Fatalf("done %q", m.Done())
	}
	var query string
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT query FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active'", v.PID).Scan(&query); err != nil {
		t.Fatalf("the next query is not running: %v", err)
	}
	if !strings.Contains(query, "the next query") {
		t.Fatalf("running %q", query)
	}
}

// Parallel workers are folded into their leader's row; c on the leader
// cancels the query, workers and all.
func TestWorkersFoldedCancelTheLeader(t *testing.T) {
	t.Parallel()
	db, leader, worker := pgtest.Parallel(t)
	src := newDB(t, &selector.Selector{DB: []string{db}})
	f, err := src.Frame(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(160, 20))
	m.Update(FrameMsg{Frame: f})
	if !f.Snap.HasLeaderPID() {
		// PostgreSQL 12 does not say whose worker a worker is: it has a
		// row of its own, and acting on it is refused (protected).
		var w []activity.Session
		for _, s := range f.Snap.Sessions {
			if s.PID == worker {
				w = append(w, s)
			}
		}
		if len(m.all) < 2 || len(w) != 1 {
			t.Fatalf("rows %+v", m.all)
		}
		results, err := src.Act(pgtest.Context(t), action.Cancel, f.Snap, w)
		if err != nil || len(results) != 1 || results[0].Outcome != action.Protected {
			t.Fatalf("cancel of worker %d: %v %+v", worker, err, results)
		}
		return
	}
	var leaderRow *row
	for i := range m.all {
		if m.all[i].s.PID == worker {
			t.Fatalf("worker %d has a row of its own", worker)
		}
		if m.all[i].s.PID == leader.PID {
			leaderRow = &m.all[i]
		}
	}
	if leaderRow == nil || len(leaderRow.workers) == 0 || !strings.Contains(m.draw(), fmt.Sprintf("%d +%d", leader.PID, len(leaderRow.workers))) {
		t.Fatalf("leader row %+v\n%s", leaderRow, m.draw())
	}
	s := start(t, Options{Source: src}, 160, 20)
	s.keys("/", fmt.Sprint(leader.PID), "<enter>", "c")
	s.waitFor("cancel the query of 1 session? y/n")
	s.keys("y")
	s.waitFor("1 cancelled")
	s.quit()
	if err := leader.Wait(); err == nil {
		t.Fatal("the parallel query was not cancelled")
	}
}

// A connection lost between two refreshes is opened again: the screen
// says the refresh failed, and the next one works.
func TestReconnects(t *testing.T) {
	t.Parallel()
	src := newDB(t, &selector.Selector{App: []string{pgtest.Tag(t)}})
	ctx := pgtest.Context(t)
	if _, err := src.Frame(ctx); err != nil {
		t.Fatal(err)
	}
	first := src.conn.PgConn().PID()
	pgtest.Exec(t, "SELECT pg_catalog.pg_terminate_backend($1)", first)
	pgtest.Eventually(t, "a new connection", func() (bool, error) {
		_, err := src.Frame(ctx)
		return err == nil, nil
	})
	if src.conn.PgConn().PID() == first {
		t.Fatal("still on the terminated connection")
	}
}

// The selectors top was started with are re-checked when the signal is
// sent: a session that no longer matches them by the y is changed, and
// left alone.
func TestSelectorsAreRecheckedAtTheSignal(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	src := newDB(t, &selector.Selector{App: []string{v.App}, State: []string{"idle in transaction"}})
	f, err := src.Frame(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Snap.Sessions) != 1 || f.Snap.Sessions[0].PID != v.PID {
		t.Fatalf("sessions %+v", f.Snap.Sessions)
	}
	v.Exec("COMMIT") // idle now: top --state 'idle in transaction' would not show it
	results, err := src.Act(pgtest.Context(t), action.Terminate, f.Snap, f.Snap.Sessions)
	if err != nil || len(results) != 1 || results[0].Outcome != action.Changed {
		t.Fatalf("%v %+v", err, results)
	}
	if !v.Alive() {
		t.Fatal("terminated a session that no longer matched")
	}
}

// On a quiet server a refresh is one row (quiet.sql), not a snapshot: the
// frame is the last one's sessions at the server's new time. A statement,
// a new session, an ended one or a busy one brings a snapshot again.
func TestQuietServerIsNotSnapshotAgain(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	a.Exec("SELECT 1")
	src := newDB(t, &selector.Selector{DB: []string{db}})
	ctx := pgtest.Context(t)
	frame := func() *Frame {
		t.Helper()
		f, err := src.Frame(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	snapshotted := func(before, after *Frame) bool {
		return len(after.Snap.Sessions) == 0 || len(before.Snap.Sessions) == 0 || &after.Snap.Sessions[0] != &before.Snap.Sessions[0]
	}
	first := frame()
	again := frame()
	if snapshotted(first, again) || len(again.Snap.Sessions) != 1 || !again.Snap.Taken.After(first.Snap.Taken) {
		t.Fatalf("quiet: snapshot again %v, %d sessions, taken %v then %v",
			snapshotted(first, again), len(again.Snap.Sessions), first.Snap.Taken, again.Snap.Taken)
	}
	a.Exec("SELECT 2")
	if f := frame(); !snapshotted(again, f) || len(f.Snap.Sessions) != 1 || f.Snap.Sessions[0].Query != "SELECT 2" {
		t.Fatalf("after a statement: %+v", f.Snap.Sessions)
	}
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b.Exec("SELECT 3")
	frame()
	if f := frame(); len(f.Snap.Sessions) != 2 {
		t.Fatalf("after a new session: %d sessions", len(f.Snap.Sessions))
	}
	pgtest.Exec(t, "SELECT pg_catalog.pg_terminate_backend($1)", b.PID)
	pgtest.Eventually(t, "b gone", func() (bool, error) { return !b.Alive(), nil })
	if f := frame(); len(f.Snap.Sessions) != 1 {
		t.Fatalf("after a session ended: %d sessions", len(f.Snap.Sessions))
	}
	// A role renamed from outside the selection: the idle session shows
	// the new name.
	role := pgtest.NewRole(t, "NOSUPERUSER")
	c := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: role})
	c.Exec("SELECT 4")
	frame()
	frame()
	pgtest.Exec(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" RENAME TO "+pgx.Identifier{role + "_renamed"}.Sanitize())
	t.Cleanup(func() {
		pgtest.Exec(t, "ALTER ROLE "+pgx.Identifier{role + "_renamed"}.Sanitize()+" RENAME TO "+pgx.Identifier{role}.Sanitize())
	})
	f := frame()
	if i := slices.IndexFunc(f.Snap.Sessions, func(s activity.Session) bool { return s.PID == c.PID }); i < 0 || f.Snap.Sessions[i].Usename != role+"_renamed" {
		t.Fatalf("after a role's rename: %+v", f.Snap.Sessions)
	}
	a.Start("SELECT pg_catalog.pg_sleep(60)")
	a.WaitState("active", "")
	busy := frame()
	if f := frame(); !snapshotted(busy, f) {
		t.Fatal("a busy server was not snapshot again")
	}
}
