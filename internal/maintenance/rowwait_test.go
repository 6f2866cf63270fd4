package maintenance_test

import (
	"testing"

	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// A session waiting for a row holds its tuple lock while it waits, and the
// row's lockers, and a session waiting on a table, do not.
func TestRowWaiting(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE r (id int PRIMARY KEY, v int)")
	holder.Exec("INSERT INTO r VALUES (1, 0)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT * FROM r WHERE id = 1 FOR SHARE")
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("UPDATE r SET v = 1 WHERE id = 1")
	waiter.WaitState("active", "Lock")
	_, tableWaiter := pgtest.LockWait(t, pgtest.NewDB(t))
	got, err := maintenance.RowWaiting(pgtest.Context(t), pgtest.Pgreap(t, pgtest.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	if !got[waiter.PID] || got[holder.PID] || got[tableWaiter.PID] {
		t.Fatalf("row waiting %v: want %d only of %d, %d, %d", got, waiter.PID, waiter.PID, holder.PID, tableWaiter.PID)
	}
}
