package activity_test

import (
	"slices"
	"testing"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// pg_blocking_pids says 0 for a prepared transaction. The snapshot names
// each one by its GID, found from the locks it holds, whether the waiter
// waits on a table (two prepared transactions hold it) or on a row (the
// prepared transaction's id), and a role with no privilege sees them too.
func TestSnapshotNamesPreparedBlockers(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	setup.Exec("CREATE TABLE t (id int PRIMARY KEY, v int)")
	setup.Exec("INSERT INTO t VALUES (1, 0), (2, 0)")
	row := pgtest.PrepareTransaction(t, db, "", "", "UPDATE t SET v = 1 WHERE id = 1")
	share := pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE t IN ROW SHARE MODE")
	// A lock that conflicts with no wait here: it must not be named.
	pgtest.PrepareTransaction(t, db, "", "", "CREATE TABLE other (id int)", "LOCK TABLE other IN ACCESS SHARE MODE")

	rowWaiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	rowWaiter.Start("UPDATE t SET v = 2 WHERE id = 1")
	rowWaiter.WaitState("active", "Lock")
	tableWaiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	tableWaiter.Exec("BEGIN")
	tableWaiter.Start("LOCK TABLE t IN EXCLUSIVE MODE")
	tableWaiter.WaitState("active", "Lock")

	nobody := pgtest.NewRole(t, "NOSUPERUSER")
	for _, user := range []string{pgtest.Superuser, nobody} {
		cn := open(t, user)
		snap := take(t, cn)
		if err := activity.PreparedBlockers(pgtest.Context(t), cn, snap); err != nil {
			t.Fatal(err)
		}
		want := map[int32][]string{rowWaiter.PID: {row}, tableWaiter.PID: slices.Sorted(slices.Values([]string{row, share}))}
		for pid, gids := range want {
			s := find(snap, pid)
			if s == nil {
				t.Fatalf("%s: %d not in the snapshot", user, pid)
			}
			if !slices.Equal(s.BlockedByPrepared, gids) || slices.Contains(s.BlockedBy, 0) || !s.Waits() {
				t.Errorf("%s: %d blocked_by %v blocked_by_prepared %v, want %v", user, pid, s.BlockedBy, s.BlockedByPrepared, gids)
			}
		}
		if len(snap.Prepared) != 2 {
			t.Fatalf("%s: prepared rows %+v", user, snap.Prepared)
		}
		for _, p := range snap.Prepared {
			if p.PID != 0 || p.Datname != db || p.Usename != pgtest.Superuser || p.XactStart.IsZero() ||
				p.BackendType != activity.BackendTypePrepared || !p.IsPrepared() {
				t.Errorf("%s: prepared row %+v", user, p)
			}
		}
	}
}
