package pgtest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/cluster"
)

// A client gets through the package's PgBouncer in each pool mode, as its
// own role to its own database, and the pooler's pool has that mode.
func TestPgBouncerModes(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			b := PgBouncer(t, mode)
			if b.Mode != mode || PgBouncer(t, mode) != b {
				t.Fatalf("PgBouncer(%q) must be one pooler in that mode: %q", mode, b.Mode)
			}
			db, role := NewDB(t), NewRole(t, "NOSUPERUSER")
			for _, dsn := range []string{b.DSN(db, role), b.SocketDSN(db, role)} {
				cn := Connect(t, dsn+" default_query_exec_mode=exec application_name="+cluster.Quote(Tag(t)))
				var user, gotDB string
				if err := cn.QueryRow(Context(t), "SELECT current_user, pg_catalog.current_database()").Scan(&user, &gotDB); err != nil {
					t.Fatalf("query through pgbouncer (%s): %v", mode, err)
				}
				if user != role || gotDB != db {
					t.Fatalf("through pgbouncer: %s@%s, want %s@%s", user, gotDB, role, db)
				}
			}
			pool := findRow(t, Show(t, b, "POOLS"), map[string]string{"database": db, "user": role})
			if pool["pool_mode"] != mode {
				t.Fatalf("SHOW POOLS: pool_mode %q, want %q", pool["pool_mode"], mode)
			}
		})
	}
}

// SHOW SERVERS names the server backend a client uses now: its remote_pid
// is the backend's pid, its link the client's ptr, and over TCP its
// local_port is the backend's client_port. This is the mapping pgreap
// reads behind a pooler.
func TestPgBouncerServerIdentity(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		t.Run("tcp="+strconv.FormatBool(tcp), func(t *testing.T) {
			var b *cluster.PgBouncer
			if tcp {
				b = OwnPgBouncer(t, Shared(t), PgBouncerOptions{ServerTCP: true})
			} else {
				b = PgBouncer(t, "transaction")
			}
			ctx := Context(t)
			db, role := NewDB(t), NewRole(t, "NOSUPERUSER")
			cn := Connect(t, b.DSN(db, role)+" default_query_exec_mode=exec application_name="+cluster.Quote(Tag(t)))
			// In a transaction the server connection stays the client's.
			if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			var pid int32
			if err := cn.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			server := findRow(t, Show(t, b, "SERVERS"), map[string]string{"remote_pid": strconv.Itoa(int(pid))})
			if server["database"] != db || server["user"] != role || server["state"] != "active" {
				t.Fatalf("SHOW SERVERS row of pid %d: %v", pid, server)
			}
			clientPort := strconv.Itoa(cn.PgConn().Conn().LocalAddr().(*net.TCPAddr).Port)
			client := findRow(t, Show(t, b, "CLIENTS"), map[string]string{"ptr": server["link"]})
			if client["port"] != clientPort || client["application_name"] != Tag(t) {
				t.Fatalf("SHOW CLIENTS row linked to pid %d: %v, want port %s", pid, client, clientPort)
			}
			var usename, datname, app string
			var backendPort *int32
			err := Admin(t).QueryRow(ctx, `SELECT usename, datname, application_name, client_port
			   FROM pg_catalog.pg_stat_activity WHERE pid = $1`, pid).Scan(&usename, &datname, &app, &backendPort)
			if err != nil {
				t.Fatalf("pid %d in pg_stat_activity: %v", pid, err)
			}
			if usename != role || datname != db || app != Tag(t) {
				t.Fatalf("pid %d in pg_stat_activity: %s@%s app %q", pid, usename, datname, app)
			}
			if tcp {
				if backendPort == nil || strconv.Itoa(int(*backendPort)) != server["local_port"] || server["addr"] != "127.0.0.1" {
					t.Fatalf("server connection over TCP: SHOW SERVERS %v, client_port %v", server, backendPort)
				}
			} else if server["addr"] != "unix" || backendPort == nil || *backendPort != -1 {
				t.Fatalf("server connection over the socket: SHOW SERVERS %v, client_port %v", server, backendPort)
			}
		})
	}
}

