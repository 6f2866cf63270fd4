package maintenance_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// execConns are exec's two sessions in db, as the command opens them.
func execConns(t *testing.T, db string) (run, observe *pgx.Conn) {
	t.Helper()
	dsn := pgtest.Shared(t).DSN(db, pgtest.Superuser)
	cfg, err := conn.Config(conn.Params{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	delete(cfg.RuntimeParams, "search_path") // as the command does
	run, err = conn.Connect(pgtest.Context(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Close(context.Background()) })
	return run, pgtest.PgreapDSN(t, dsn)
}

// hasColumn reports whether table t of db has the column.
func hasColumn(t *testing.T, db, column string) bool {
	t.Helper()
	c := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	var n int
	if err := c.QueryRow(pgtest.Context(t),
		"SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = 'public.t'::pg_catalog.regclass AND attname = $1", column).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// A blocker that moved on before its signal is changed and left alone; the
// next attempt, no longer blocked, commits.
func TestExecBlockerMovedOn(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	asked := 0
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "ALTER TABLE t ADD COLUMN note text", LockTimeout: 300 * time.Millisecond, Attempts: 3,
		Clear: action.Terminate, Wait: 5 * time.Second,
		Confirm: func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error {
			asked++
			holder.Exec("COMMIT") // moves on between the look and the signal
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Attempts) != 2 || ex.Attempts[0].Outcome != maintenance.LockTimeout || !ex.Committed() || asked != 1 {
		t.Fatalf("attempts %+v, asked %d", ex.Attempts, asked)
	}
	a := &ex.Attempts[0]
	if !slices.Equal(a.BlockedBy(), []int32{holder.PID}) || a.Lock == nil || a.Lock.Mode != "AccessExclusiveLock" || a.Lock.Relname != "public.t" {
		t.Fatalf("first attempt blocked by %v waiting for %v", a.BlockedBy(), a.Lock)
	}
	if len(a.Results) != 1 || a.Results[0].Outcome != action.Changed || a.Results[0].PID != holder.PID {
		t.Fatalf("results %+v", a.Results)
	}
	if !holder.Alive() || !hasColumn(t, db, "note") {
		t.Fatal("the holder was ended, or the column not added")
	}
}

// A prepared transaction among the blockers is shown, never touched; it
// blocks every attempt.
func TestExecPreparedBlocker(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := setup.Exec(pgtest.Context(t), "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	gid := pgtest.PrepareTransaction(t, db, "", "", "SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "ALTER TABLE t ADD COLUMN note text", LockTimeout: 200 * time.Millisecond, Attempts: 2,
		Clear: action.Terminate, Wait: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Committed() || len(ex.Attempts) != 2 {
		t.Fatalf("attempts %+v", ex.Attempts)
	}
	for _, a := range ex.Attempts {
		if a.Outcome != maintenance.LockTimeout || !slices.Equal(a.BlockedByPrepared(), []string{gid}) || len(a.BlockedBy()) != 0 {
			t.Fatalf("attempt %+v", a)
		}
	}
	if r := ex.Attempts[0].Results; len(r) != 1 || r[0].Outcome != action.Protected || r[0].GID != gid {
		t.Fatalf("results %+v", r)
	}
	if !pgtest.IsPrepared(t, gid) || hasColumn(t, db, "note") {
		t.Fatal("the prepared transaction was touched, or the column added")
	}
}

// An SQL error other than a lock timeout ends the run at once, as the
// server gave it; a transaction left open is rolled back and an error.
func TestExecSQLErrors(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := setup.Exec(pgtest.Context(t), "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	run, observe := execConns(t, db)
	opts := maintenance.ExecOptions{LockTimeout: 200 * time.Millisecond, Attempts: 3, Clear: action.Terminate}

	opts.SQL = "ALTER TABLE t ADD COLUMN a int; SELEC 1"
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, opts)
	var sqlErr *maintenance.SQLError
	if !errors.As(err, &sqlErr) || sqlErr.Err.Code != "42601" || len(ex.Attempts) != 1 || ex.Attempts[0].Outcome != maintenance.SQLFailed {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	if hasColumn(t, db, "a") {
		t.Fatal("a statement before the error committed")
	}

	opts.SQL = "BEGIN; ALTER TABLE t ADD COLUMN b int"
	ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts)
	if !errors.Is(err, maintenance.ErrOpenTransaction) || len(ex.Attempts) != 1 || ex.Committed() {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	if hasColumn(t, db, "b") {
		t.Fatal("an open transaction committed")
	}

	// A transaction committed before the one left open stays committed:
	// never "nothing committed".
	opts.SQL = "BEGIN; ALTER TABLE t ADD COLUMN d int; COMMIT; BEGIN; SELECT 1"
	ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts)
	if !errors.Is(err, maintenance.ErrOpenTransaction) || ex.Committed() || !strings.Contains(err.Error(), "stays committed") {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	if !hasColumn(t, db, "d") {
		t.Fatal("the first transaction did not commit")
	}

	// The server's ROLLBACK ends the last transaction: not committed.
	opts.SQL = "ALTER TABLE t ADD COLUMN e int; ROLLBACK"
	ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts)
	if !errors.Is(err, maintenance.ErrNotCommitted) || ex.Committed() || len(ex.Attempts) != 1 || !strings.Contains(err.Error(), "nothing committed") {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	if hasColumn(t, db, "e") {
		t.Fatal("a rolled back column exists")
	}

	// A prepared transaction outlives the run, its locks held by no
	// session: said, with what ends it.
	gid := pgtest.Name(t, "gx_")
	t.Cleanup(func() { pgtest.RollbackPrepared(t, db, gid) })
	opts.SQL = "BEGIN; ALTER TABLE t ADD COLUMN f int; PREPARE TRANSACTION '" + gid + "'"
	ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts)
	if !errors.Is(err, maintenance.ErrNotCommitted) || ex.Committed() || !strings.HasSuffix(err.Error(), "nothing committed; the prepared transaction "+
		"keeps its locks, with no session, until COMMIT PREPARED or ROLLBACK PREPARED ends it (pg_catalog.pg_prepared_xacts lists it; pgreap unblock shows who waits on it)") || !pgtest.IsPrepared(t, gid) {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	pgtest.RollbackPrepared(t, db, gid)

	// The session is clean for the next run.
	opts.SQL = "ALTER TABLE t ADD COLUMN c int"
	if ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts); err != nil || !ex.Committed() || !hasColumn(t, db, "c") {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
}

// A transaction that runs another statement between the look and the
// signal still holds the lock the attempt waited for: it is the blocker,
// and --clear terminate ends it whatever it runs now (pinned by its
// query, a transaction running statement after statement would escape
// every attempt).
func TestExecTerminatesATransactionThatMovedOn(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "ALTER TABLE t ADD COLUMN note text", LockTimeout: 300 * time.Millisecond, Attempts: 3,
		Clear: action.Terminate, Wait: 5 * time.Second,
		Confirm: func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error {
			holder.Exec("SELECT 1") // its transaction goes on, its lock kept
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Attempts) != 2 || !ex.Committed() {
		t.Fatalf("attempts %+v, want the second to commit", ex.Attempts)
	}
	if r := ex.Attempts[0].Results; len(r) != 1 || r[0].PID != holder.PID || r[0].Outcome != action.Terminated {
		t.Fatalf("results %+v, want the holder terminated", r)
	}
	if holder.Alive() || !hasColumn(t, db, "note") {
		t.Fatal("the holder is alive, or the column not added")
	}
}

// Only the holders of what the attempt waited for are ended: another ALTER
// and a reader queued ahead of the attempt (pg_blocking_pids names them as
// soft blockers) hold nothing, get the lock once the holder is gone, and
// their clients see no error.
func TestExecEndsOnlyTheHolders(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	alter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	alter.Start("ALTER TABLE t ADD COLUMN other int")
	alter.WaitState("active", "Lock")
	reader := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	reader.Start("SELECT count(*) FROM t")
	reader.WaitState("active", "Lock")
	run, observe := execConns(t, db)
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "ALTER TABLE t ADD COLUMN note text", LockTimeout: 500 * time.Millisecond, Attempts: 3,
		Between: 50 * time.Millisecond, Clear: action.Terminate, Wait: 5 * time.Second,
		Attempted: func(a *maintenance.Attempt) {
			if a.N != 1 {
				return
			}
			// The queued ones go on once the holder is gone: the next
			// attempt finds nothing in its way.
			if err := alter.Wait(); err != nil {
				t.Errorf("the queued ALTER's client: %v", err)
			}
			if err := reader.Wait(); err != nil {
				t.Errorf("the queued reader's client: %v", err)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Attempts) != 2 || !ex.Committed() {
		t.Fatalf("attempts %+v, want the second to commit", ex.Attempts)
	}
	a := &ex.Attempts[0]
	if !slices.Equal(a.BlockedBy(), []int32{holder.PID}) {
		t.Fatalf("first attempt blocked by %v, want the holder %d only", a.BlockedBy(), holder.PID)
	}
	if len(a.Results) != 1 || a.Results[0].PID != holder.PID || a.Results[0].Outcome != action.Terminated {
		t.Fatalf("results %+v, want the holder terminated", a.Results)
	}
	if holder.Alive() || !alter.Alive() || !reader.Alive() || !hasColumn(t, db, "other") || !hasColumn(t, db, "note") {
		t.Fatal("the holder alive, a queued session ended, or a column missing")
	}
}

// An interrupt cancels the attempt under way on the server; the attempt is
// shown as it ended, and nothing of it committed.
func TestExecInterrupted(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	ctx, cancel := context.WithCancel(pgtest.Context(t))
	defer cancel()
	pid := run.PgConn().PID()
	admin := pgtest.Admin(t)
	go func() {
		// Interrupts once the attempt waits for its lock.
		for ctx.Err() == nil {
			var waiting bool
			if err := admin.QueryRow(ctx, "SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_catalog.pg_stat_activity WHERE pid = $1",
				int32(pid)).Scan(&waiting); err == nil && waiting {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var shown []maintenance.Attempt
	ex, err := maintenance.Exec(ctx, run, observe, maintenance.ExecOptions{
		SQL: "ALTER TABLE t ADD COLUMN note text", LockTimeout: 20 * time.Second, Attempts: 1, Clear: action.Terminate,
		Attempted: func(a *maintenance.Attempt) { shown = append(shown, *a) },
	})
	var interrupted *maintenance.Interrupted
	if !errors.As(err, &interrupted) || ex.Committed() {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	if len(shown) != 1 || shown[0].Outcome != maintenance.SQLFailed || shown[0].Err == nil {
		t.Fatalf("shown %+v, want the interrupted attempt", shown)
	}
	if hasColumn(t, db, "note") || !holder.Alive() {
		t.Fatal("the column was added, or the holder ended")
	}
}

// A holder of the lock the attempt waits for that itself waits (an UPDATE
// of a row another transaction updated holds the row's tuple lock while it
// waits for that transaction) is a victim, never ended: it is named as
// such, and the row's lock as a row's, not the table's.
func TestExecLeavesAWaitingHolder(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	first := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	first.Exec("CREATE TABLE t (id int PRIMARY KEY, v text)")
	first.Exec("INSERT INTO t VALUES (1, 'a')")
	first.Exec("BEGIN")
	first.Exec("UPDATE t SET v = 'X' WHERE id = 1")
	second := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	second.Start("UPDATE t SET v = 'Z' WHERE id = 1")
	second.WaitState("active", "Lock")
	run, observe := execConns(t, db)
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "UPDATE t SET v = 'E' WHERE id = 1", LockTimeout: 500 * time.Millisecond, Attempts: 2,
		Between: 50 * time.Millisecond, Clear: action.Terminate, Wait: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &ex.Attempts[0]
	if a.Outcome != maintenance.LockTimeout || a.Lock == nil {
		t.Fatalf("first attempt %+v", a)
	}
	if slices.Contains(a.BlockedBy(), second.PID) || slices.ContainsFunc(a.Results, func(r action.Result) bool { return r.PID == second.PID }) {
		t.Fatalf("the waiting holder %d was taken for a blocker: %v, results %+v", second.PID, a.BlockedBy(), a.Results)
	}
	if !second.Alive() || !first.Alive() {
		t.Fatal("a session was ended")
	}
	if s := a.Lock.String(); s != "ExclusiveLock on a row of public.t (tuple)" {
		t.Fatalf("lock %q", s)
	}
	if !slices.Equal(a.Waiting, []int32{second.PID}) || !strings.Contains(a.Describe(), "itself waiting") {
		t.Fatalf("waiting %v, described %q", a.Waiting, a.Describe())
	}
}

// SQL that lifts its lock_timeout where no text check sees it still waits
// no longer than --lock-timeout and a margin: the observer cancels it, and
// the attempt counts as a lock timeout.
func TestExecBoundsALiftedLockTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL:         "SELECT pg_catalog.set_config('lock' || '_timeout', '0', false); ALTER TABLE t ADD COLUMN note text",
		LockTimeout: 200 * time.Millisecond, Attempts: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if a := &ex.Attempts[0]; a.Outcome != maintenance.LockTimeout || !slices.Equal(a.BlockedBy(), []int32{holder.PID}) {
		t.Fatalf("attempt %+v, want a lock timeout blocked by %d", a, holder.PID)
	}
	if !holder.Alive() || hasColumn(t, db, "note") {
		t.Fatal("the holder was ended, or the column added")
	}
}

// SQL whose own COMMIT completed before it failed says that what ran
// before the COMMIT stays committed; timed out after it, it is not tried
// again (the retry would run the committed part again).
func TestExecFailsAfterItsCommit(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("CREATE TABLE other (id int)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	run, observe := execConns(t, db)
	opts := maintenance.ExecOptions{LockTimeout: 200 * time.Millisecond, Attempts: 3, Between: 10 * time.Millisecond}

	opts.SQL = "INSERT INTO other VALUES (1); COMMIT; ALTER TABLE t ADD COLUMN c int"
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, opts)
	var partly *maintenance.PartlyCommitted
	if !errors.As(err, &partly) || len(ex.Attempts) != 1 || ex.Attempts[0].Outcome != maintenance.LockTimeout {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
	var n int
	if err := observe.QueryRow(pgtest.Context(t), "SELECT count(*) FROM public.other").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows committed (%v), want 1: a retry ran the committed part again", n, err)
	}

	opts.SQL = "ALTER TABLE other ADD COLUMN e int; COMMIT; SELECT 1/0"
	ex, err = maintenance.Exec(pgtest.Context(t), run, observe, opts)
	var sqlErr *maintenance.SQLError
	if !errors.As(err, &sqlErr) || !sqlErr.Committed || !strings.Contains(err.Error(), "before the SQL's COMMIT committed") || ex.Committed() {
		t.Fatalf("%v, attempts %+v", err, ex.Attempts)
	}
}

// looksHandler passes on each lock exec's observer logs its attempt
// waiting for.
type looksHandler struct{ locks chan string }

func (h looksHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h looksHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h looksHandler) WithGroup(string) slog.Handler            { return h }
func (h looksHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "attempt waits" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "lock" {
				select {
				case h.locks <- a.Value.String():
				default:
				}
			}
			return true
		})
	}
	return nil
}

// staleLook runs exec (two attempts, looks poll apart) on SQL whose first
// statement waits on o3, held by h1, until a look sees it wait; then h1
// commits and at once waits to lock o3 again, behind the attempt, and gets
// it when the attempt ends. The SQL's second statement (then) fails with
// 55P03 on o4, held by h2: h1 did not block that, and holds o3 again when
// exec judges the error. seen says whether a look saw the first wait
// before the attempt ended (a first look may come before it begins, and
// the next too late).
func staleLook(t *testing.T, then string, timeout, poll time.Duration) (ex *maintenance.Executed, h1, h2 *pgtest.Victim, seen bool, err error) {
	t.Helper()
	db := pgtest.NewDB(t)
	h1 = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	h1.Exec("CREATE TABLE o3 (id int); CREATE TABLE o4 (id int)")
	h1.Exec("BEGIN")
	h1.Exec("LOCK TABLE o3 IN ACCESS EXCLUSIVE MODE")
	h2 = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	h2.Exec("BEGIN")
	h2.Exec("LOCK TABLE o4 IN ACCESS EXCLUSIVE MODE")
	run, observe := execConns(t, db)
	looks := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ex, err = maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
			SQL: "SELECT count(*) FROM o3; " + then, LockTimeout: timeout, Attempts: 2, Between: time.Millisecond,
			Clear: action.Terminate, Wait: 5 * time.Second, Poll: poll,
			Logger: slog.New(looksHandler{looks}),
		})
	}()
	select {
	case lock := <-looks:
		if !strings.Contains(lock, "o3") {
			t.Fatalf("the first look saw the attempt wait for %s, want o3", lock)
		}
		seen = true
		h1.Start("COMMIT; BEGIN; LOCK TABLE o3 IN ACCESS EXCLUSIVE MODE")
	case <-done:
	}
	<-done
	if seen {
		if err := h1.Wait(); err != nil {
			t.Fatalf("h1 locking o3 again: %v", err)
		}
	}
	return ex, h1, h2, seen, err
}

// A 55P03 that is not the lock timeout (LOCK … NOWAIT) is an error of the
// SQL, given as the server gave it: no one is ended, nothing is tried
// again, though a look saw an earlier statement of it wait on a session
// that holds its lock again when the error comes.
func TestExecLockNotAvailableIsAnSQLError(t *testing.T) {
	t.Parallel()
	// Looks 200ms apart, a lock timeout of 5s: a look sees the first wait.
	ex, h1, h2, seen, err := staleLook(t, "LOCK TABLE o4 IN ACCESS EXCLUSIVE MODE NOWAIT", 5*time.Second, 200*time.Millisecond)
	if !seen {
		t.Fatalf("no look saw the first wait: %+v, %v", ex.Attempts, err)
	}
	var sqlErr *maintenance.SQLError
	if !errors.As(err, &sqlErr) || sqlErr.Err.Code != "55P03" {
		t.Fatalf("err %v, want the NOWAIT's 55P03 as an SQL error", err)
	}
	if len(ex.Attempts) != 1 || ex.Attempts[0].Outcome != maintenance.SQLFailed || ex.Attempts[0].Results != nil {
		t.Fatalf("attempts %+v", ex.Attempts)
	}
	if !h1.Alive() || !h2.Alive() {
		t.Fatalf("ended: h1 alive %v, h2 alive %v", h1.Alive(), h2.Alive())
	}
}

// A lock timeout of a wait no look saw (looks are 5s apart: the wait on o4
// began after the last, and timed out before the next) ends no one: the
// last look saw an earlier statement of the SQL wait, on a session that
// holds that lock again when the timeout comes, but that session did not
// block the wait that timed out. (When the first look comes before the
// first wait begins, no look sees either, and no one is ended either.)
// The second attempt waits on o3, which h1 holds again: its last, nothing
// is ended after it.
func TestExecTimeoutOfAnUnseenWait(t *testing.T) {
	t.Parallel()
	ex, h1, h2, seen, err := staleLook(t, "LOCK TABLE o4 IN ACCESS EXCLUSIVE MODE", time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a look saw the first wait: %v", seen)
	a := &ex.Attempts[0]
	if len(ex.Attempts) != 2 || a.Outcome != maintenance.LockTimeout || a.Lock != nil || len(a.Blockers) != 0 || len(a.Results) != 0 {
		t.Fatalf("attempt %+v: want a lock timeout with no wait seen and no one ended", a)
	}
	if !h1.Alive() || !h2.Alive() {
		t.Fatalf("ended: h1 alive %v, h2 alive %v", h1.Alive(), h2.Alive())
	}
}

// waitFor reads the locks exec's observer logs until one names want
// (true), or exec is done (false).
func waitFor(t *testing.T, locks <-chan string, want string, done <-chan struct{}) bool {
	t.Helper()
	for {
		select {
		case lock := <-locks:
			if strings.Contains(lock, want) {
				return true
			}
		case <-done:
			return false
		}
	}
}

// A function whose exception handler catches the lock timeout, waits on
// another lock and re-raises it: which wait timed out is not known (the
// first, on t2, held by b, or the later one the last looks saw, on t1,
// held by a, which then takes t1 again behind the attempt; a function's
// SET clause may shorten the timeout too). A lock timeout raised inside a
// function ends no one, and says so.
func TestExecReRaisedTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	a.Exec(`CREATE TABLE t1 (id int); CREATE TABLE t2 (id int);
CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    LOCK TABLE t2 IN ACCESS EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    LOCK TABLE t1 IN ACCESS EXCLUSIVE MODE;
    RAISE;
END$f$`)
	a.Exec("BEGIN")
	a.Exec("LOCK TABLE t1 IN ACCESS SHARE MODE")
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b.Exec("BEGIN")
	b.Exec("LOCK TABLE t2 IN ACCESS SHARE MODE")
	run, observe := execConns(t, db)
	looks := make(chan string, 1)
	done := make(chan struct{})
	var ex *maintenance.Executed
	var err error
	go func() {
		defer close(done)
		ex, err = maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
			SQL: "SELECT f()", LockTimeout: 500 * time.Millisecond, Attempts: 2,
			Clear: action.Terminate, Wait: 5 * time.Second, Logger: slog.New(looksHandler{looks}),
		})
	}()
	// Whether a look sees the wait on t1 or not (under load it may time
	// out first, inside the handler too), no one is ended.
	seen := waitFor(t, looks, "t1", done)
	if seen {
		a.Start("COMMIT; BEGIN; LOCK TABLE t1 IN ACCESS SHARE MODE")
	}
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Attempts) != 2 || ex.Committed() {
		t.Fatalf("attempts %+v", ex.Attempts)
	}
	for _, at := range ex.Attempts {
		if at.Outcome != maintenance.LockTimeout || len(at.Results) != 0 || !strings.Contains(at.TimedOutIn, "function f()") ||
			!strings.HasPrefix(at.Describe(), "not known: the lock timeout came from inside a function") {
			t.Fatalf("attempt %d: %+v (%s): want a lock timeout from inside f, no one ended", at.N, at, at.Describe())
		}
	}
	if seen {
		if err := a.Wait(); err != nil {
			t.Fatalf("a locking t1 again: %v", err)
		}
	}
	if !a.Alive() || !b.Alive() {
		t.Fatalf("ended: a alive %v, b alive %v", a.Alive(), b.Alive())
	}
}

