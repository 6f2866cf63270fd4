// Package conn opens pgreap's own connections: libpq conventions through
// pgx (PG* variables, ~/.pgpass, service files, URLs and keyword/value
// strings), a session that names itself and bounds its statements, and
// connection errors as one line that names host, port and user.
package conn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Params are the connection flags, as psql has them.
type Params struct {
	DSN  string // -d: keyword/value string or URL
	Host string // -h
	Port string // -p
	User string // -U
}

// Defaults for pgreap's own session. The user may set any of them in the
// connection string (e.g. "statement_timeout=5s") or PGOPTIONS.
const (
	DefaultStatementTimeout = "30s"
	DefaultLockTimeout      = "5s"
	DefaultConnectTimeout   = 10 * time.Second
)

// Config parses the parameters like libpq would, with -h, -p and -U taking
// precedence over the string and the environment, and sets up pgreap's own
// session:
//   - application_name=pgreap unless the string or PGAPPNAME names one;
//   - statement_timeout and lock_timeout, so pgreap never hangs an
//     incident on a slow catalog or a lock;
//   - search_path=pg_catalog, pg_temp, so that besides every name being
//     pg_catalog-qualified, no operator or type in another schema can be
//     picked up either;
//   - a connect timeout of 10s unless connect_timeout is given;
//   - one round trip per statement (no separate prepare step).
func Config(p Params) (*pgx.ConnConfig, error) {
	dsn, err := withFlags(p)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connection string: %s", oneLine(err))
	}
	rp := cfg.RuntimeParams
	if rp["application_name"] == "" {
		rp["application_name"] = "pgreap"
	}
	if _, ok := rp["statement_timeout"]; !ok {
		rp["statement_timeout"] = DefaultStatementTimeout
	}
	if _, ok := rp["lock_timeout"]; !ok {
		rp["lock_timeout"] = DefaultLockTimeout
	}
	rp["search_path"] = "pg_catalog, pg_temp"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.Database == "" {
		// pg_stat_activity is the same from every database; libpq would
		// try a database named after the user, which rarely exists.
		cfg.Database = "postgres"
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	return cfg, nil
}

// withFlags adds -h, -p and -U to the connection string so they win over
// what it and the environment say.
func withFlags(p Params) (string, error) {
	if p.Port != "" {
		if n, err := strconv.Atoi(p.Port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("--port %q: not a port number", p.Port)
		}
	}
	set := [][2]string{{"host", p.Host}, {"port", p.Port}, {"user", p.User}}
	dsn := p.DSN
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("connection URL: %s", oneLine(err))
		}
		q := u.Query()
		for _, kv := range set {
			if kv[1] != "" {
				q.Set(kv[0], kv[1])
			}
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	for _, kv := range set {
		if kv[1] != "" {
			dsn += " " + kv[0] + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[1]) + "'"
		}
	}
	return strings.TrimSpace(dsn), nil
}

// Connect opens a connection; its error is an *Error.
func Connect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, &Error{User: cfg.User, Err: err}
	}
	return c, nil
}

// Error is a failed connection attempt.
type Error struct {
	User string
	Err  error
}

// Error is one line: the user, the address tried (host or socket, and port)
// and the server's message, never a password.
func (e *Error) Error() string {
	msg := fmt.Sprintf("cannot connect as user %q: %s", e.User, attempt(e.Err))
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) && pgErr.Code == "53300" { // too_many_connections
		msg += " (hint: every connection slot is taken; a superuser gets in through superuser_reserved_connections, " +
			"and on PostgreSQL 16+ a role granted pg_use_reserved_connections through reserved_connections)"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// attempt picks the one attempt worth showing out of pgx's list (one line
// per address and TLS mode): the one the server refused, else the last.
func attempt(err error) string {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		err = ce.Unwrap()
	}
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "unknown error"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		for _, l := range lines {
			if strings.Contains(l, pgErr.Message) {
				return l
			}
		}
	}
	return lines[len(lines)-1]
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
