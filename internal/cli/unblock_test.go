package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestUnblockEndsOnlyTheRoot(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root, first := pgtest.LockWait(t, db)
	second := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	second.Start("SELECT count(*) FROM t")
	second.WaitState("active", "Lock")

	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--dry-run")
	r.wantCode(t, 0)
	rootLine := strconv.Itoa(int(root.PID)) + "  " + db
	if !strings.Contains(r.out, rootLine) || !strings.Contains(r.out, "└ waits") ||
		strings.Count(r.out, "└ waits") != 2 || !strings.Contains(r.out, "planned") {
		t.Fatalf("stdout:\n%s", r.out)
	}

	// JSON: the root, then its waiters with blocked_by and no action;
	// as a plan, apply acts on the root alone.
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 3 || rows[0]["pid"] != float64(root.PID) || rows[0]["outcome"] != "planned" {
		t.Fatalf("rows %v", rows)
	}
	for _, w := range rows[1:] {
		if w["action"] != nil || w["outcome"] != nil || w["guard"] != nil || !strings.HasPrefix(w["detail"].(string), "waiting on a lock") {
			t.Fatalf("waiter row %v", w)
		}
		if by := w["blocked_by"].([]any); len(by) == 0 || (w["pid"] == float64(first.PID) && by[0] != float64(root.PID)) {
			t.Fatalf("waiter row %v", w)
		}
	}
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", plan, "-o", "json")
	r.wantCode(t, 0)
	rows = jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["pid"] != float64(root.PID) || rows[0]["outcome"] != "terminated" {
		t.Fatalf("rows %v", rows)
	}
	if root.Alive() || !first.Alive() || !second.Alive() {
		t.Fatal("unblock ended a waiter, or not the root")
	}
	// The waiters got their lock and finished.
	if err := first.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatal(err)
	}

	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes")
	r.wantCode(t, 1)
	if r.errOut != "pgreap: no sessions matched: no lock wait longer than 0s\n" {
		t.Fatalf("stderr %q", r.errOut)
	}
}

func TestUnblockWaitsYoungerThanTheThresholdAreLeft(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root, _ := pgtest.LockWait(t, db)
	r := run(t, false, "unblock", "--longer-than", "1h", "--db", db, "--yes")
	r.wantCode(t, 1)
	if !root.Alive() {
		t.Fatal("root ended")
	}
	r = run(t, false, "unblock", "--longer-than", "-1s")
	r.wantCode(t, 2)
}

func TestUnblockSelectorsChooseTheRoots(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root, _ := pgtest.LockWait(t, db)
	other := pgtest.NewDB(t)
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", other, "--yes")
	r.wantCode(t, 1)
	if strings.Contains(r.out, db) || !root.Alive() {
		t.Fatalf("a root of another database was shown or ended:\n%s", r.out)
	}
}

// An unblock plan records "still holds up a wait longer than D": applied
// after the waiter gave up, it leaves the root alone.
func TestUnblockPlanRechecksTheWait(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root, waiter := pgtest.LockWait(t, db)
	pgtest.Eventually(t, "a wait older than 200ms", func() (bool, error) {
		var old bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
			"SELECT pg_catalog.statement_timestamp() - query_start > '300ms' FROM pg_catalog.pg_stat_activity WHERE pid = $1", waiter.PID).Scan(&old)
		return old, err
	})
	r := run(t, false, "unblock", "--longer-than", "200ms", "--db", db, "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.out, `"blocking_longer_than":"200ms"`) {
		t.Fatalf("the plan does not record the wait:\n%s", r.out)
	}
	// The waiter gives up; the root still holds its lock, blocking no one.
	pgtest.Exec(t, "SELECT pg_catalog.pg_cancel_backend($1)", waiter.PID)
	_ = waiter.Wait()
	r = run(t, false, "apply", plan, "-o", "json")
	r.wantCode(t, 3)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "changed" {
		t.Fatalf("rows:\n%s", r.out)
	}
	if !root.Alive() {
		t.Fatal("apply ended a root that no longer blocked anyone")
	}
}

// A row locked FOR SHARE by two transactions: the UPDATE behind them waits
// for one, then the other, while pg_blocking_pids names only the first.
// rowHeldBy locks the row FOR SHARE from a session of each of holders (in
// db; the table granted to role, if any) and starts the UPDATE as role; it
// returns the holders and the waiter.
func rowHeldBy(t *testing.T, db, role string, holders ...pgtest.VictimOptions) ([]*pgtest.Victim, *pgtest.Victim) {
	t.Helper()
	setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	setup.Exec("CREATE TABLE m (id int PRIMARY KEY, v int)")
	setup.Exec("INSERT INTO m VALUES (1, 0)")
	if role != "" {
		setup.Exec("GRANT ALL ON m TO " + pgx.Identifier{role}.Sanitize())
	}
	var vs []*pgtest.Victim
	for _, opt := range holders {
		opt.DB = db
		v := pgtest.NewVictim(t, opt)
		v.Exec("BEGIN")
		v.Exec("SELECT * FROM m WHERE id = 1 FOR SHARE")
		vs = append(vs, v)
	}
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: role})
	waiter.Start("UPDATE m SET v = 1 WHERE id = 1")
	waiter.WaitState("active", "Lock")
	return vs, waiter
}