// A ROLLBACK before the SQL's last COMMIT rolled back some of it: that
// last COMMIT does not make the SQL committed (the DDL was rolled back).
func TestExecRollbackThenCommit(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := setup.Exec(pgtest.Context(t), "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	run, observe := execConns(t, db)
	for i, sql := range []string{
		"ALTER TABLE t ADD COLUMN w int; ROLLBACK; COMMIT",
		"BEGIN; ALTER TABLE t ADD COLUMN w int; ROLLBACK; END",
		"BEGIN; ALTER TABLE t ADD COLUMN w int; SAVEPOINT s; ROLLBACK; BEGIN; COMMIT",
	} {
		ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
			SQL: sql, LockTimeout: 200 * time.Millisecond, Attempts: 2, Clear: action.Terminate,
		})
		if !errors.Is(err, maintenance.ErrRolledBack) || ex.Committed() {
			t.Fatalf("%d: %s: %v, committed %v: want ErrRolledBack", i, sql, err, ex.Committed())
		}
		if hasColumn(t, db, "w") {
			t.Fatalf("%s added the column", sql)
		}
	}
	// What follows the last ROLLBACK ran in a transaction of its own and
	// committed with the query: not "nothing committed".
	ex, err := maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
		SQL: "ROLLBACK; ALTER TABLE t ADD COLUMN r int", LockTimeout: 200 * time.Millisecond, Attempts: 2, Clear: action.Terminate,
	})
	if !errors.Is(err, maintenance.ErrRolledBack) || !strings.Contains(err.Error(), "the statements after its last COMMIT or ROLLBACK, committed") ||
		ex.Committed() || !hasColumn(t, db, "r") {
		t.Fatalf("ROLLBACK; ALTER: %v, committed %v, column %v", err, ex.Committed(), hasColumn(t, db, "r"))
	}
}

