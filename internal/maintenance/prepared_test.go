package maintenance_test

import (
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// preparedRow is the prepared transaction gid as a lock tree's row.
func preparedRow(t *testing.T, gid string) *activity.Session {
	t.Helper()
	p := &activity.Session{GID: gid, BackendType: activity.BackendTypePrepared}
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT database::text, owner::text, prepared FROM pg_catalog.pg_prepared_xacts WHERE gid = $1", gid).
		Scan(&p.Datname, &p.Usename, &p.XactStart); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRollbackPrepared(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.PrepareTransaction(t, db, "", "", "CREATE TABLE t (id int)")
	owner := pgtest.NewRole(t, "NOSUPERUSER")
	other := pgtest.NewRole(t, "NOSUPERUSER")
	dsn := func(user string) string { return pgtest.Shared(t).DSN(db, user) }
	ctx := pgtest.Context(t)

	t.Run("rolled back", func(t *testing.T) {
		gid := pgtest.PrepareTransaction(t, db, "", "", "SELECT 1")
		o, detail := maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(pgtest.Superuser)), preparedRow(t, gid))
		if o != action.RolledBack || pgtest.IsPrepared(t, gid) {
			t.Fatalf("%s %q", o, detail)
		}
	})
	t.Run("ended before", func(t *testing.T) {
		gid := pgtest.PrepareTransaction(t, db, "", "", "SELECT 1")
		p := preparedRow(t, gid)
		pgtest.RollbackPrepared(t, db, gid)
		if o, detail := maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(pgtest.Superuser)), p); o != action.Gone {
			t.Fatalf("%s %q", o, detail)
		}
	})
	t.Run("GID reused", func(t *testing.T) {
		// The transaction chosen committed; a new one took its GID: that
		// one is not what was shown, and stays.
		gid := pgtest.PrepareTransaction(t, db, "", "", "SELECT 1")
		p := preparedRow(t, gid)
		c := pgtest.Connect(t, dsn(pgtest.Superuser))
		if _, err := c.Exec(ctx, "COMMIT PREPARED '"+gid+"'"); err != nil {
			t.Fatal(err)
		}
		pgtest.PrepareTransaction(t, db, "", gid, "SELECT 2")
		o, detail := maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(pgtest.Superuser)), p)
		if o != action.Changed || !strings.Contains(detail, "another transaction") || !pgtest.IsPrepared(t, gid) {
			t.Fatalf("%s %q", o, detail)
		}
	})
	t.Run("another role's", func(t *testing.T) {
		gid := pgtest.PrepareTransaction(t, db, owner, "", "SELECT 1")
		o, detail := maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(other)), preparedRow(t, gid))
		if o != action.Denied || !strings.Contains(detail, "owner or a superuser") || !pgtest.IsPrepared(t, gid) {
			t.Fatalf("%s %q", o, detail)
		}
		o, detail = maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(owner)), preparedRow(t, gid))
		if o != action.RolledBack || pgtest.IsPrepared(t, gid) {
			t.Fatalf("its owner: %s %q", o, detail)
		}
	})
	t.Run("a GID that needs quoting", func(t *testing.T) {
		gid := pgtest.PrepareTransaction(t, db, "", `it's a \ gid`, "SELECT 1")
		o, detail := maintenance.RollbackPrepared(ctx, pgtest.PgreapDSN(t, dsn(pgtest.Superuser)), preparedRow(t, gid))
		if o != action.RolledBack || pgtest.IsPrepared(t, gid) {
			t.Fatalf("%s %q", o, detail)
		}
	})
}
