package pooler_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/pooler"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

func admin(t *testing.T, b *cluster.PgBouncer) *pooler.Admin {
	t.Helper()
	p, err := pooler.Parse(b.AdminDSN(cluster.AdminUser))
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Connect(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

// through is a client of the pooler, in a transaction so that it keeps its
// server connection: its backend's pid and its own port.
func through(t *testing.T, b *cluster.PgBouncer, db, role, app string) (c *pgx.Conn, pid int32, port int) {
	t.Helper()
	ctx := pgtest.Context(t)
	c = pgtest.Connect(t, b.DSN(db, role)+" default_query_exec_mode=exec application_name="+cluster.Quote(app))
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return c, pid, c.PgConn().Conn().LocalAddr().(*net.TCPAddr).Port
}

type backend struct {
	clientPort int
	start      time.Time
}

func backendOf(t *testing.T, pid int32) backend {
	t.Helper()
	var be backend
	var port *int32
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT client_port, backend_start FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&port, &be.start); err != nil {
		t.Fatal(err)
	}
	if port != nil {
		be.clientPort = int(*port)
	}
	return be
}

// A backend that serves a pooled client is found by its pid and its
// client_port (server connections over TCP) or by when it started (over a
// socket), and the link names the client: its address, port, application
// and user, and the pool's mode. The same pid with another start is not it.
func TestLookFindsTheClient(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "socket", true: "tcp"}[tcp], func(t *testing.T) {
			var b *cluster.PgBouncer
			if tcp {
				b = pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{ServerTCP: true})
			} else {
				b = pgtest.PgBouncer(t, "transaction")
			}
			db, role := pgtest.NewDB(t), pgtest.NewRole(t, "NOSUPERUSER")
			_, pid, port := through(t, b, db, role, pgtest.Tag(t))
			a := admin(t, b)
			look, err := pooler.Take(pgtest.Context(t), []*pooler.Admin{a})
			if err != nil {
				t.Fatal(err)
			}
			be := backendOf(t, pid)
			k := look.Find(pid, be.clientPort, be.start, db)
			if k == nil {
				t.Fatalf("no link for backend %d (client_port %d, start %v)", pid, be.clientPort, be.start)
			}
			want := pooler.Link{Pooler: a.Pooler.Name, Served: true, ClientAddr: "127.0.0.1", ClientPort: port,
				ApplicationName: pgtest.Tag(t), User: role, PoolMode: "transaction"}
			got := *k
			got.PID, got.Datname, got.Alias, got.LocalPort, got.ConnectTime, got.State = 0, "", "", 0, time.Time{}, ""
			if got != want {
				t.Fatalf("link of backend %d:\n got %+v\nwant %+v", pid, got, want)
			}
			if tcp && k.LocalPort != be.clientPort {
				t.Fatalf("local_port %d, client_port %d", k.LocalPort, be.clientPort)
			}
			if look.Find(pid, be.clientPort, be.start, "postgres") != nil {
				t.Fatal("a link for another database")
			}
			if !tcp && look.Find(pid, -1, be.start.Add(-time.Hour), db) != nil {
				t.Fatal("a link for a backend with the same pid that started an hour earlier")
			}
		})
	}
}

// A server connection no client uses is in the pool, idle: no client.
func TestLookIdleServer(t *testing.T) {
	b := pgtest.PgBouncer(t, "transaction")
	db, role := pgtest.NewDB(t), pgtest.NewRole(t, "NOSUPERUSER")
	c, pid, _ := through(t, b, db, role, pgtest.Tag(t))
	if _, err := c.Exec(pgtest.Context(t), "COMMIT"); err != nil {
		t.Fatal(err)
	}
	look, err := pooler.Take(pgtest.Context(t), []*pooler.Admin{admin(t, b)})
	if err != nil {
		t.Fatal(err)
	}
	be := backendOf(t, pid)
	k := look.Find(pid, be.clientPort, be.start, db)
	if k == nil || k.Served || k.ClientAddr != "" || k.ApplicationName != "" || k.User != role {
		t.Fatalf("idle server connection: %+v", k)
	}
}