// SQL that shortens its own lock timeout where no text check sees it (a
// function that SETs it with a name built at run time; the error then has
// no context): its wait on a, longer than the short timeout but shorter
// than --lock-timeout, ends by itself when a's holder lets go and takes a
// again, then a 1ms wait on b times out. The attempt was over before any
// wait could last --lock-timeout: no one is ended, not a's holder (who
// blocked no wait that timed out), not b's (no look saw that wait).
func TestExecShortenedTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	a.Exec(`CREATE TABLE a (id int); CREATE TABLE b (id int);
CREATE FUNCTION lt(v text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    EXECUTE pg_catalog.format('SET lock%stimeout = %L', pg_catalog.chr(95), v);
END$f$`)
	a.Exec("BEGIN")
	a.Exec("LOCK TABLE a IN ACCESS SHARE MODE")
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b.Exec("BEGIN")
	b.Exec("LOCK TABLE b IN ACCESS SHARE MODE")
	run, observe := execConns(t, db)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	done := make(chan struct{})
	var ex *maintenance.Executed
	var err error
	go func() {
		defer close(done)
		// Looks 800ms apart: a wait granted in the last 800ms before the
		// timeout is as long as one seen to time out.
		ex, err = maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
			SQL:         "SELECT lt('10s'); ALTER TABLE a ADD COLUMN x int; SELECT lt('1ms'); ALTER TABLE b ADD COLUMN y int",
			LockTimeout: 2 * time.Second, Attempts: 1, Clear: action.Terminate, Wait: 5 * time.Second, Poll: 800 * time.Millisecond,
		})
	}()
	pgtest.Eventually(t, "the attempt waited 1.7s on a", func() (bool, error) {
		var ok bool
		err := admin.QueryRow(pgtest.Context(t), `SELECT EXISTS (SELECT FROM pg_catalog.pg_locks
            WHERE pid = $1 AND NOT granted AND relation = 'public.a'::pg_catalog.regclass
              AND pg_catalog.clock_timestamp() - (SELECT query_start FROM pg_catalog.pg_stat_activity WHERE pid = $1) > '1.7s')`,
			int32(run.PgConn().PID())).Scan(&ok)
		return ok, err
	})
	a.Start("COMMIT; BEGIN; LOCK TABLE a IN ACCESS SHARE MODE")
	<-done
	if err != nil {
		t.Fatal(err)
	}
	at := &ex.Attempts[0]
	if len(ex.Attempts) != 1 || at.Outcome != maintenance.LockTimeout || at.Lock != nil || len(at.Results) != 0 {
		t.Fatalf("attempt %+v (%s): want a lock timeout with no wait seen, no one ended", at, at.Describe())
	}
	if err := a.Wait(); err != nil {
		t.Fatal(err)
	}
	if !a.Alive() || !b.Alive() {
		t.Fatalf("ended: a alive %v, b alive %v", a.Alive(), b.Alive())
	}
}

