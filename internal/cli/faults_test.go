package cli_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The server crashes (pg_ctl stop -m immediate), and another time
// restarts (-m fast), while drain waits for a session it may not end: drain
// ends with one line that says the database stays blocked and how to
// reopen it; after the server is back, undrain restores exactly the
// settings the database had.
func TestDrainWhenTheServerCrashesOrRestarts(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c := pgtest.Own(t, pgtest.Options{})
	admin := func() *pgx.Conn {
		cn, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close(context.Background()) })
		return cn
	}
	a := admin()
	for _, sql := range []string{
		"CREATE DATABASE shop",
		"CREATE ROLE owner LOGIN NOSUPERUSER",
		"GRANT pg_signal_backend, pg_read_all_stats TO owner",
		"ALTER DATABASE shop OWNER TO owner",
		"ALTER DATABASE shop CONNECTION LIMIT 9",
	} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	settings := func() (allow bool, limit int32) {
		if err := admin().QueryRow(ctx, "SELECT datallowconn, datconnlimit FROM pg_catalog.pg_database WHERE datname = 'shop'").
			Scan(&allow, &limit); err != nil {
			t.Fatal(err)
		}
		return allow, limit
	}
	env := []string{"PGREAP_STATE_DIR=" + t.TempDir()}
	for _, fault := range []struct {
		name string
		do   func(context.Context) error
	}{{"crash", c.Crash}, {"restart", c.Restart}} {
		// A superuser's session the owner may not end: drain waits.
		super, err := pgx.Connect(ctx, c.DSN("shop", pgtest.Superuser))
		if err != nil {
			t.Fatal(err)
		}
		p := startPgreap(t, env, "-d", c.DSN("postgres", "owner"), "drain", "shop", "--timeout", "60s")
		p.waitLog(t, "new connections refused")
		if allow, _ := settings(); allow {
			t.Fatal("drain said blocked; shop allows connections")
		}
		if err := fault.do(ctx); err != nil {
			t.Fatal(err)
		}
		p.wait(t)
		// Exit 3, as for any drain stopped before it was done; after the
		// line that said it blocked the database, one line that it stays
		// blocked, and why.
		lines := strings.Split(strings.TrimSuffix(p.errOut.String(), "\n"), "\n")
		last := lines[len(lines)-1]
		if p.code() != 3 || len(lines) != 2 || !strings.Contains(last, "shop stays blocked: 'pgreap undrain shop' reopens it") ||
			!strings.Contains(last, "the connection to the server was lost") {
			t.Fatalf("%s: drain exit %d, stderr %q, stdout %q", fault.name, p.code(), p.errOut.String(), p.out.String())
		}
		super.Close(context.Background())
		if fault.name == "crash" {
			if err := c.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if allow, _ := settings(); allow {
			t.Fatalf("%s: shop reopened by itself", fault.name)
		}
		u := startPgreap(t, env, "-d", c.DSN("postgres", "owner"), "undrain", "shop")
		u.wait(t)
		if u.code() != 0 {
			t.Fatalf("%s: undrain exit %d: %s", fault.name, u.code(), u.errOut.String())
		}
		if allow, limit := settings(); !allow || limit != 9 {
			t.Fatalf("%s: after undrain ALLOW_CONNECTIONS %v, CONNECTION LIMIT %d; want true, 9", fault.name, allow, limit)
		}
		t.Logf("%s: drain said %s", fault.name, last)
	}
}

// The server ends pgreap's session while its statement runs (a fast
// shutdown, or pg_terminate_backend): pgreap reads FATAL 57P01, not a
// closed socket, and says the same as for one: one line, the hint that
// the connection was lost, exit 2. The proxy holds ls's statement (and
// the server's answers) until the server has ended the session, so that
// the end lands in the statement.
func TestSessionEndedByTheServer(t *testing.T) {
	t.Parallel()
	p, dsn := through(t)
	app := pgtest.Tag(t)
	held := p.On("pg_stat_activity", pgtest.Stall, pgtest.Before)
	ls := startPgreap(t, nil, "-d", dsn+" application_name="+app, "ls")
	select {
	case <-held:
	case <-ls.done:
		t.Fatalf("ls ended before its statement: %s", ls.errOut.String())
	case <-pgtest.Context(t).Done():
		t.Fatal("ls never sent its statement")
	}
	var pid int32
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = $1", app).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, "SELECT pg_catalog.pg_terminate_backend($1)", pid)
	pgtest.Eventually(t, "the backend gone", func() (bool, error) {
		var n int
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&n)
		return n == 0, err
	})
	p.Resume()
	ls.wait(t)
	errOut := ls.errOut.String()
	if ls.code() != 2 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "SQLSTATE 57P01") ||
		!strings.Contains(errOut, "the connection to the server was lost") {
		t.Fatalf("exit %d, stderr %q", ls.code(), errOut)
	}
	t.Logf("stderr %s", errOut)
}

// The server crashes while kick waits for the backends it terminated to
// go (held there by a network stall, so that the crash lands in the wait;
// the network comes back after the crash): kick ends with exit 3, every
// session survived "signalled, not verified", one line that says why; none
// reported terminated on faith.
func TestKickWhenTheServerCrashes(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c := pgtest.Own(t, pgtest.Options{})
	for i := 0; i < 3; i++ {
		cn, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser)+" application_name=pool")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close(context.Background()) })
	}
	p := pgtest.ProxyTo(t, c)
	waiting := p.On("pgreap wait:", pgtest.Stall, pgtest.Before)
	k := startPgreap(t, nil, "kick", "--db", "postgres", "--app", "pool", "--yes", "-o", "json", "-d", p.DSN("postgres", pgtest.Superuser))
	select {
	case <-waiting:
	case <-k.done:
		t.Fatalf("kick ended before its wait: %s", k.errOut.String())
	}
	if err := c.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	p.Resume()
	k.wait(t)
	rows := jsonRows(t, k.out.String())
	if k.code() != 3 || len(rows) != 3 {
		t.Fatalf("exit %d, stdout %s, stderr %s", k.code(), k.out.String(), k.errOut.String())
	}
	for _, r := range rows {
		if r["outcome"] != "survived" || !strings.HasPrefix(r["detail"].(string), "signalled, not verified: wait: ") {
			t.Fatalf("row %v", r)
		}
	}
	errOut := k.errOut.String()
	if strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "signals were sent and not all verified") ||
		!strings.Contains(errOut, "shutdown") && !strings.Contains(errOut, "the connection to the server was lost") {
		t.Fatalf("stderr %q", errOut)
	}
	t.Logf("stderr %s", errOut)
}
