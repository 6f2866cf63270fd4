package activity_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// rowWait sets up, in db, table qualified (created by setupUser) with one
// row locked by each holder with the given lock clause, and an UPDATE of
// a non-key column that waits; everyone connects as user. It returns the
// holders and the waiter.
func rowWait(t *testing.T, db, user, table string, locks ...string) ([]*pgtest.Victim, *pgtest.Victim) {
	t.Helper()
	var holders []*pgtest.Victim
	for _, lock := range locks {
		h := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: user})
		h.Exec("BEGIN")
		h.Exec("SELECT * FROM " + table + " WHERE id = 1 " + lock)
		holders = append(holders, h)
	}
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: user})
	waiter.Start("UPDATE " + table + " SET v = v + 1 WHERE id = 1")
	waiter.WaitState("active", "Lock")
	return holders, waiter
}

// blockedBy is the waiter's blocked_by, with every holder of its row
// pgreap may name, read on a connection to db as the superuser.
func blockedBy(t *testing.T, db string, waiter *pgtest.Victim) []int32 {
	t.Helper()
	cn := pgtest.PgreapDSN(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	snap, err := activity.Take(pgtest.Context(t), cn, activity.Filter{Where: "a.pid = $1", Args: []any{waiter.PID}})
	if err != nil {
		t.Fatal(err)
	}
	if err := activity.RowLockHolders(pgtest.Context(t), cn, snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Sessions) != 1 {
		t.Fatalf("%d sessions", len(snap.Sessions))
	}
	by := slices.Clone(snap.Sessions[0].BlockedBy)
	slices.Sort(by)
	return by
}

func pids(vs ...*pgtest.Victim) []int32 {
	var out []int32
	for _, v := range vs {
		out = append(out, v.PID)
	}
	slices.Sort(out)
	return out
}

// Two FOR SHARE holders of a row: the UPDATE waits for both, the server
// names one; pgreap names both. A FOR KEY SHARE holder (a foreign key
// check) does not hold up an UPDATE of a non-key column: never named.
func TestRowLockHolders(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser)).Exec(pgtest.Context(t),
		"CREATE TABLE m (id int PRIMARY KEY, v int); INSERT INTO m VALUES (1, 0)")
	holders, waiter := rowWait(t, db, "", "m", "FOR KEY SHARE", "FOR SHARE", "FOR SHARE")
	if got, want := blockedBy(t, db, waiter), pids(holders[1], holders[2]); !slices.Equal(got, want) {
		t.Fatalf("blocked_by %v, want the two FOR SHARE holders %v (not the FOR KEY SHARE %d)", got, want, holders[0].PID)
	}
}

// A role that owns a schema can rename it between pgreap's look at the row
// locks and its read of the row, so that the table's name stands for a
// view of its own, whose code, run under SET ROLE, can RESET ROLE to
// pgreap's login role (a superuser's): so a table of such a role is never
// read, and no code of it runs.
func TestRowLockReadRunsNoCodeAsPgreap(t *testing.T) {
	ctx := pgtest.Context(t)
	mal := pgtest.NewRole(t, "NOSUPERUSER")
	db := pgtest.NewDB(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	id := pgx.Identifier{mal}.Sanitize()
	if _, err := admin.Exec(ctx, "GRANT CREATE ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+id+
		"; CREATE TABLE public.ran (who name, super bool); GRANT INSERT ON public.ran TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	owner := pgtest.Connect(t, pgtest.Shared(t).DSN(db, mal))
	if _, err := owner.Exec(ctx, `CREATE SCHEMA a; CREATE SCHEMA b;
		CREATE TABLE a.t (id int PRIMARY KEY, v int); INSERT INTO a.t VALUES (1, 0);
		CREATE FUNCTION b.evil() RETURNS tid LANGUAGE plpgsql VOLATILE AS $$ BEGIN
		  PERFORM pg_catalog.set_config('role', 'none', true);
		  INSERT INTO public.ran SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
		  RETURN '(0,1)'; END $$;
		CREATE VIEW b.t AS SELECT b.evil() AS ctid, '1'::xid AS xmax, 0 AS id, 0 AS v`); err != nil {
		t.Fatal(err)
	}
	_, waiter := rowWait(t, db, mal, "a.t", "FOR SHARE", "FOR SHARE")
	swap := func() {
		if _, err := owner.Exec(ctx, "ALTER SCHEMA a RENAME TO tmp; ALTER SCHEMA b RENAME TO a; ALTER SCHEMA tmp RENAME TO b"); err != nil {
			t.Fatal(err)
		}
	}
	restore := activity.BeforeRowRead(swap)
	blockedBy(t, db, waiter)
	restore()
	var who []string
	rows, err := admin.Query(ctx, "SELECT who || ' ' || super FROM public.ran")
	if err != nil {
		t.Fatal(err)
	}
	if who, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(who) != 0 {
		t.Fatalf("the swapped-in view's code ran, as %v", who)
	}
}

// pgreap's own login role, not a superuser, reads the rows of its own
// tables in its own schema: no one with less than its rights can change
// what their names stand for.
func TestRowLockReadOfPgreapsOwnTable(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	me := pgtest.NewRole(t, "NOSUPERUSER")
	db := pgtest.NewDB(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := admin.Exec(ctx, "CREATE SCHEMA s AUTHORIZATION "+pgx.Identifier{me}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if _, err := pgtest.Connect(t, pgtest.Shared(t).DSN(db, me)).Exec(ctx,
		"CREATE TABLE s.t (id int PRIMARY KEY, v int); INSERT INTO s.t VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	holders, waiter := rowWait(t, db, me, "s.t", "FOR SHARE", "FOR SHARE")
	cn := pgtest.PgreapDSN(t, pgtest.Shared(t).DSN(db, me))
	snap, err := activity.Take(ctx, cn, activity.Filter{Where: "a.pid = $1", Args: []any{waiter.PID}})
	if err != nil {
		t.Fatal(err)
	}
	if err := activity.RowLockHolders(ctx, cn, snap); err != nil {
		t.Fatal(err)
	}
	got := slices.Clone(snap.Sessions[0].BlockedBy)
	slices.Sort(got)
	if want := pids(holders...); !slices.Equal(got, want) {
		t.Fatalf("blocked_by %v, want both FOR SHARE holders %v", got, want)
	}
}

// A table in a schema another role owns (that role could rename the schema
// under it) is not read: blocked_by is the server's.
func TestRowLockNotReadInAnotherRolesSchema(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	schemaOwner := pgtest.NewRole(t, "NOSUPERUSER")
	tableOwner := pgtest.NewRole(t, "NOSUPERUSER")
	db := pgtest.NewDB(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := admin.Exec(ctx, "CREATE SCHEMA s AUTHORIZATION "+pgx.Identifier{schemaOwner}.Sanitize()+
		"; GRANT USAGE, CREATE ON SCHEMA s TO "+pgx.Identifier{tableOwner}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if _, err := pgtest.Connect(t, pgtest.Shared(t).DSN(db, tableOwner)).Exec(ctx,
		"CREATE TABLE s.t (id int PRIMARY KEY, v int); INSERT INTO s.t VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	_, waiter := rowWait(t, db, tableOwner, "s.t", "FOR SHARE", "FOR SHARE")
	if got := blockedBy(t, db, waiter); len(got) != 1 {
		t.Fatalf("blocked_by %v: pgreap read a row of a table in another role's schema", got)
	}
	_ = context.Background
}