// Two waits on one object, one right after the other (the SQL releases an
// advisory lock and asks for it again, and the next in its queue took it in
// between),
// are two (pg_locks.waitstart, 14+): together they last longer than the
// lock timeout and its 100ms, neither does, and the observer cancels
// nothing. The holder is left alone; the SQL commits once it lets go.
func TestExecTwoWaitsOnOneLock(t *testing.T) {
	t.Parallel()
	if m := pgtest.Shared(t).Major; m < 14 {
		t.Skipf("pg_locks.waitstart is 14+ (this is %d): before it, two waits on one object with no look between them are one (docs/maintenance.md)", m)
	}
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("SELECT pg_catalog.pg_advisory_lock(1)")
	run, observe := execConns(t, db)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	done := make(chan struct{})
	var ex *maintenance.Executed
	var err error
	waited := func(d time.Duration) {
		t.Helper()
		pgtest.Eventually(t, fmt.Sprintf("the attempt waited %s", d), func() (bool, error) {
			select {
			case <-done:
				return false, fmt.Errorf("the attempt ended: %+v, %v", ex.Attempts, err)
			default:
			}
			var ok bool
			err := admin.QueryRow(pgtest.Context(t), `SELECT EXISTS (SELECT FROM pg_catalog.pg_locks
                WHERE pid = $1 AND NOT granted AND waitstart < pg_catalog.clock_timestamp() - $2::interval)`,
				int32(run.PgConn().PID()), d.String()).Scan(&ok)
			return ok, err
		})
	}
	go func() {
		defer close(done)
		ex, err = maintenance.Exec(pgtest.Context(t), run, observe, maintenance.ExecOptions{
			SQL:         "SELECT pg_catalog.pg_advisory_lock(1); SELECT pg_catalog.pg_advisory_unlock(1), pg_catalog.pg_advisory_lock(1)",
			LockTimeout: 2 * time.Second, Attempts: 1, Clear: action.Terminate, Wait: 5 * time.Second,
		})
	}()
	waited(time.Second)
	// next queues behind the attempt; the holder lets go: the attempt gets
	// the lock, lets go and asks again, and next, queued before that, gets
	// it in between.
	next := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	next.Start("SELECT pg_catalog.pg_advisory_lock(1)")
	next.WaitState("active", "Lock")
	holder.Exec("SELECT pg_catalog.pg_advisory_unlock(1)")
	if err := next.Wait(); err != nil {
		t.Fatal(err)
	}
	waited(1200 * time.Millisecond)
	next.Exec("SELECT pg_catalog.pg_advisory_unlock(1)")
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Attempts) != 1 || !ex.Committed() || !holder.Alive() || !next.Alive() {
		t.Fatalf("attempts %+v, holder alive %v, next alive %v", ex.Attempts, holder.Alive(), next.Alive())
	}
}

