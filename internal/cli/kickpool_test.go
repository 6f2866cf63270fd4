package cli_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// pooledClients opens n idle clients of db through b, each having run a
// query, and returns them with their local ports (SHOW CLIENTS' port).
func pooledClients(t *testing.T, b *cluster.PgBouncer, db string, n int) ([]*pgx.Conn, []int) {
	t.Helper()
	var cns []*pgx.Conn
	var ports []int
	for i := 0; i < n; i++ {
		cn := pgtest.Connect(t, b.DSN(db, pgtest.Superuser)+" default_query_exec_mode=exec application_name="+cluster.Quote(pgtest.Tag(t)))
		if _, err := cn.Exec(pgtest.Context(t), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		cns = append(cns, cn)
		port, _ := strconv.Atoi(strings.TrimPrefix(cn.PgConn().Conn().LocalAddr().String(), "127.0.0.1:"))
		ports = append(ports, port)
	}
	return cns, ports
}

// newClient starts a client of db through b that runs one query; its
// answer comes on the channel.
func newClient(t *testing.T, b *cluster.PgBouncer, db string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(pgtest.Context(t))
	answer := make(chan error, 1)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		cn, err := pgx.Connect(ctx, b.DSN(db, pgtest.Superuser)+" default_query_exec_mode=exec")
		if err == nil {
			defer cn.Close(context.Background())
			var one int
			err = cn.QueryRow(ctx, "SELECT 1").Scan(&one)
		}
		answer <- err
	}()
	return answer
}

// kick --pgbouncer ends the pooled clients of the database too (KILL),
// names each, and lets new clients in again (RESUME).
func TestKickPgBouncerEndsPooledClients(t *testing.T) {
	t.Parallel()
	b := ownPgBouncer(t, "transaction")
	db := pgtest.NewDB(t)
	cns, ports := pooledClients(t, b, db, 2)
	direct := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})

	r := run(t, false, "kick", "--db", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--yes")
	r.wantCode(t, 0)
	for _, port := range ports {
		if !strings.Contains(r.errOut, "pooled client 127.0.0.1:"+strconv.Itoa(port)+" (user "+pgtest.Superuser+", app "+pgtest.Tag(t)+") of "+db+": ended") {
			t.Fatalf("kick does not name the pooled client on port %d as ended:\n%s", port, r.errOut)
		}
	}
	if !strings.Contains(r.out, strconv.Itoa(int(direct.PID))) {
		t.Fatalf("kick does not list the direct session %d:\n%s", direct.PID, r.out)
	}
	for _, row := range pgtest.Show(t, b, "CLIENTS") {
		if row["database"] == db {
			t.Fatalf("a client of %s is still connected to the pooler: %v", db, row)
		}
	}
	for i, cn := range cns {
		if _, err := cn.Exec(pgtest.Context(t), "SELECT 1"); err == nil {
			t.Fatalf("pooled client %d still runs queries after the kick", i)
		}
	}
	select {
	case err := <-newClient(t, b, db):
		if err != nil {
			t.Fatalf("a new client after the kick: %v", err)
		}
	case <-pgtest.Context(t).Done():
		t.Fatal("a new client is not answered after the kick: the pooler was left paused")
	}
}

// A database someone else paused stays paused after kick --pgbouncer: the
// kick ends its clients and says it left it paused.
func TestKickPgBouncerLeavesOthersPause(t *testing.T) {
	t.Parallel()
	b := ownPgBouncer(t, "transaction")
	db := pgtest.NewDB(t)
	resumeAtEnd(t, b, db)
	pooledClients(t, b, db, 1)
	if err := console(t, b, "PAUSE "+pgx.Identifier{db}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "kick", "--db", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--yes")
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "left paused") {
		t.Fatalf("kick does not say it left the database paused:\n%s", r.errOut)
	}
	answer := newClient(t, b, db) // it lists the database again
	pgtest.Eventually(t, "the pooler lists the database", func() (bool, error) { return poolerDB(t, b, db) != nil, nil })
	if !paused(t, b, db) {
		t.Fatalf("the kick resumed a pause that was not its own (a new client: %v)", <-answer)
	}
}