// rowHeldByTwo is rowHeldBy with two holders of role.
func rowHeldByTwo(t *testing.T, db, role string) (a, b, waiter *pgtest.Victim) {
	t.Helper()
	vs, waiter := rowHeldBy(t, db, role, pgtest.VictimOptions{User: role}, pgtest.VictimOptions{User: role})
	return vs[0], vs[1], waiter
}

func TestUnblockRowHeldByTwo(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a, b, waiter := rowHeldByTwo(t, db, "")
	// Connected to the row's database: pgreap reads the row's lockers.
	dsn := pgtest.Shared(t).DSN(db, pgtest.Superuser)
	r := run(t, false, "ls", "--db", db, "--waiting", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || fmt.Sprint(rows[0]["blocked_by"]) != fmt.Sprint([]any{float64(min(a.PID, b.PID)), float64(max(a.PID, b.PID))}) {
		t.Fatalf("blocked_by must name both holders of the row (%d, %d):\n%s", a.PID, b.PID, r.out)
	}
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "-d", dsn)
	r.wantCode(t, 0)
	if a.Alive() || b.Alive() {
		t.Fatalf("a holder of the row is still there:\n%s", r.out)
	}
	if err := waiter.Wait(); err != nil {
		t.Fatalf("the update: %v", err)
	}
}

// Without the privilege to read the table, pgreap sees what the server
// says: one holder at a time. unblock ends it, finds the waiter waiting
// for the other, and ends that one too.
func TestUnblockRowHeldByTwoWithoutReadingTheTable(t *testing.T) {
	t.Parallel()
	// The roles first: cleanups run last first, and a role with grants
	// in the database is dropped after it.
	app := pgtest.NewRole(t, "NOSUPERUSER")
	reaper := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend", "pg_read_all_stats")
	db := pgtest.NewDB(t)
	a, b, waiter := rowHeldByTwo(t, db, app)
	dsn := pgtest.Shared(t).DSN(db, reaper)
	r := run(t, false, "ls", "--db", db, "--waiting", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); len(rows) != 1 || len(rows[0]["blocked_by"].([]any)) != 1 {
		t.Fatalf("without SELECT on the table, blocked_by is the server's one holder:\n%s", r.out)
	}
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "-d", dsn)
	r.wantCode(t, 0)
	if a.Alive() || b.Alive() {
		t.Fatalf("a holder of the row is still there:\n%s\n%s", r.out, r.errOut)
	}
	if !strings.Contains(r.out, "Still waiting, behind other sessions:") {
		t.Fatalf("no second round:\n%s", r.out)
	}
	if err := waiter.Wait(); err != nil {
		t.Fatalf("the update: %v", err)
	}
}

// A holder pgreap may not end (a superuser's session, for a role with
// pg_signal_backend): unblock says who still blocks whom, exit 3.
func TestUnblockSaysWhoStillBlocks(t *testing.T) {
	t.Parallel()
	// The roles first: cleanups run last first, and a role with grants
	// in the database is dropped after it.
	app := pgtest.NewRole(t, "NOSUPERUSER")
	reaper := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend", "pg_read_all_stats")
	db := pgtest.NewDB(t)
	vs, waiter := rowHeldBy(t, db, app, pgtest.VictimOptions{User: app}, pgtest.VictimOptions{})
	ours, super := vs[0], vs[1]
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "--timeout", "2s", "-d", pgtest.Shared(t).DSN(db, reaper))
	r.wantCode(t, 3)
	want := fmt.Sprintf("%d waits for %d", waiter.PID, super.PID)
	if !strings.Contains(r.errOut, "still waiting after 2s: "+want) {
		t.Fatalf("stderr does not say %q:\n%s", want, r.errOut)
	}
	if ours.Alive() || !super.Alive() {
		t.Fatal("unblock ended the wrong holder")
	}
}

// Once the root is gone, the first waiter gets the row and holds it in its
// transaction; the second waits for it. That is the queue moving: unblock
// never touches a waiter.
func TestUnblockNeverEndsAWaiterThatGotTheLock(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("CREATE TABLE m (id int PRIMARY KEY, v int)")
	root.Exec("INSERT INTO m VALUES (1, 0)")
	root.Exec("BEGIN")
	root.Exec("SELECT * FROM m WHERE id = 1 FOR UPDATE")
	first := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	first.Exec("BEGIN")
	first.Start("UPDATE m SET v = 1 WHERE id = 1")
	first.WaitState("active", "Lock")
	second := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	second.Start("UPDATE m SET v = 2 WHERE id = 1")
	second.WaitState("active", "Lock")
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "--timeout", "2s", "-o", "json")
	r.wantCode(t, 0)
	if root.Alive() || !first.Alive() || !second.Alive() {
		t.Fatalf("unblock must end the root and nothing else:\n%s\n%s", r.out, r.errOut)
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("the first waiter: %v", err)
	}
	for _, row := range jsonRows(t, r.out) {
		if row["action"] != nil && row["pid"] != float64(root.PID) {
			t.Fatalf("acted on a waiter: %v", row)
		}
	}
}

