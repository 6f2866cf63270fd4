package cli_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// max_connections used up by clients: pgreap as a superuser still gets in
// (superuser_reserved_connections), and on 16+ as a role granted
// pg_use_reserved_connections (reserved_connections); any other role gets
// one line that names the way in, exit 2.
func TestConnectionSlotsUsedUp(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c := pgtest.Own(t, pgtest.Options{MaxConnections: 10, Settings: map[string]string{"superuser_reserved_connections": "2"}})
	admin, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if c.Major >= 16 {
		exec("ALTER SYSTEM SET reserved_connections = 2")
		admin.Close(ctx)
		if err := c.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if admin, err = pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser)); err != nil {
			t.Fatal(err)
		}
	}
	exec("CREATE ROLE app LOGIN; CREATE ROLE reaper LOGIN; GRANT pg_signal_backend, pg_read_all_stats TO reaper")
	if c.Major >= 16 {
		exec("CREATE ROLE reserved LOGIN; GRANT pg_signal_backend, pg_read_all_stats, pg_use_reserved_connections TO reserved")
	}
	admin.Close(ctx) // its slot goes to the clients

	// The clients take every slot they may.
	var clients []*pgx.Conn
	t.Cleanup(func() {
		for _, cn := range clients {
			cn.Close(context.Background())
		}
	})
	for {
		cn, err := pgx.Connect(ctx, c.DSN("postgres", "app")+" application_name=client")
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "53300" {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cn)
		if len(clients) > 20 {
			t.Fatal("max_connections is not enforced")
		}
	}

	ls := func(user string) result {
		return run(t, false, "ls", "--app", "client", "-o", "json", "-d", c.DSN("postgres", user))
	}
	r := ls(pgtest.Superuser)
	r.wantCode(t, 0)
	if n := len(jsonRows(t, r.out)); n != len(clients) {
		t.Fatalf("a superuser sees %d of %d clients", n, len(clients))
	}
	if c.Major >= 16 {
		ls("reserved").wantCode(t, 0)
	}
	r = ls("reaper")
	r.wantCode(t, 2)
	if strings.Count(r.errOut, "\n") != 1 || !strings.Contains(r.errOut, "pg_use_reserved_connections") || !strings.Contains(r.errOut, "superuser_reserved_connections") {
		t.Fatalf("stderr %q", r.errOut)
	}
	t.Logf("PostgreSQL %d, %d clients: %s", c.Major, len(clients), strings.TrimSpace(r.errOut))
}