// Describe names a blocker's state, or why it has none: a process that is
// no client backend has none (a standby's startup process, as a superuser
// sees it), another role's session hides it; an attempt whose wait no look
// saw blames no one, whatever kept the looks from seeing it.
func TestAttemptDescribe(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		blockers []activity.Session
		want     string
	}{
		{"no look saw the wait", nil, "no one seen (no look saw the wait that timed out)"},
		{"state", []activity.Session{{PID: 10, BackendType: "client backend", State: "idle in transaction"}}, "10 (idle in transaction)"},
		{"another role's", []activity.Session{{PID: 11}}, "11 (state hidden: pg_read_all_stats)"},
		{"a client backend with no state", []activity.Session{{PID: 12, BackendType: "client backend"}}, "12 (state hidden: pg_read_all_stats)"},
		{"startup process", []activity.Session{{PID: 13, BackendType: "startup"}}, "13 (startup)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &maintenance.Attempt{Blockers: tc.blockers}
			if got := a.Describe(); got != tc.want {
				t.Fatalf("%q, want %q", got, tc.want)
			}
		})
	}
}

// A standby's startup process, as the server shows it to a superuser, has
// no state: a blocker of exec's look is named by what it is.
func TestAttemptDescribeStartup(t *testing.T) {
	t.Parallel()
	c := pgtest.Connect(t, pgtest.Standby(t).DSN("postgres", pgtest.Superuser))
	var pid int32
	if err := c.QueryRow(pgtest.Context(t), "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup'").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	snap, err := activity.Lookup(pgtest.Context(t), c, []int32{pid})
	if err != nil || len(snap.Sessions) != 1 {
		t.Fatalf("%v, %+v", err, snap)
	}
	a := &maintenance.Attempt{Blockers: snap.Sessions}
	if got, want := a.Describe(), fmt.Sprintf("%d (startup)", pid); got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}
