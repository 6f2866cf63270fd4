package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// docs/privileges.md, end to end: a role with pg_signal_backend and
// pg_read_all_stats, not a superuser, runs ls, cancel, terminate, unblock,
// kick and watch on an application role's sessions.
func TestLeastPrivilegeRole(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reaper := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend", "pg_read_all_stats")
	appRole := pgtest.NewRole(t, "NOSUPERUSER")
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := admin.Exec(pgtest.Context(t), "CREATE TABLE t (id int); GRANT ALL ON t TO "+pgx.Identifier{appRole}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	admin.Close(pgtest.Context(t)) // a superuser's session: kick would report it denied
	tag := pgtest.Tag(t)
	victim := func(suffix string) *pgtest.Victim {
		return pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: appRole, App: tag + suffix})
	}
	dsn := pgtest.Shared(t).DSN(db, reaper)
	runAs := func(want int, args ...string) result {
		t.Helper()
		r := run(t, false, append(args, "-d", dsn, "-o", "json")...)
		r.wantCode(t, want)
		return r
	}

	secret := victim("-ls")
	secret.Exec("SELECT 'the application''s query'")
	if r := runAs(0, "ls", "--app", tag+"-ls"); !strings.Contains(r.out, `"query":"SELECT 'the application''s query'"`) {
		t.Fatalf("ls does not show the query text (pg_read_all_stats): %s", r.out)
	}

	running := victim("-run")
	running.Start("SELECT pg_catalog.pg_sleep(60)")
	running.WaitState("active", "Timeout")
	runAs(0, "cancel", "--app", tag+"-run", "--yes")
	if code := pgtest.SQLState(running.Wait()); code != "57014" {
		t.Fatalf("cancel: SQLSTATE %q", code)
	}

	idle := victim("-idle")
	runAs(0, "terminate", "--app", tag+"-idle", "--yes")
	if idle.Alive() {
		t.Fatal("terminate: still there")
	}

	holder, waiter := victim("-holder"), victim("-waiter")
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	waiter.Start("SELECT count(*) FROM t")
	waiter.WaitState("active", "Lock")
	runAs(0, "unblock", "--db", db, "--longer-than", "0s", "--yes")
	if holder.Alive() || waiter.Wait() != nil {
		t.Fatal("unblock: the holder is still there, or the waiter failed")
	}

	runAs(0, "kick", "--db", db, "--yes")
	if secret.Alive() || waiter.Alive() || running.Alive() {
		t.Fatal("kick: a session of the database is left")
	}

	// watch, with the same role.
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(fmt.Sprintf(`targets: [{name: main, dsn: %q}]
interval: 200ms
metrics_addr: "off"
rules:
  - name: r
    match: {app: [%q], state: [active], longer_than: 100ms}
    action: cancel
`, dsn, tag+"-watch")), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPgreap(t, nil, "watch", "-c", policy, "--log-format", "json")
	watched := victim("-watch")
	watched.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(watched.Wait()); code != "57014" {
		t.Fatalf("watch: SQLSTATE %q\n%s", code, p.errOut.String())
	}
	pgtest.Eventually(t, "the audit line", func() (bool, error) {
		return strings.Contains(p.out.String(), `"outcome":"cancelled"`), nil
	})
}

// Without the grants: other roles' sessions are denied, and the detail
// names what to grant; nothing else is done.
func TestWithoutGrantsDeniedNamesTheGrant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		grants []string
		detail string
	}{
		{"no pg_read_all_stats", nil, "GRANT pg_read_all_stats"},
		{"no pg_signal_backend", []string{"pg_read_all_stats"}, "GRANT pg_signal_backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			role := pgtest.NewRole(t, "NOSUPERUSER", tt.grants...)
			appRole := pgtest.NewRole(t, "NOSUPERUSER")
			v := pgtest.NewVictim(t, pgtest.VictimOptions{User: appRole})
			r := run(t, false, "terminate", "--user", appRole, "--yes", "-o", "json",
				"-d", pgtest.Shared(t).DSN("postgres", role))
			r.wantCode(t, 3)
			rows := jsonRows(t, r.out)
			if len(rows) != 1 || rows[0]["outcome"] != "denied" || !strings.Contains(fmt.Sprint(rows[0]["detail"]), tt.detail) {
				t.Fatalf("%s", r.out)
			}
			if !v.Alive() {
				t.Fatal("the session was ended")
			}
		})
	}
}
