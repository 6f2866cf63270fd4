package pgreap_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// lockPile: a session of the test holds a lock on a table of its own and
// another waits on it, in db; it returns the holder.
func lockPile(t *testing.T, db, table string) *pgtest.Victim {
	t.Helper()
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE " + table + " ()")
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE " + table)
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("SELECT * FROM " + table)
	waiter.WaitState("active", "Lock")
	return holder
}

// More roots than Limit: none ended, and the error is ErrLimit, as for
// Terminate.
func TestUnblockLimitIsErrLimit(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a, b := lockPile(t, db, "a"), lockPile(t, db, "b")
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	done, err := pgreap.Unblock(pgtest.Context(t), conn, pgreap.UnblockOptions{
		Select: &pgreap.Selection{DB: []string{db}}, Limit: 1})
	if !errors.Is(err, pgreap.ErrLimit) {
		t.Fatalf("err %v, want ErrLimit", err)
	}
	if len(done.Results) != 0 || !a.Alive() || !b.Alive() {
		t.Fatalf("something was done: %+v", done.Results)
	}
}

// Stopped by its context while it waits for a root it may not end (a
// superuser's, denied) to let its waiter go: the error says so
// (errors.Is), not a bare "interrupted".
func TestUnblockStoppedByItsContext(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	lockPile(t, db, "s")
	role := pgtest.NewRole(t, "NOSUPERUSER")
	if _, err := pgtest.Admin(t).Exec(pgtest.Context(t), "GRANT pg_read_all_stats TO "+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Pgreap(t, role)
	ctx, cancel := context.WithTimeout(pgtest.Context(t), 3*time.Second)
	defer cancel()
	done, err := pgreap.Unblock(ctx, conn, pgreap.UnblockOptions{Select: &pgreap.Selection{DB: []string{db}}, Timeout: time.Hour})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's", err)
	}
	if len(done.Results) != 1 || done.Results[0].Outcome != pgreap.Denied {
		t.Fatalf("results %+v, want the root denied", done.Results)
	}
}

// Drain says what it cannot end: a prepared transaction in the database.
func TestDrainNamesPreparedTransactions(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	gid := pgtest.PrepareTransaction(t, db, "", "", "CREATE TABLE p ()")
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	d, err := pgreap.Drain(pgtest.Context(t), conn, db, pgreap.DrainOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pgreap.Undrain(context.Background(), conn, db, d.Before) })
	if len(d.Prepared) != 1 || d.Prepared[0].GID != gid {
		t.Fatalf("prepared %+v, want %s", d.Prepared, gid)
	}
}
