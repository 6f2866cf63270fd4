package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// preparedPileUp makes a lock pile-up whose root is a prepared transaction
// holding t's ACCESS EXCLUSIVE lock, in a database of its own; pgreap runs
// connected to postgres, another database.
func preparedPileUp(t *testing.T) (db, gid string, waiter *pgtest.Victim) {
	t.Helper()
	db = pgtest.NewDB(t)
	owner := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	owner.Exec("CREATE TABLE t (id int)")
	gid = pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	waiter = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("SELECT count(*) FROM t")
	waiter.WaitState("active", "Lock")
	return db, gid, waiter
}

// pg_blocking_pids says 0 for a prepared transaction: ls names it by its
// GID, and blocked_by has backends only.
func TestLsNamesThePreparedTransactionAWaiterWaitsOn(t *testing.T) {
	t.Parallel()
	db, gid, waiter := preparedPileUp(t)

	r := run(t, false, "ls", "--db", db, "--waiting", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["pid"] != float64(waiter.PID) {
		t.Fatalf("rows %v", rows)
	}
	if by := rows[0]["blocked_by"].([]any); len(by) != 0 {
		t.Errorf("blocked_by %v: a prepared transaction is no backend", by)
	}
	if by := rows[0]["blocked_by_prepared"].([]any); len(by) != 1 || by[0] != gid {
		t.Errorf("blocked_by_prepared %v, want [%s]", by, gid)
	}

	r = run(t, false, "ls", "--db", db, "--waiting")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "prepared:"+gid[:10]) { // the cell is cut to its width
		t.Errorf("table:\n%s", r.out)
	}
}

// A prepared transaction at the root: shown as a row of its own, left
// alone (protected, exit 3) unless --rollback-prepared; then rolled back,
// in its own database, and its waiter gets its lock.
func TestUnblockPreparedTransactionAtTheRoot(t *testing.T) {
	t.Parallel()
	db, gid, waiter := preparedPileUp(t)

	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, "prepared:"+gid) || !strings.Contains(r.out, "└ waits") || !strings.Contains(r.out, "protected") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	if !pgtest.IsPrepared(t, gid) || !waiter.Alive() {
		t.Fatal("unblock without --rollback-prepared ended something")
	}

	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--dry-run", "-o", "json")
	r.wantCode(t, 3)
	rows := jsonRows(t, r.out)
	if len(rows) != 2 {
		t.Fatalf("rows %v", rows)
	}
	root, w := rows[0], rows[1]
	if root["pid"] != nil || root["gid"] != gid || root["backend_type"] != "prepared transaction" ||
		root["datname"] != db || root["usename"] != pgtest.Superuser || root["xact_start"] == nil ||
		root["action"] != "rollback" || root["outcome"] != "protected" || root["guard"] != nil ||
		!strings.HasPrefix(root["detail"].(string), "prepared transaction '"+gid+"', prepared ") ||
		!strings.HasSuffix(root["detail"].(string), "ago: end it with ROLLBACK PREPARED or COMMIT PREPARED, or --rollback-prepared") {
		t.Fatalf("root row %v", root)
	}
	if w["pid"] != float64(waiter.PID) || w["outcome"] != nil || w["blocked_by_prepared"].([]any)[0] != gid {
		t.Fatalf("waiter row %v", w)
	}
	// As a plan, there is nothing apply may do: it never rolls back.
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", plan)
	if r.code == 0 || !pgtest.IsPrepared(t, gid) {
		t.Fatalf("apply of a plan with a prepared root: exit %d, stderr %q", r.code, r.errOut)
	}
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--rollback-prepared", "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); rows[0]["outcome"] != "planned" {
		t.Fatalf("rows %v", rows)
	}
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", plan)
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "apply does not roll back prepared transactions") || !pgtest.IsPrepared(t, gid) {
		t.Fatalf("apply of a planned rollback: stderr %q", r.errOut)
	}

	// Without a terminal, --yes is needed, and nothing is done.
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--rollback-prepared")
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "roll back 1 prepared transaction") || !pgtest.IsPrepared(t, gid) {
		t.Fatalf("stderr %q", r.errOut)
	}

	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--rollback-prepared", "--yes", "-o", "json")
	r.wantCode(t, 0)
	rows = jsonRows(t, r.out)
	if rows[0]["gid"] != gid || rows[0]["outcome"] != "rolled back" {
		t.Fatalf("rows %v", rows)
	}
	if pgtest.IsPrepared(t, gid) {
		t.Fatal("still prepared after rolled back")
	}
	// The client's side: its query got the lock and completed.
	if err := waiter.Wait(); err != nil {
		t.Fatalf("the waiter's query: %v", err)
	}
}

// The selectors choose prepared roots by database and owner; a selection
// on what only a backend has leaves them out.
func TestUnblockSelectorsAndPreparedRoots(t *testing.T) {
	t.Parallel()
	db, gid, _ := preparedPileUp(t)
	for _, args := range [][]string{
		{"--db", db, "--user", "nobody_" + db},
		{"--db", db, "--app", "*"},
		{"--db", db, "--exclude-db", db},
	} {
		r := run(t, false, append([]string{"unblock", "--longer-than", "0s", "--yes", "--rollback-prepared"}, args...)...)
		r.wantCode(t, 1)
		if !pgtest.IsPrepared(t, gid) {
			t.Fatalf("%v rolled it back", args)
		}
	}
}

