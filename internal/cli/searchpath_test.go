package cli_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// lookalikes are a schema's traps for an unqualified name: each function
// records that it was called, and the view shows nobody.
const lookalikes = `
CREATE SCHEMA evil;
CREATE TABLE evil.calls (fn text);
CREATE VIEW evil.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity WHERE false;
CREATE VIEW evil.pg_locks AS SELECT * FROM pg_catalog.pg_locks WHERE false;
CREATE FUNCTION evil.pg_terminate_backend(integer) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('pg_terminate_backend'); SELECT true $$;
CREATE FUNCTION evil.pg_terminate_backend(integer, bigint) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('pg_terminate_backend/2'); SELECT true $$;
CREATE FUNCTION evil.pg_cancel_backend(integer) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('pg_cancel_backend'); SELECT true $$;
CREATE FUNCTION evil.pg_backend_pid() RETURNS integer LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('pg_backend_pid'); SELECT 0 $$;
CREATE FUNCTION evil.pg_blocking_pids(integer) RETURNS integer[] LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('pg_blocking_pids'); SELECT '{}'::integer[] $$;
CREATE FUNCTION evil.statement_timestamp() RETURNS timestamptz LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('statement_timestamp'); SELECT '2000-01-01'::timestamptz $$;
CREATE FUNCTION evil.unnest(integer[]) RETURNS SETOF integer LANGUAGE sql AS
  $$ INSERT INTO evil.calls VALUES ('unnest'); SELECT 0 $$;
`

// A database whose search_path puts a schema of lookalikes before
// pg_catalog (set for the database, and asked for in the connection
// string): pgreap still sees every session, acts through the real
// functions, and calls none of the lookalikes.
func TestSearchPathLookalikesChangeNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := admin.Exec(pgtest.Context(t), lookalikes); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET search_path = evil, pg_catalog")
	holder, waiter := pgtest.LockWait(t, db)
	runaway := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: pgtest.Tag(t) + "-runaway"})
	runaway.Start("SELECT pg_catalog.pg_sleep(60)")
	runaway.WaitState("active", "Timeout")

	dsn := pgtest.Shared(t).DSN(db, pgtest.Superuser) + " options='-c search_path=evil,pg_catalog'"
	r := run(t, false, "ls", "-d", dsn, "--waiting", "--longer-than", "1ms", "-o", "json")
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(waiter.PID) {
		t.Fatalf("ls --waiting: %s", r.out)
	}
	r = run(t, false, "cancel", "-d", dsn, "--app", runaway.App, "--yes", "-o", "json")
	r.wantCode(t, 0)
	// --db: the lock waits of the tests that run beside this one are not
	// its to end (without it, it ended their roots, and they failed).
	r = run(t, false, "unblock", "-d", dsn, "--db", db, "--longer-than", "0s", "--yes", "-o", "json")
	r.wantCode(t, 0)
	if holder.Alive() || !waiter.Alive() {
		t.Fatalf("unblock: holder alive %v, waiter alive %v", holder.Alive(), waiter.Alive())
	}
	if err := runaway.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the runaway query: %v, want cancelled (57014)", err)
	}
	var calls []string
	rows, err := admin.Query(context.Background(), "SELECT fn FROM evil.calls")
	if err != nil {
		t.Fatal(err)
	}
	calls, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) > 0 {
		t.Fatalf("lookalikes called: %v", calls)
	}
	// The traps work: an unqualified statement on such a connection falls
	// into them.
	plain := pgtest.Connect(t, dsn)
	var seen int
	if err := plain.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_stat_activity").Scan(&seen); err != nil || seen != 0 {
		t.Fatalf("the lookalike view is not in the way: %d sessions, %v", seen, err)
	}
}
