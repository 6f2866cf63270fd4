package cli_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// replayScene is a primary and its hot standby that never cancels a query
// for replay (max_standby_streaming_delay=-1): a query on a table the
// primary drops holds replay up until someone ends it.
type replayScene struct {
	primary, standby *pgtest.Cluster
	p, s             *pgx.Conn
	dsn              string // the standby, for pgreap
}

func newReplayScene(t *testing.T, tables ...string) *replayScene {
	t.Helper()
	primary := pgtest.Own(t, pgtest.Options{})
	standby := pgtest.OwnStandby(t, primary, pgtest.StandbyOptions{Settings: map[string]string{"max_standby_streaming_delay": "-1"}})
	sc := &replayScene{primary: primary, standby: standby,
		p: pgtest.Connect(t, primary.DSN("postgres", pgtest.Superuser)), s: pgtest.Connect(t, standby.DSN("postgres", pgtest.Superuser)),
		dsn: standby.DSN("postgres", pgtest.Superuser)}
	for _, table := range tables {
		if _, err := sc.p.Exec(pgtest.Context(t), "CREATE TABLE "+table+" (x int); INSERT INTO "+table+" VALUES (1)"); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.WaitReplay(t, standby, primary)
	return sc
}

// drop drops a table on the primary and waits until replay waits for a
// lock on the standby.
func (sc *replayScene) drop(t *testing.T, table string) {
	t.Helper()
	if _, err := sc.p.Exec(pgtest.Context(t), "DROP TABLE "+table); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, "replay waits for a lock", func() (bool, error) { return sc.replayWaits(t) })
}

func (sc *replayScene) replayWaits(t *testing.T) (bool, error) {
	var waits bool
	err := sc.s.QueryRow(pgtest.Context(t),
		"SELECT count(*) > 0 FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup' AND wait_event_type = 'Lock'").Scan(&waits)
	return waits, err
}

// waitActive waits until v runs its statement (Victim.WaitState asks the
// shared cluster).
func (sc *replayScene) waitActive(t *testing.T, v *pgtest.Victim) {
	t.Helper()
	pgtest.Eventually(t, "the victim runs its query", func() (bool, error) {
		var n int
		err := sc.s.QueryRow(pgtest.Context(t),
			"SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active'", v.PID).Scan(&n)
		return n == 1, err
	})
}

// alive reports whether v's session is still on the standby.
func (sc *replayScene) alive(t *testing.T, v *pgtest.Victim) bool {
	t.Helper()
	var n int
	if err := sc.s.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start = $2",
		v.PID, v.BackendStart).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func (sc *replayScene) victim(t *testing.T) *pgtest.Victim {
	return pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: sc.standby})
}

// The scenario: a long query holds up replay of a DROP TABLE;
// unblock --replay cancels exactly it, and replay goes on. A dry run ends
// nothing, and its plan, applied, cancels the blocker.
func TestUnblockReplayCancelsTheBlocker(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t, "t", "t2", "kept")
	tag := pgtest.Tag(t)
	other := sc.victim(t)
	other.Exec("BEGIN")
	other.Exec("SELECT * FROM kept")

	blocker := sc.victim(t)
	blocker.Start("SELECT pg_catalog.pg_sleep(600) FROM t")
	sc.waitActive(t, blocker)
	sc.drop(t, "t")

	r := run(t, false, "unblock", "--replay", "--app", tag, "--dry-run", "-d", sc.dsn)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "WAL replay  waits") || !strings.Contains(r.out, "└ held up by: "+strconv.Itoa(int(blocker.PID))) ||
		!strings.Contains(r.out, "planned") || strings.Contains(r.out, strconv.Itoa(int(other.PID))) {
		t.Fatalf("stdout:\n%s", r.out)
	}
	r = run(t, false, "unblock", "--replay", "--app", tag, "--dry-run", "-o", "json", "-d", sc.dsn)
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["pid"] != float64(blocker.PID) || rows[0]["action"] != "cancel" || rows[0]["outcome"] != "planned" ||
		!strings.Contains(r.out, `"blocking_replay":true`) {
		t.Fatalf("plan:\n%s", r.out)
	}
	if ok, err := sc.replayWaits(t); err != nil || !ok || !sc.alive(t, blocker) {
		t.Fatalf("a dry run ended something: replay waits %v (%v), blocker alive %v", ok, err, sc.alive(t, blocker))
	}
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", plan, "-o", "json", "-d", sc.dsn)
	r.wantCode(t, 0)
	if rows = jsonRows(t, r.out); len(rows) != 1 || rows[0]["outcome"] != "cancelled" {
		t.Fatalf("apply:\n%s", r.out)
	}
	if err := blocker.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the blocker's query ended with %v, want a cancel (57014)", err)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)

	// Again, without a plan.
	blocker2 := sc.victim(t)
	blocker2.Start("SELECT pg_catalog.pg_sleep(600) FROM t2")
	sc.waitActive(t, blocker2)
	sc.drop(t, "t2")
	r = run(t, false, "unblock", "--replay", "--yes", "-o", "json", "-d", sc.dsn)
	r.wantCode(t, 0)
	if rows = jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(blocker2.PID) || rows[0]["outcome"] != "cancelled" {
		t.Fatalf("unblock --replay:\n%s", r.out)
	}
	if err := blocker2.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the blocker's query ended with %v, want a cancel (57014)", err)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)
	if !sc.alive(t, other) {
		t.Fatal("the session on another table was ended")
	}
	other.Exec("SELECT * FROM kept") // its transaction goes on

	r = run(t, false, "unblock", "--replay", "--yes", "-d", sc.dsn)
	r.wantCode(t, 1)
	if !strings.Contains(r.errOut, "WAL replay waits for no session") {
		t.Fatalf("stderr %q", r.errOut)
	}
	r = run(t, false, "unblock", "--replay", "--yes", "-d", sc.primary.DSN("postgres", pgtest.Superuser))
	r.wantCode(t, 1)
	if !strings.Contains(r.errOut, "not a standby") || strings.Count(r.errOut, "\n") != 1 {
		t.Fatalf("on the primary: stderr %q", r.errOut)
	}
}

