package cli_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestKickEndsTheDatabasesSessionsOnly(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: "anything"})
	b.Exec("BEGIN")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{}) // same tag, database postgres
	// A logical replication connection to the database: a walsender
	// with its datname, protected.
	wcfg, err := pgconn.ParseConfig(pgtest.Shared(t).DSN(db, pgtest.Superuser) + " replication=database application_name=" + pgtest.Tag(t) + "-ws")
	if err != nil {
		t.Fatal(err)
	}
	walsender, err := pgconn.ConnectConfig(pgtest.Context(t), wcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { walsender.Close(context.Background()) })

	r := run(t, false, "kick", "--db", db)
	r.wantCode(t, 2) // selectors, no terminal, no --yes
	if !a.Alive() || !b.Alive() {
		t.Fatal("kick acted without --yes")
	}

	// pgreap connected to that database itself: its own session is left.
	r = run(t, false, "-d", "dbname="+db, "kick", "--db", db, "--yes", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %s", len(rows), r.out)
	}
	outcomes := map[any]any{}
	for _, row := range rows {
		if row["datname"] != db {
			t.Fatalf("row %v", row)
		}
		outcomes[row["pid"]] = row["outcome"]
	}
	if outcomes[float64(a.PID)] != "terminated" || outcomes[float64(b.PID)] != "terminated" ||
		outcomes[float64(walsender.PID())] != "protected" {
		t.Fatalf("outcomes by pid %v (a %d, b %d, walsender %d)", outcomes, a.PID, b.PID, walsender.PID())
	}
	if err := walsender.Exec(pgtest.Context(t), "IDENTIFY_SYSTEM").Close(); err != nil {
		t.Fatalf("the walsender was ended: %v", err)
	}
	if a.Alive() || b.Alive() {
		t.Fatal("reported terminated, still there")
	}
	if !other.Alive() {
		t.Fatal("a session of another database was ended")
	}
	other.Exec("SELECT 1")
}

func TestKickBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"kick"}, "kick needs the databases: --db NAME (repeatable, globs with *) or --all-databases"},
		{[]string{"kick", "--app", "x"}, "kick needs the databases"},
		{[]string{"kick", "--db", "x", "--all-databases"}, "--db and --all-databases: give one of them"},
		{[]string{"kick", "4242"}, `unknown command "4242" for "pgreap kick"`},
	}
	for _, tt := range tests {
		r := run(t, false, tt.args...)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.args, r.code, r.out, r.errOut, tt.err)
		}
	}
}
