package cli_test

import (
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

	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--yes", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
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