// PAUSE waits for the transactions in flight; clients that come meanwhile
// wait in the pooler and are counted; RESUME lets them on; a second RESUME
// is ErrNotPaused.
func TestPauseResume(t *testing.T) {
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{})
	ctx := pgtest.Context(t)
	db, role := pgtest.NewDB(t), pgtest.NewRole(t, "NOSUPERUSER")
	holder, _, _ := through(t, b, db, role, pgtest.Tag(t))
	// Connected before the pause: a login needs a server connection too
	// (auth_query), and would wait for ever.
	late := pgtest.Connect(t, b.DSN(db, role)+" default_query_exec_mode=exec")
	a, pauser := admin(t, b), admin(t, b)
	paused, pauseDone := make(chan error, 1), make(chan struct{})
	go func() { paused <- pauser.Pause(ctx, db); close(pauseDone) }()
	t.Cleanup(func() { // before the admin connections close
		holder.Close(context.Background())
		_ = a.Resume(context.Background(), db)
		select {
		case <-pauseDone:
		case <-time.After(10 * time.Second):
			t.Error("PAUSE still waits after the holder left and RESUME")
		}
	})
	pgtest.Eventually(t, "the database is marked paused", func() (bool, error) {
		dbs, err := a.Databases(ctx)
		for _, d := range dbs {
			if d.Name == db {
				return d.Paused, err
			}
		}
		return false, err
	})
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned while a transaction was open: %v", err)
	default:
	}
	// A client that asks now waits.
	ran := make(chan error, 1)
	go func() { _, err := late.Exec(ctx, "SELECT 1"); ran <- err }()
	pgtest.Eventually(t, "the late client waits in the pooler", func() (bool, error) {
		look, err := pooler.Take(ctx, []*pooler.Admin{a})
		return err == nil && look.Waiting(db) == 1 && look.Waiting("") >= 1, err
	})
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-paused; err != nil {
		t.Fatalf("PAUSE: %v", err)
	}
	select {
	case err := <-ran:
		t.Fatalf("the late client ran while paused: %v", err)
	default:
	}
	if err := a.Resume(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("the late client after RESUME: %v", err)
	}
	if err := a.Resume(ctx, db); !errors.Is(err, pooler.ErrNotPaused) {
		t.Fatalf("RESUME again: %v, want ErrNotPaused", err)
	}
}

// An error names the pooler, is one line, and never holds the password.
func TestErrorNamesThePooler(t *testing.T) {
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{AuthType: "md5", Users: map[string]string{"alice": "right"}})
	p, err := pooler.Parse(b.AdminDSN(cluster.AdminUser) + " password=wrong-sekrit")
	if err == nil {
		_, err = p.Connect(pgtest.Context(t))
	}
	if err == nil {
		t.Fatal("connected with a wrong password")
	}
	msg := err.Error()
	if strings.Contains(msg, "sekrit") || strings.Contains(msg, "\n") || !strings.Contains(msg, "pgbouncer 127.0.0.1:") {
		t.Fatalf("error: %q", msg)
	}
	var pe *pooler.Error
	if !errors.As(err, &pe) {
		t.Fatalf("not a *pooler.Error: %T", err)
	}
	if _, err := pooler.Parse("host=127.0.0.1 port=notaport"); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("bad DSN: %v", err)
	}
}

// The password of a console comes from ~/.pgpass (PGPASSFILE) by its
// database, pgbouncer, as psql finds it; PGDATABASE is the server's.
func TestPasswordFromPassfile(t *testing.T) {
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{AuthType: "md5", Users: map[string]string{"alice": "x"}})
	pass := filepath.Join(t.TempDir(), "pgpass")
	line := fmt.Sprintf("127.0.0.1:%d:pgbouncer:%s:%s\n", b.Port, cluster.AdminUser, b.Password(cluster.AdminUser))
	if err := os.WriteFile(pass, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", pass)
	t.Setenv("PGDATABASE", "postgres")
	for _, dsn := range []string{
		fmt.Sprintf("host=127.0.0.1 port=%d user=%s sslmode=disable", b.Port, cluster.AdminUser),
		fmt.Sprintf("postgres://%s@127.0.0.1:%d?sslmode=disable", cluster.AdminUser, b.Port),
	} {
		p, err := pooler.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.Connect(pgtest.Context(t))
		if err != nil {
			t.Fatalf("%s: %v", dsn, err)
		}
		a.Close()
	}
}

// CheckAdmin tells an admin_users role from a stats_users one before
// anything is done, and resumes nothing.
func TestCheckAdmin(t *testing.T) {
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{})
	ctx := pgtest.Context(t)
	a := admin(t, b)
	if err := a.Pause(ctx, "somedb"); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckAdmin(ctx); err != nil {
		t.Fatalf("admin: %v", err)
	}
	p, err := pooler.Parse(b.AdminDSN(b.StatsUser))
	if err != nil {
		t.Fatal(err)
	}
	stats, err := p.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	if err := stats.CheckAdmin(ctx); !errors.Is(err, pooler.ErrNotAdmin) {
		t.Fatalf("stats user: %v, want ErrNotAdmin", err)
	}
	dbs, err := a.Databases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dbs {
		if d.Name == "somedb" && !d.Paused {
			t.Fatal("CheckAdmin resumed a database")
		}
	}
	if err := a.Resume(ctx, "somedb"); err != nil {
		t.Fatal(err)
	}
}

// A console that stops answering (the pooler stopped, here by SIGSTOP)
// fails a command after the connect timeout instead of holding pgreap.
func TestCommandDoesNotWaitForever(t *testing.T) {
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{})
	p, err := pooler.Parse(b.AdminDSN(cluster.AdminUser) + " connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Connect(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := syscall.Kill(b.Pid(), syscall.SIGSTOP); err != nil { // our own child, by its pid
		t.Fatal(err)
	}
	defer syscall.Kill(b.Pid(), syscall.SIGCONT)
	done := make(chan error, 1)
	go func() { _, err := a.Servers(pgtest.Context(t)); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "pgbouncer 127.0.0.1:") {
			t.Fatalf("SHOW SERVERS of a stopped pooler: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("SHOW SERVERS of a stopped pooler still waits after 30s")
	}
}
