package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/cluster"
)

// PgBouncerOptions tune a PgBouncer (internal/cluster).
type PgBouncerOptions = cluster.PgBouncerOptions

var bouncers struct {
	sync.Mutex
	byMode map[string]*cluster.PgBouncer
	order  []*cluster.PgBouncer
}

// PgBouncer is the package's PgBouncer in pool mode mode ("transaction" or
// "session") in front of the shared cluster: started by the first test
// that asks, stopped by Main when the tests end. Without a pgbouncer
// binary the test is skipped, or fails when CI=true (CI must install it).
func PgBouncer(t testing.TB, mode string) *cluster.PgBouncer {
	t.Helper()
	c := Shared(t)
	bin := needPgBouncer(t)
	bouncers.Lock()
	defer bouncers.Unlock()
	if b := bouncers.byMode[mode]; b != nil {
		return b
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := cluster.StartPgBouncer(ctx, c, PgBouncerOptions{Binary: bin, PoolMode: mode, Prefix: "pgreap-test-pgbouncer-"})
	if err != nil {
		t.Fatalf("pgtest: start pgbouncer (%s): %v", mode, err)
	}
	if bouncers.byMode == nil {
		bouncers.byMode = map[string]*cluster.PgBouncer{}
	}
	bouncers.byMode[mode] = b
	bouncers.order = append(bouncers.order, b)
	return b
}

// OwnPgBouncer starts a PgBouncer of the test's own in front of c (for
// other settings, or what would disturb the package's: PAUSE, KILL),
// stopped when the test ends. Skipped or failed as PgBouncer is without
// the binary.
func OwnPgBouncer(t testing.TB, c *Cluster, opt PgBouncerOptions) *cluster.PgBouncer {
	t.Helper()
	if opt.Binary == "" {
		opt.Binary = needPgBouncer(t)
	}
	if opt.Prefix == "" {
		opt.Prefix = "pgreap-test-pgbouncer-"
	}
	b, err := cluster.StartPgBouncer(Context(t), c, opt)
	if err != nil {
		t.Fatalf("pgtest: start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("pgtest: stop pgbouncer: %v", err)
		}
	})
	return b
}

func needPgBouncer(t testing.TB) string {
	t.Helper()
	bin, err := cluster.FindPgBouncer()
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("pgtest: %v (CI must install it: .ci/run does)", err)
	}
	t.Skipf("pgtest: %v; skipped (CI=true fails instead)", err)
	return ""
}

// stopPgBouncers stops the package's PgBouncers at the end of Run, with
// the tail of each log when the tests failed.
func stopPgBouncers(failed bool) {
	bouncers.Lock()
	defer bouncers.Unlock()
	for _, b := range bouncers.order {
		if failed {
			printTail(fmt.Sprintf("pgbouncer log tail (%s, %s)", b.Mode, b.Version), b.LogFile())
		}
		if err := b.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop pgbouncer: %v\n", err)
		}
	}
	bouncers.byMode, bouncers.order = nil, nil
}

// Show runs SHOW what (SERVERS, CLIENTS, POOLS, ...) on b's admin console
// as the admin user and returns its rows, column name to text value.
func Show(t testing.TB, b *cluster.PgBouncer, what string) []map[string]string {
	t.Helper()
	rows, err := show(Context(t), b.AdminDSN(cluster.AdminUser), what)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return rows
}

func show(ctx context.Context, dsn, what string) ([]map[string]string, error) {
	cn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer admin console: %w", err)
	}
	defer cn.Close(context.Background())
	// The console speaks only the simple query protocol.
	results, err := cn.Exec(ctx, "SHOW "+what).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("SHOW %s: %w", what, err)
	}
	if len(results) != 1 {
		return nil, errors.New("SHOW " + what + ": not one result")
	}
	var out []map[string]string
	for _, r := range results[0].Rows {
		row := map[string]string{}
		for i, f := range results[0].FieldDescriptions {
			row[f.Name] = string(r[i])
		}
		out = append(out, row)
	}
	return out, nil
}

// OneServerConnection is a PgBouncer of the test's own in transaction mode
// with a pool of one server connection, in front of a new database: its
// clients take turns on one backend, the case where a backend's own
// facts are another client's. Connect opens a client of it, as the
// superuser, with application_name app ("": none).
func OneServerConnection(t testing.TB) (b *cluster.PgBouncer, db string, connect func(app string) *pgx.Conn) {
	t.Helper()
	b = OwnPgBouncer(t, Shared(t), PgBouncerOptions{PoolMode: "transaction", Settings: map[string]string{"default_pool_size": "1"}})
	db = NewDB(t)
	dsn := b.DSN(db, cluster.Superuser) + " default_query_exec_mode=exec"
	return b, db, func(app string) *pgx.Conn {
		t.Helper()
		if app != "" {
			return Connect(t, dsn+" application_name="+cluster.Quote(app))
		}
		return Connect(t, dsn)
	}
}

// BackendPID is the pid of the backend that serves cn now.
func BackendPID(t testing.TB, cn *pgx.Conn) int32 {
	t.Helper()
	var pid int32
	if err := cn.QueryRow(Context(t), "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}