// kick --pgbouncer refuses selectors that KILL cannot honour: it ends
// every client of a database.
func TestKickPgBouncerRefusesNarrowing(t *testing.T) {
	t.Parallel()
	b := pgtest.PgBouncer(t, "transaction")
	r := run(t, false, "kick", "--db", "x", "--user", "bob", "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--yes")
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "no other selector") {
		t.Fatalf("stderr: %s", r.errOut)
	}
}

// kick --pgbouncer --dry-run says what each pooler would get and ends
// nothing.
func TestKickPgBouncerDryRun(t *testing.T) {
	t.Parallel()
	b := pgtest.PgBouncer(t, "transaction")
	db := pgtest.NewDB(t)
	cns, ports := pooledClients(t, b, db, 1)
	r := run(t, false, "kick", "--db", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--dry-run")
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "would send KILL "+db+" to pgbouncer") || !strings.Contains(r.errOut, "127.0.0.1:"+strconv.Itoa(ports[0])) {
		t.Fatalf("dry run:\n%s", r.errOut)
	}
	if _, err := cns[0].Exec(pgtest.Context(t), "SELECT 1"); err != nil {
		t.Fatalf("the pooled client after a dry run: %v", err)
	}
}

// A console role that may only SHOW cannot KILL: kick says so before it
// ends anything (one line, exit 2), where it used to end the server's
// sessions first and then report the KILL refused.
func TestKickPgBouncerStatsUserRefusedFirst(t *testing.T) {
	t.Parallel()
	b := ownPgBouncer(t, "transaction")
	db := pgtest.NewDB(t)
	cns, _ := pooledClients(t, b, db, 1)
	direct := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	r := run(t, false, "kick", "--db", db, "--pgbouncer", b.AdminDSN(b.StatsUser), "--yes")
	r.wantCode(t, 2)
	if strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 || !strings.Contains(r.errOut, "admin_users") || !strings.Contains(r.errOut, "nothing done") {
		t.Fatalf("kick with a stats user: %q", r.errOut)
	}
	if !direct.Alive() {
		t.Fatal("the direct session was ended")
	}
	if _, err := cns[0].Exec(pgtest.Context(t), "SELECT 1"); err != nil {
		t.Fatalf("the pooled client: %v", err)
	}
}

// A pooler named with --pgbouncer that serves a database of the same name
// from another server is refused, one line, exit 2, nothing done: its KILL
// would end that server's clients (and a drain's PAUSE hold them up).
func TestKickPgBouncerOfAnotherServerRefused(t *testing.T) {
	t.Parallel()
	other := pgtest.Own(t, pgtest.Options{BinDir: pgtest.Shared(t).BinDir})
	db := pgtest.NewDB(t)
	c, err := pgx.Connect(pgtest.Context(t), other.DSN("postgres", pgtest.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(pgtest.Context(t))
	if _, err := c.Exec(pgtest.Context(t), "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	b := pgtest.OwnPgBouncer(t, other, pgtest.PgBouncerOptions{})
	cns, _ := pooledClients(t, b, db, 1) // a client of the other server's db
	direct := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	for _, args := range [][]string{
		{"kick", "--db", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--yes"},
		{"drain", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser)},
	} {
		r := run(t, false, args...)
		r.wantCode(t, 2)
		if strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 || !strings.Contains(r.errOut, "another server") {
			t.Fatalf("%v: %q", args[0], r.errOut)
		}
		if !direct.Alive() {
			t.Fatalf("%v ended this server's session", args[0])
		}
		if _, err := cns[0].Exec(pgtest.Context(t), "SELECT 1"); err != nil {
			t.Fatalf("%v: the other server's pooled client: %v", args[0], err)
		}
	}
}