// A cancel does not end a transaction: a blocker whose lock outlives its
// query (idle in its transaction, or a query cancelled back to a
// savepoint) keeps replay waiting. unblock says so and exits 3; with
// --terminate replay goes on.
func TestUnblockReplayCancelLeavesTheTransaction(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t, "idle", "saved")
	tag := pgtest.Tag(t)

	// Cancelled, yet replay still waits: the lock was taken before the
	// savepoint the cancel rolled back to.
	saved := sc.victim(t)
	saved.Exec("BEGIN")
	saved.Exec("SELECT * FROM saved")
	saved.Exec("SAVEPOINT s")
	saved.Start("SELECT pg_catalog.pg_sleep(600)")
	sc.waitActive(t, saved)
	sc.drop(t, "saved")
	r := run(t, false, "unblock", "--replay", "--app", tag, "--yes", "-d", sc.dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.out, "cancelled") || !strings.Contains(r.errOut, "WAL replay still waits for "+strconv.Itoa(int(saved.PID))) ||
		!strings.Contains(r.errOut, "use --terminate") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	if err := saved.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the query ended with %v, want a cancel (57014)", err)
	}
	if ok, err := sc.replayWaits(t); err != nil || !ok {
		t.Fatalf("replay waits %v (%v), want still waiting", ok, err)
	}
	r = run(t, false, "unblock", "--replay", "--terminate", "--app", tag, "--yes", "-d", sc.dsn)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "terminated") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)

	// Idle in its transaction: no query to cancel.
	idle := sc.victim(t)
	idle.Exec("BEGIN")
	idle.Exec("SELECT * FROM idle")
	sc.drop(t, "idle")
	if major := sc.standby.Major; major < 14 {
		r = run(t, false, "unblock", "--replay", "--longer-than", "1s", "--yes", "-d", sc.dsn)
		r.wantCode(t, 2)
		if !strings.Contains(r.errOut, "PostgreSQL 14") {
			t.Fatalf("stderr %q", r.errOut)
		}
	} else {
		r = run(t, false, "unblock", "--replay", "--longer-than", "1h", "--yes", "-d", sc.dsn)
		r.wantCode(t, 1)
	}
	r = run(t, false, "unblock", "--replay", "--app", tag, "--yes", "-d", sc.dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, "WAL replay still waits for "+strconv.Itoa(int(idle.PID))+" (idle in transaction)") ||
		!strings.Contains(r.errOut, "use --terminate") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	if ok, err := sc.replayWaits(t); err != nil || !ok || !sc.alive(t, idle) {
		t.Fatalf("replay waits %v (%v), blocker alive %v; want both", ok, err, sc.alive(t, idle))
	}
	r = run(t, false, "unblock", "--replay", "--terminate", "--app", tag, "--yes", "-d", sc.dsn)
	r.wantCode(t, 0)
	pgtest.WaitReplay(t, sc.standby, sc.primary)
	if sc.alive(t, idle) {
		t.Fatal("terminated, yet alive")
	}
}

func TestUnblockReplayUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"unblock", "--replay", "--cancel", "--terminate"},
		{"unblock", "--replay", "--rollback-prepared"},
	} {
		r := run(t, false, args...)
		r.wantCode(t, 2)
		if strings.Count(r.errOut, "\n") != 1 {
			t.Errorf("%v: stderr %q", args, r.errOut)
		}
	}
}

// Replay waiting for a buffer pin (a cursor holds the page a vacuum
// record must clean): the server does not say whose pin, so unblock
// --replay ends nothing and exits 3.
func TestUnblockReplayBufferPin(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t)
	ctx := pgtest.Context(t)
	// Rows dead before the cursor's snapshot: the vacuum's record
	// conflicts with no snapshot, only with the cursor's pin.
	if _, err := sc.p.Exec(ctx, `CREATE TABLE pinned (x int) WITH (autovacuum_enabled = off);
		INSERT INTO pinned SELECT pg_catalog.generate_series(1, 100); DELETE FROM pinned WHERE x > 50`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)
	cursor := sc.victim(t)
	cursor.Exec("BEGIN")
	cursor.Exec("DECLARE c CURSOR FOR SELECT * FROM pinned")
	cursor.Exec("FETCH 1 FROM c")
	if _, err := sc.p.Exec(ctx, "VACUUM pinned"); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, "replay waits for a buffer pin", func() (bool, error) {
		var n int
		err := sc.s.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup' AND wait_event_type = 'BufferPin'").Scan(&n)
		return n == 1, err
	})
	r := run(t, false, "unblock", "--replay", "--yes", "-d", sc.dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, "buffer pin") || strings.Count(r.errOut, "\n") != 1 || !strings.Contains(r.out, "WAL replay") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	if !sc.alive(t, cursor) {
		t.Fatal("the cursor's session was ended")
	}
	cursor.Exec("COMMIT")
	pgtest.WaitReplay(t, sc.standby, sc.primary)
}
