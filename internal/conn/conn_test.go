package conn_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

func settings(t *testing.T, p conn.Params) map[string]string {
	t.Helper()
	cfg, err := conn.Config(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := conn.Connect(pgtest.Context(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	got := map[string]string{}
	for _, name := range []string{"application_name", "statement_timeout", "lock_timeout", "search_path"} {
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
		"application_name":  "pgreap",
		"statement_timeout": "30s",
		"lock_timeout":      "5s",
		"search_path":       "pg_catalog, pg_temp",
		"user":              pgtest.Superuser,
		"database":          "postgres",
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
