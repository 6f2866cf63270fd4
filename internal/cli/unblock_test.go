package cli_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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
