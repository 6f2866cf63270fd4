package conn_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

// connect opens a connection as pgreap does, closed when the test ends.
func connect(t *testing.T, p conn.Params) *pgx.Conn {
	t.Helper()
	cfg, err := conn.Config(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := conn.Connect(pgtest.Context(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func settings(t *testing.T, p conn.Params) map[string]string {
	t.Helper()
	c := connect(t, p)
	got := map[string]string{}
	for _, name := range []string{"application_name", "statement_timeout", "lock_timeout", "search_path", "synchronous_commit", "jit"} {
		var v string
		if err := c.QueryRow(pgtest.Context(t), "SELECT pg_catalog.current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		got[name] = v
	}
	var user, db string
	var port int
	if err := c.QueryRow(pgtest.Context(t), "SELECT current_user, current_database(), pg_catalog.inet_server_port()").Scan(&user, &db, &port); err != nil {
		// over a unix socket the port is NULL
		if err := c.QueryRow(pgtest.Context(t), "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
			t.Fatal(err)
		}
	}
	got["user"], got["database"], got["port"] = user, db, strconv.Itoa(port)
	return got
}

func TestSessionSettings(t *testing.T) {
	c := pgtest.Shared(t)
	got := settings(t, conn.Params{})
	want := map[string]string{
		"application_name":   "pgreap",
		"statement_timeout":  "30s",
		"lock_timeout":       "5s",
		"search_path":        "pg_catalog, pg_temp",
		"synchronous_commit": "local",
		"jit":                "off",
		"user":               pgtest.Superuser,
		"database":           "postgres",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}

	// What the connection string says wins over pgreap's defaults.
	got = settings(t, conn.Params{DSN: fmt.Sprintf("host=%s port=%d application_name=mine statement_timeout=2s", c.SocketDir(), c.Port)})
	if got["application_name"] != "mine" || got["statement_timeout"] != "2s" {
		t.Errorf("connection string ignored: %v", got)
	}
}

func TestFlagsOverride(t *testing.T) {
	c := pgtest.Shared(t)
	role := pgtest.NewRole(t, "")
	db := pgtest.NewDB(t)
	// -h/-p/-U win over the string, in both syntaxes.
	for _, dsn := range []string{
		fmt.Sprintf("host=/nonexistent port=1 user=nobody dbname=%s", db),
		fmt.Sprintf("postgresql://nobody@localhost:1/%s", db),
	} {
		got := settings(t, conn.Params{DSN: dsn, Host: "127.0.0.1", Port: strconv.Itoa(c.Port), User: role})
		if got["user"] != role || got["database"] != db || got["port"] != strconv.Itoa(c.Port) {
			t.Errorf("%s: %v", dsn, got)
		}
	}
}

// -d with neither a URL nor keyword=value names the database, as psql's
// -d does (a database named "shop", or "o'neil shop").
func TestDSNIsADatabaseName(t *testing.T) {
	c := pgtest.Shared(t)
	db := pgtest.NewDB(t)
	got := settings(t, conn.Params{DSN: db, Host: "127.0.0.1", Port: strconv.Itoa(c.Port), User: pgtest.Superuser})
	if got["database"] != db {
		t.Errorf("-d %s: connected to %v", db, got)
	}
	cfg, err := conn.Config(conn.Params{DSN: `o'neil \shop`})
	if err != nil || cfg.Database != `o'neil \shop` {
		t.Errorf("-d with a quote: %v, database %q", err, cfg.Database)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, p := range []conn.Params{
		{Port: "0"},
		{Port: "65536"},
		{Port: "x"},
		{DSN: "host=localhost sslmode=sometimes"},
		{DSN: "connect_timeout=soon"},
		{DSN: "postgresql://%zz"},
	} {
		if _, err := conn.Config(p); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}

// statement_timeout and lock_timeout given in the startup options (the
// string's options or PGOPTIONS) win over pgreap's defaults, as they do
// for psql: a setting in the startup packet would otherwise override them.
func TestStartupOptionsWin(t *testing.T) {
	t.Setenv("PGOPTIONS", `-c statement_timeout=7s --lock-timeout=3s -c application_name=x\ y`)
	got := settings(t, conn.Params{})
	if got["statement_timeout"] != "7s" || got["lock_timeout"] != "3s" {
		t.Errorf("PGOPTIONS ignored: %v", got)
	}
	t.Setenv("PGOPTIONS", `-c search_path=app`)
	if got := settings(t, conn.Params{UserSearchPath: true}); got["search_path"] != "app" {
		t.Errorf("UserSearchPath with PGOPTIONS: %v", got)
	}
	// The string's own setting wins over its options; search_path is
	// pgreap's whatever they say.
	got = settings(t, conn.Params{DSN: `options='-cstatement_timeout=9s -c search_path=public' lock_timeout=1s`})
	if got["statement_timeout"] != "9s" || got["lock_timeout"] != "1s" || got["search_path"] != "pg_catalog, pg_temp" {
		t.Errorf("options: %v", got)
	}
}

// Every statement has a deadline on the client's side: statement_timeout
// plus DeadlineMargin, none when statement_timeout is 0; pgreap's default
// when nothing sets it, with no statement to read it.
func TestDeadline(t *testing.T) {
	for dsn, want := range map[string]time.Duration{
		"":                           30*time.Second + conn.DeadlineMargin,
		"statement_timeout=500":      500*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout=1.5s":     1500*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout='2 min'":  2*time.Minute + conn.DeadlineMargin,
		"statement_timeout=1h":       time.Hour + conn.DeadlineMargin,
		"statement_timeout=1d":       24*time.Hour + conn.DeadlineMargin,
		"statement_timeout=250000us": 250*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout=0":        0,
		// As the server reads them: strtol's hex and octal, an exponent,
		// rounded to whole milliseconds (half to even).
		"statement_timeout=0x10":                            16*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout=010":                             8*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout=1e3":                             time.Second + conn.DeadlineMargin,
		"statement_timeout='.5 s'":                          500*time.Millisecond + conn.DeadlineMargin,
		"statement_timeout=0.4":                             0,
		"statement_timeout=500us":                           0,
		"options='-c statement_timeout=3s'":                 3*time.Second + conn.DeadlineMargin,
		`options='--statement-timeout=4s'`:                  4*time.Second + conn.DeadlineMargin,
		"options='-c statement_timeout=3s' lock_timeout=1s": 3*time.Second + conn.DeadlineMargin,
	} {
		c := connect(t, conn.Params{DSN: dsn})
		if got := conn.Deadline(c); got != want {
			t.Errorf("%q: deadline %v, want %v", dsn, got, want)
		}
	}
	// A value the server refuses fails the connection, with its word.
	for _, dsn := range []string{"statement_timeout=soon", "statement_timeout=-1", "statement_timeout=5S", "statement_timeout=1e400",
		"statement_timeout=08", "statement_timeout=3000000000", "statement_timeout=inf", "statement_timeout=1_000",
		"options='-c statement_timeout=soon'"} {
		cfg, err := conn.Config(conn.Params{DSN: dsn})
		if err != nil {
			t.Fatalf("%q: %v", dsn, err)
		}
		if c, err := conn.Connect(pgtest.Context(t), cfg); err == nil || !strings.Contains(err.Error(), "statement_timeout") {
			if err == nil {
				c.Close(context.Background())
			}
			t.Errorf("%q: %v", dsn, err)
		}
	}
}

// A statement past its deadline fails (the server does not answer in time:
// a sleep with statement_timeout off on the server's side) and the
// connection is closed.
func TestDeadlineEndsAStatement(t *testing.T) {
	c := connect(t, conn.Params{DSN: "statement_timeout=100ms"})
	// The server's own timeout is switched off, as a stalled network
	// would make it useless: only the client's deadline is left.
	start := time.Now()
	_, err := c.Exec(pgtest.Context(t), "SET statement_timeout = 0; SELECT pg_catalog.pg_sleep(30)")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	if took := time.Since(start); took < 100*time.Millisecond+conn.DeadlineMargin {
		t.Errorf("ended after %v", took)
	}
	if !c.IsClosed() {
		t.Error("the connection is still open")
	}
}

// pgreap's deadline is the server's own statement_timeout plus the margin,
// for values that are hard to read as the server does, and a value the
// server refuses fails pgreap's connection too.
func TestDeadlineReadsTimeoutsAsTheServer(t *testing.T) {
	for _, v := range []string{"30s", "2min", "1h", "1d", "5000", "0", "0x10", "010", "1e3", ".5 s", "1.5s", "0.4", "500us",
		"1500us", "2500us", "+7ms", " 9 ms ", "08", "5S", "-1", "soon", "1_000", "3000000000", "inf", "1e400", "0x"} {
		var got time.Duration
		err := func() error {
			cfg, err := conn.Config(conn.Params{DSN: "statement_timeout='" + v + "'"})
			if err != nil {
				return err
			}
			c, err := conn.Connect(pgtest.Context(t), cfg)
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			got = conn.Deadline(c)
			return nil
		}()
		var server int64
		serverErr := func() error {
			c, err := pgx.Connect(pgtest.Context(t), "statement_timeout='"+v+"'")
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			// The setting's own timeout (2 ms for "1500us") can cancel the
			// statements that read it on a busy machine: switch it off,
			// again if need be, and read what the session started with.
			for {
				_, err := c.Exec(pgtest.Context(t), "SET statement_timeout = 0")
				if pgtest.SQLState(err) != "57014" {
					if err != nil {
						return err
					}
					break
				}
			}
			return c.QueryRow(pgtest.Context(t), "SELECT reset_val::bigint FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'").Scan(&server)
		}()
		switch {
		case err != nil && serverErr != nil:
			continue // both refuse
		case err != nil || serverErr != nil:
			t.Errorf("%q: pgreap %v, the server %v", v, err, serverErr)
			continue
		}
		want := time.Duration(server) * time.Millisecond
		if server > 0 {
			want += conn.DeadlineMargin
		}
		if got != want {
			t.Errorf("%q: deadline %v, the server's statement_timeout %d ms", v, got, server)
		}
	}
}

// UserSearchPath leaves the search_path the server gives any client of the
// same string, whatever sets it (the options, the database's settings).
func TestUserSearchPath(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	if _, err := pgtest.Admin(t).Exec(pgtest.Context(t), "ALTER DATABASE "+db+" SET search_path = evil, public"); err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{
		"",
		"dbname=" + db,
		`options='-c statement_timeout=9s'`,
		`options='-csearch_path=evil'`,
		`options='-c search_path=evil,\\ public'`,
		`options='--search-path=a -c SEARCH_PATH=b -c jit=off'`,
		`options='-c search_path=a' search_path=c`,
	} {
		t.Run(dsn, func(t *testing.T) {
			var got, want string
			c := connect(t, conn.Params{DSN: dsn, UserSearchPath: true})
			if err := c.QueryRow(pgtest.Context(t), "SELECT pg_catalog.current_setting('search_path')").Scan(&got); err != nil {
				t.Fatal(err)
			}
			cfg, err := pgx.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := pgx.ConnectConfig(pgtest.Context(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close(context.Background())
			if err := plain.QueryRow(pgtest.Context(t), "SELECT pg_catalog.current_setting('search_path')").Scan(&want); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("search_path %q, a client's %q", got, want)
			}
		})
	}
}

// A command whose work is in one database (NeedDatabase) takes it from the
// string, a URL's path or PGDATABASE, never from a default; pgreap's own
// sessions take postgres. Not parallel: it unsets PGDATABASE.
func TestNeedDatabase(t *testing.T) {
	t.Setenv("PGDATABASE", "")
	os.Unsetenv("PGDATABASE")
	for _, tc := range []struct {
		name string
		p    conn.Params
		want string // the database, or the error
	}{
		{"none", conn.Params{NeedDatabase: "exec"},
			"exec runs in one database: name it with -d 'dbname=NAME' (or PGDATABASE); pgreap does not guess it"},
		{"empty dbname", conn.Params{DSN: "dbname=''", NeedDatabase: "clear"},
			"clear runs in one database: name it with -d 'dbname=NAME' (or PGDATABASE); pgreap does not guess it"},
		{"dbname", conn.Params{DSN: "dbname=shop", NeedDatabase: "exec"}, "shop"},
		{"URL", conn.Params{DSN: "postgresql://h/shop", NeedDatabase: "exec"}, "shop"},
		{"pgreap's own", conn.Params{}, "postgres"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := conn.Config(tc.p)
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = cfg.Database
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Setenv("PGDATABASE", "shop")
	if cfg, err := conn.Config(conn.Params{NeedDatabase: "exec"}); err != nil || cfg.Database != "shop" {
		t.Fatalf("PGDATABASE: %v", err)
	}
}