// A root that cannot be ended (cancel, and it runs no query) is not tried
// again and again: unblock gives up at --timeout and says who waits.
func TestUnblockGivesUpAtTheTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root, waiter := pgtest.LockWait(t, db)
	_, elsewhere := pgtest.LockWait(t, pgtest.NewDB(t)) // not chosen: not named
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "--cancel", "--timeout", "1s")
	r.wantCode(t, 3)
	want := fmt.Sprintf("pgreap: still waiting after 1s: %d waits for %d\n", waiter.PID, root.PID)
	if !strings.HasSuffix(r.errOut, want) || strings.Contains(r.out, "Still waiting, behind") ||
		strings.Contains(r.errOut, strconv.Itoa(int(elsewhere.PID))) {
		t.Fatalf("want one round and %q:\n%s\n%s", want, r.out, r.errOut)
	}
	if !root.Alive() {
		t.Fatal("a cancel ended the session")
	}
}

// The waits unblock set out to release are named at the end even when the
// selectors left out what holds them.
func TestUnblockNamesWaitsItMayNotRelease(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	tag := pgtest.Tag(t)
	vs, waiter := rowHeldBy(t, db, "", pgtest.VictimOptions{App: tag + "-a"}, pgtest.VictimOptions{App: tag + "-b"})
	a, b := vs[0], vs[1]
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--app", tag+"-a", "--yes", "--timeout", "1s",
		"-d", pgtest.Shared(t).DSN(db, pgtest.Superuser))
	r.wantCode(t, 3)
	want := fmt.Sprintf("%d waits for %d", waiter.PID, b.PID)
	if a.Alive() || !b.Alive() || !strings.Contains(r.errOut, want) {
		t.Fatalf("want a ended, b left, and %q:\n%s\n%s", want, r.out, r.errOut)
	}
}

// A session that waited behind the root for less than --longer-than is
// not among the waits unblock set out to release, but it is a waiter: once
// the root is gone it takes the lock, and what queues behind it is the
// queue moving. unblock never touches it.
func TestUnblockNeverEndsAYoungerWaiter(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("CREATE TABLE t2 (id int, v int)")
	root.Exec("INSERT INTO t2 VALUES (1, 0), (2, 0)")
	root.Exec("BEGIN")
	root.Exec("UPDATE t2 SET v = v + 1")
	old := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	old.Start("UPDATE t2 SET v = v + 10")
	old.WaitState("active", "Lock")
	pgtest.Eventually(t, "a wait older than 600ms", func() (bool, error) {
		var ok bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
			"SELECT pg_catalog.statement_timestamp() - query_start > '600ms' FROM pg_catalog.pg_stat_activity WHERE pid = $1", old.PID).Scan(&ok)
		return ok, err
	})
	young := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	young.Exec("BEGIN")
	young.Start("UPDATE t2 SET v = v + 100 WHERE id = 2")
	young.WaitState("active", "Lock")
	r := run(t, false, "unblock", "--longer-than", "500ms", "--db", db, "--yes", "--timeout", "2s")
	if root.Alive() || !young.Alive() || !old.Alive() {
		t.Fatalf("unblock must end the root alone:\n%s\n%s", r.out, r.errOut)
	}
	r.wantCode(t, 0)
}

// Before 14 a wait is timed from its statement's start, which a role
// without pg_read_all_stats does not see of another role's session:
// unblock says so instead of "no lock wait longer than D".
func TestUnblockSaysWhenWaitsCannotBeTimed(t *testing.T) {
	t.Parallel()
	if pgtest.Shared(t).Major >= 14 {
		t.Skipf("pg_locks.waitstart (14+) times every wait for every role; this is %d", pgtest.Shared(t).Major)
	}
	db := pgtest.NewDB(t)
	root, _ := pgtest.LockWait(t, db)
	nobody := pgtest.NewRole(t, "NOSUPERUSER")
	r := run(t, false, "unblock", "--longer-than", "1s", "--db", db, "--yes", "-d", pgtest.Shared(t).DSN("postgres", nobody))
	r.wantCode(t, 1)
	if !strings.Contains(r.errOut, "no lock wait longer than 1s that this role can time: 1 wait of unknown age") || !root.Alive() {
		t.Fatalf("stderr %q", r.errOut)
	}
}
