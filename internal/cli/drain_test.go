package cli_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

func dbSettings(t *testing.T, db string) (allow bool, limit int32) {
	t.Helper()
	err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT datallowconn, datconnlimit FROM pg_catalog.pg_database WHERE datname = $1", db).Scan(&allow, &limit)
	if err != nil {
		t.Fatal(err)
	}
	return allow, limit
}

func connectTo(t *testing.T, db, user string) error {
	t.Helper()
	cn, err := pgx.Connect(pgtest.Context(t), pgtest.Shared(t).DSN(db, user))
	if err == nil {
		cn.Close(context.Background())
	}
	return err
}

// The drained database must be reopened before the test's cleanup drops it.
func reopen(t *testing.T, db string) {
	t.Cleanup(func() {
		_, _ = pgtest.Admin(t).Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH ALLOW_CONNECTIONS true")
	})
}

func TestDrainEmptiesAndHoldsUndrainRestores(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" CONNECTION LIMIT 7")
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b.Exec("BEGIN")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{})

	r := run(t, false, "drain", db, "-o", "json")
	r.wantCode(t, 0)
	if len(jsonRows(t, r.out)) != 2 || !strings.Contains(r.errOut, "is drained (2 sessions ended) and held") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if a.Alive() || b.Alive() || !other.Alive() {
		t.Fatal("drain ended the wrong sessions")
	}
	if allow, _ := dbSettings(t, db); allow {
		t.Fatal("still allows connections")
	}
	if err := connectTo(t, db, pgtest.Superuser); err == nil || !strings.Contains(err.Error(), "not currently accepting connections") {
		t.Fatalf("a new connection (even a superuser's): %v", err)
	}

	// Draining again keeps the first record: undrain restores what was
	// there before the first drain, not the blocked state.
	r = run(t, false, "drain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "already drained; keeping the settings recorded") {
		t.Fatalf("stderr %s", r.errOut)
	}

	r = run(t, false, "undrain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "restored ALLOW_CONNECTIONS true, CONNECTION LIMIT 7") {
		t.Fatalf("stdout %q", r.out)
	}
	if allow, limit := dbSettings(t, db); !allow || limit != 7 {
		t.Fatalf("after undrain: %t %d", allow, limit)
	}
	if err := connectTo(t, db, pgtest.Superuser); err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	r = run(t, false, "undrain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "already restored") {
		t.Fatalf("stdout %q", r.out)
	}
}

func TestDrainAsOwnerCannotEndASuperusersSession(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	owner := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend", "pg_read_all_stats")
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgx.Identifier{owner}.Sanitize())
	t.Cleanup(func() { // before the role is dropped: it cannot be while it owns the database
		_, _ = pgtest.Admin(t).Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgtest.Superuser)
	})
	super := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	mine := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: owner})

	r := run(t, false, "-U", owner, "drain", db, "--timeout", "1s", "-o", "csv")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, ",terminate,denied,role postgres is a superuser") ||
		!strings.Contains(r.errOut, "1 session still connected after 1s; "+db+" stays blocked: 'pgreap undrain "+db+"' reopens it") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if mine.Alive() || !super.Alive() {
		t.Fatal("wrong sessions ended")
	}
	if allow, _ := dbSettings(t, db); allow {
		t.Fatal("not blocked after the timeout")
	}
	r = run(t, false, "-U", owner, "undrain", db)
	r.wantCode(t, 0)
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("not reopened")
	}
}

func TestDrainBadInput(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	stranger := pgtest.NewRole(t, "NOSUPERUSER")
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"drain"}, "drain takes one database name"},
		{[]string{"drain", "nosuchdb_" + db}, `database "nosuchdb_` + db + `": no such database`},
		{[]string{"drain", "shop*"}, "not a glob"},
		{[]string{"drain", db, "--timeout", "0s"}, "--timeout must be more than zero"},
		{[]string{"-d", "dbname=" + db, "drain", db}, "pgreap would connect to"},
		{[]string{"-U", stranger, "drain", db}, "needs its owner or a superuser"},
		{[]string{"undrain", db}, "no drain record for " + db},
		{[]string{"undrain", db, "--connection-limit", "3"}, "give both --allow-connections and --connection-limit"},
	}
	for _, tt := range tests {
		r := run(t, false, tt.args...)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.args, r.code, r.out, r.errOut, tt.err)
		}
	}
	if allow, limit := dbSettings(t, db); !allow || limit != -1 {
		t.Fatalf("bad input changed the database: %t %d", allow, limit)
	}
	// Told the values, undrain sets them.
	r := run(t, false, "undrain", db, "--allow-connections=true", "--connection-limit=5")
	r.wantCode(t, 0)
	if allow, limit := dbSettings(t, db); !allow || limit != 5 {
		t.Fatalf("explicit undrain: %t %d", allow, limit)
	}
}