// A waiter behind a session, then a prepared transaction (it waits for
// the second once the first is gone): unblock ends the session, and does
// not spend --timeout waiting for a wait nothing releases; with
// --rollback-prepared it rolls the prepared transaction back in a later
// round (it was there at the first look) and the waiter gets its locks.
func TestUnblockPreparedRootBehindASession(t *testing.T) {
	t.Parallel()
	for _, rollback := range []bool{false, true} {
		t.Run(fmt.Sprintf("rollback=%t", rollback), func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDB(t)
			setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
			setup.Exec("CREATE TABLE t (id int)")
			setup.Exec("CREATE TABLE u (id int)")
			gid := pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE u IN ROW EXCLUSIVE MODE")
			root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
			root.Exec("BEGIN")
			root.Exec("LOCK TABLE t IN ROW EXCLUSIVE MODE")
			waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
			waiter.Exec("BEGIN")
			waiter.Start("LOCK TABLE t, u IN SHARE MODE") // t first: waits for root, then for the prepared one
			waiter.WaitState("active", "Lock")

			args := []string{"unblock", "--longer-than", "0s", "--db", db, "--yes", "--timeout", "1m", "-o", "json"}
			if rollback {
				args = append(args, "--rollback-prepared")
			}
			start := time.Now()
			r := run(t, false, args...)
			if time.Since(start) > 30*time.Second {
				t.Fatalf("unblock waited for a wait nothing releases: %s\n%s", time.Since(start), r.errOut)
			}
			if root.Alive() {
				t.Fatalf("the root is still there:\n%s\n%s", r.out, r.errOut)
			}
			if !rollback {
				r.wantCode(t, 3)
				want := fmt.Sprintf("still waiting: %d waits for prepared:%s", waiter.PID, gid)
				if !pgtest.IsPrepared(t, gid) || !waiter.Alive() || !strings.Contains(r.errOut, want) {
					t.Fatalf("want the prepared transaction and the waiter left, and %q:\n%s", want, r.errOut)
				}
				return
			}
			if r.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", r.code, r.out, r.errOut)
			}
			if pgtest.IsPrepared(t, gid) {
				t.Fatalf("still prepared:\n%s\n%s", r.out, r.errOut)
			}
			if err := waiter.Wait(); err != nil {
				t.Fatalf("the waiter: %v", err)
			}
			rows := jsonRows(t, r.out)
			if !slices.ContainsFunc(rows, func(r map[string]any) bool { return r["gid"] == gid && r["outcome"] == "rolled back" }) {
				t.Fatalf("rows %v", rows)
			}
		})
	}
}

// A dry run judges a rollback as the real run meets it: another role's
// prepared transaction is denied to a role that is not its owner, in the
// dry run as in the run, and nothing is rolled back.
func TestUnblockRollbackPreparedDeniedAsTheRunWouldBe(t *testing.T) {
	t.Parallel()
	db, gid, waiter := preparedPileUp(t)
	nobody := pgtest.NewRole(t, "NOSUPERUSER")
	as := pgtest.Shared(t).DSN("postgres", nobody)
	for _, extra := range [][]string{{"--dry-run"}, {"--yes"}} {
		r := run(t, false, append([]string{"unblock", "--longer-than", "0s", "--db", db, "--rollback-prepared", "-o", "json", "-d", as}, extra...)...)
		r.wantCode(t, 3)
		rows := jsonRows(t, r.out)
		if len(rows) == 0 || rows[0]["gid"] != gid || rows[0]["outcome"] != "denied" ||
			!strings.Contains(rows[0]["detail"].(string), "only its owner ("+pgtest.Superuser+") or a superuser may end it") {
			t.Fatalf("%v: rows %v\n%s", extra, rows, r.errOut)
		}
		if !pgtest.IsPrepared(t, gid) || !waiter.Alive() {
			t.Fatalf("%v: rolled back, or ended the waiter", extra)
		}
	}
}

// A waiter held by a session and a prepared transaction at once: ending
// the session releases nothing, and unblock says at once who still holds
// the wait.
func TestUnblockSaysWhatAPreparedRootStillHolds(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	setup.Exec("CREATE TABLE m (id int)")
	gid := pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE m IN SHARE MODE")
	root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("BEGIN")
	root.Exec("LOCK TABLE m IN SHARE MODE")
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("UPDATE m SET id = 1")
	waiter.WaitState("active", "Lock")

	start := time.Now()
	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "--timeout", "1m")
	r.wantCode(t, 3)
	want := fmt.Sprintf("pgreap: still waiting: %d waits for prepared:%s\n", waiter.PID, gid)
	if root.Alive() || !pgtest.IsPrepared(t, gid) || !waiter.Alive() || !strings.HasSuffix(r.errOut, want) || time.Since(start) > 30*time.Second {
		t.Fatalf("want the session ended, the prepared transaction left, and %q at once (%s):\n%s\n%s", want, time.Since(start), r.out, r.errOut)
	}
}