// md5: the users of the auth file log in with their passwords, nobody
// else; the admin user may PAUSE, the stats user only SHOW.
func TestPgBouncerMD5(t *testing.T) {
	role := NewRole(t, "NOSUPERUSER")
	b := OwnPgBouncer(t, Shared(t), PgBouncerOptions{AuthType: "md5", Users: map[string]string{role: "s3cret"}})
	ctx := Context(t)
	cn := Connect(t, b.DSN("postgres", role)+" default_query_exec_mode=exec")
	if _, err := cn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Replace(b.DSN("postgres", role), "s3cret", "wrong", 1)
	if c, err := pgx.Connect(ctx, wrong); err == nil {
		c.Close(ctx)
		t.Fatal("a wrong password got in")
	}
	other := NewRole(t, "NOSUPERUSER")
	if c, err := pgx.Connect(ctx, b.DSN("postgres", other)+" password=x"); err == nil {
		c.Close(ctx)
		t.Fatal("a user not in the auth file got in")
	}
	if b.Password(cluster.AdminUser) == "" || b.Password(b.StatsUser) == "" {
		t.Fatal("md5: the admin and stats users need passwords")
	}
	if _, err := show(ctx, b.AdminDSN(b.StatsUser), "SERVERS"); err != nil {
		t.Fatalf("the stats user must SHOW: %v", err)
	}
	if _, err := show(ctx, b.AdminDSN(b.StatsUser), "VERSION"); err != nil {
		t.Fatalf("the stats user must SHOW: %v", err)
	}
	for user, may := range map[string]bool{b.StatsUser: false, cluster.AdminUser: true} {
		admin, err := pgconn.Connect(ctx, b.AdminDSN(user))
		if err != nil {
			t.Fatalf("admin console as %s: %v", user, err)
		}
		_, err = admin.Exec(ctx, "PAUSE").ReadAll()
		if may != (err == nil) {
			t.Fatalf("PAUSE as %s: %v", user, err)
		}
		if may {
			if _, err := admin.Exec(ctx, "RESUME").ReadAll(); err != nil {
				t.Fatal(err)
			}
		}
		admin.Close(ctx)
	}
}

// Stop ends the pgbouncer process (with a client connected) and removes
// its directory: nothing is left.
func TestPgBouncerStop(t *testing.T) {
	bin := needPgBouncer(t)
	b, err := cluster.StartPgBouncer(Context(t), Shared(t), PgBouncerOptions{Binary: bin, PoolMode: "session"})
	if err != nil {
		t.Fatal(err)
	}
	cn := Connect(t, b.DSN("postgres", Superuser)+" default_query_exec_mode=exec")
	if _, err := cn.Exec(Context(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	pid := b.Pid()
	if fi, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil || (os.Geteuid() == 0 && fi.Sys().(*syscall.Stat_t).Uid == 0) {
		t.Fatalf("pgbouncer %d must run, and not as root: %v", pid, err)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pgbouncer %d is still there after Stop: %v", pid, err)
	}
	if _, err := os.Stat(b.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is still there after Stop: %v", b.Dir, err)
	}
	if left := processesIn(b.Dir); len(left) > 0 {
		t.Fatalf("processes of %s left after Stop: %v", b.Dir, left)
	}
	if err := b.Stop(); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
}

// findRow is the one row of rows that has the given values.
func findRow(t testing.TB, rows []map[string]string, want map[string]string) map[string]string {
	t.Helper()
	var found []map[string]string
next:
	for _, r := range rows {
		for k, v := range want {
			if r[k] != v {
				continue next
			}
		}
		found = append(found, r)
	}
	if len(found) != 1 {
		t.Fatalf("want one row with %v, found %d in %v", want, len(found), rows)
	}
	return found[0]
}

// processesIn lists the processes whose command line names dir or that
// work in it (a postmaster's children have their own command line).
func processesIn(dir string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		if strings.Contains(string(b), dir) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			out = append(out, p+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}
