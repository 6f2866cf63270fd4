package pgreap_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap"
	"github.com/pgreap/pgreap/internal/cluster"
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

// Drain and Undrain on a standby are ErrStandby, nothing done: the
// standby's session is left, and the primary still lets everyone in.
func TestDrainOnStandbyIsErrStandby(t *testing.T) {
	t.Parallel()
	s := pgtest.Standby(t)
	db := pgtest.NewDB(t)
	pgtest.WaitReplay(t, s, pgtest.Shared(t))
	v := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: s, DB: db})
	conn := pgtest.PgreapDSN(t, s.DSN("postgres", pgtest.Superuser))
	d, err := pgreap.Drain(pgtest.Context(t), conn, db, pgreap.DrainOptions{Timeout: time.Minute})
	if !errors.Is(err, pgreap.ErrStandby) || d != nil {
		t.Fatalf("Drain: %v, %+v; want ErrStandby and nothing done", err, d)
	}
	if err := pgreap.Undrain(pgtest.Context(t), conn, db, pgreap.Settings{AllowConnections: false}); !errors.Is(err, pgreap.ErrStandby) {
		t.Fatalf("Undrain: %v, want ErrStandby", err)
	}
	var allow bool
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1", db).Scan(&allow); err != nil || !allow {
		t.Fatalf("datallowconn %v (%v), want true", allow, err)
	}
	if !v.Alive() {
		t.Fatal("Drain ended the standby's session")
	}
}

// Drain with PgBouncer pauses the pooler first and returns the pauses;
// ResumePoolers resumes exactly those, and the pooled client, which waited
// through the hold, gets its answer.
func TestDrainPausesPgBouncer(t *testing.T) {
	t.Parallel()
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{})
	db := pgtest.NewDB(t)
	ctx := pgtest.Context(t)
	dsn := b.DSN(db, pgtest.Superuser) + " default_query_exec_mode=exec"
	client := pgtest.Connect(t, dsn)
	if _, err := client.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	var recorded []pgreap.PoolerPause
	d, err := pgreap.Drain(ctx, conn, db, pgreap.DrainOptions{Timeout: time.Minute, PgBouncer: []string{b.AdminDSN(cluster.AdminUser)},
		RecordPauses: func(ps []pgreap.PoolerPause) error { recorded = ps; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pgreap.Undrain(context.Background(), conn, db, d.Before) })
	if len(d.Pauses) != 1 || d.Pauses[0].State != "paused" || len(recorded) != 1 {
		t.Fatalf("pauses %+v (recorded %+v), want one, paused", d.Pauses, recorded)
	}
	answer := make(chan error, 1)
	go func() { _, err := client.Exec(ctx, "SELECT 1"); answer <- err }()
	pgtest.Eventually(t, "the pooled client waits", func() (bool, error) {
		for _, row := range pgtest.Show(t, b, "POOLS") {
			if row["database"] == db && row["cl_waiting"] != "0" {
				return true, nil
			}
		}
		return false, nil
	})
	if err := pgreap.Undrain(ctx, conn, db, d.Before); err != nil {
		t.Fatal(err)
	}
	ps, err := pgreap.ResumePoolers(ctx, d.Pauses, nil) // reached as recorded
	if err != nil || ps[0].Ours() {
		t.Fatalf("ResumePoolers: %+v, %v", ps, err)
	}
	if err := <-answer; err != nil {
		t.Fatalf("the pooled client after ResumePoolers: %v", err)
	}
}
