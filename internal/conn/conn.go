// Package conn opens pgreap's own connections: libpq conventions through
// pgx (PG* variables, ~/.pgpass, service files, URLs and keyword/value
// strings), a session that names itself and bounds its statements, and
// connection errors as one line that names host, port and user.
package conn

import (
	"context"
	_ "embed"
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
	// Lease, when set (the daemon's), bounds how long either side keeps a
	// connection whose peer went silent (a partition: no close reaches
	// it) to about Lease: the server's tcp_keepalives_* and
	// tcp_user_timeout, and pgreap's socket's keepalives and TCP user
	// timeout (shorter, so pgreap gives up first). What the connection
	// string (libpq's keepalives* and tcp_user_timeout for pgreap's side),
	// its options or PGOPTIONS (the server's settings) set wins.
	Lease time.Duration
	// UserSearchPath leaves search_path as a session of the user's, psql's,
	// would have it (the string, its options, PGOPTIONS, then the role's,
	// the database's and the server's settings) instead of pgreap's
	// pg_catalog, pg_temp. It is for a session that resolves the names a
	// user typed (pg_catalog.to_regclass) and runs nothing else: reading
	// those settings as the server does is the server's job.
	UserSearchPath bool
	// NeedDatabase, when set, is the command (exec, clear) whose work is
	// in one database: the user's SQL, the user's table names. Config
	// then refuses, naming it, when neither the string (dbname, a URL's
	// path, a service) nor PGDATABASE names a database, where pgreap's
	// own sessions take postgres: psql would take the user's name, and
	// either guess could run a migration in the wrong database.
	NeedDatabase string
}

// Defaults for pgreap's own session. The user may set any of them in the
// connection string (e.g. "statement_timeout=5s") or PGOPTIONS.
const (
	DefaultStatementTimeout = "30s"
	DefaultLockTimeout      = "5s"
	// DefaultSynchronousCommit makes what pgreap writes (drain's and
	// undrain's ALTER DATABASE) durable on the server before it says so,
	// without waiting for a synchronous standby that may be the incident.
	DefaultSynchronousCommit = "local"
	// DefaultJIT keeps the planner from compiling pgreap's statements: one
	// over thousands of sessions costs enough for it to, and the
	// compiling took longer than the statement runs (0.3 s at 5,000
	// sessions, 1.4 s with inlining and optimization, measured on 15).
	DefaultJIT            = "off"
	DefaultConnectTimeout = 10 * time.Second
	// DeadlineMargin is how long pgreap waits for an answer past the
	// session's statement_timeout before it gives up on the connection.
	DeadlineMargin = 2 * time.Second
)

// Config parses the parameters like libpq would, with -h, -p and -U taking
// precedence over the string and the environment, and sets up pgreap's own
// session:
//   - application_name=pgreap unless the string or PGAPPNAME names one;
//   - statement_timeout and lock_timeout, so pgreap never hangs an
//     incident on a slow catalog or a lock, unless the string, its
//     options or PGOPTIONS set them;
//   - a deadline on the client's side for every statement, the session's
//     statement_timeout plus DeadlineMargin: the server's timeout cannot
//     help when the network stalls (a dead link, a proxy that stops
//     forwarding), and without it a command would wait forever; past it,
//     the statement fails and the connection is closed;
//   - synchronous_commit=local, so that a database drain said it blocked
//     stays blocked through a crash, even on a server that runs with
//     synchronous_commit=off (unless the string or its options set it);
//   - jit=off (unless the string or its options set it): pgreap's
//     statements are short, and compiling them costs more than it saves;
//   - search_path=pg_catalog, pg_temp, so that besides every name being
//     pg_catalog-qualified, no operator or type in another schema can be
//     picked up either (unless p.UserSearchPath);
//   - the database postgres when none is named (pg_stat_activity is the
//     same from every one), or, for p.NeedDatabase, an error;
//   - a connect timeout of 10s unless connect_timeout is given;
//   - one round trip per statement (no separate prepare step).
//
// Its error is one line that never holds a password (see Redact), the
// check `watch --check` and the daemon share.
func Config(p Params) (*pgx.ConnConfig, error) {
	cfg, err := config(p)
	if err != nil {
		return nil, errors.New(Redact(oneLine(err), p.DSN))
	}
	return cfg, nil
}

func config(p Params) (*pgx.ConnConfig, error) {
	dsn, err := withFlags(p)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connection string: %s", Redact(parseError(err), dsn))
	}
	rp := cfg.RuntimeParams
	ka, err := libpqKeepAlive(rp)
	if err != nil {
		return nil, err
	}
	if rp["application_name"] == "" {
		rp["application_name"] = "pgreap"
	}
	// The server applies a startup packet's options (-c name=value, from
	// the string or PGOPTIONS) in order, then its settings: pgreap's
	// defaults go first in the options, so that the user's own, after
	// them, and a setting the string names win over them.
	userOptions := rp["options"]
	var defaults []string
	settings := [][2]string{{"statement_timeout", DefaultStatementTimeout}, {"lock_timeout", DefaultLockTimeout},
		{"synchronous_commit", DefaultSynchronousCommit}, {"jit", DefaultJIT}}
	if p.Lease > 0 {
		// The server's side: it holds a silent client's backend, and its
		// locks (the daemon's election), until these give up. They apply
		// to TCP connections only (12+ has tcp_user_timeout).
		idle, count, server, _ := leaseKeepAlive(p.Lease)
		secs := strconv.Itoa(int(idle / time.Second))
		settings = append(settings, [2]string{"tcp_keepalives_idle", secs}, [2]string{"tcp_keepalives_interval", secs},
			[2]string{"tcp_keepalives_count", strconv.Itoa(count)}, [2]string{"tcp_user_timeout", strconv.FormatInt(server.Milliseconds(), 10)})
		ka = ka.withLease(p.Lease)
	}
	if ka.used {
		cfg.DialFunc = ka.dialer().DialContext
	}
	for _, d := range settings {
		if _, set := rp[d[0]]; !set {
			defaults = append(defaults, "-c "+d[0]+"="+d[1])
		}
	}
	rp["options"] = strings.TrimSpace(strings.Join(defaults, " ") + " " + userOptions)
	if !p.UserSearchPath {
		rp["search_path"] = "pg_catalog, pg_temp"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	// The deadline is the session's statement_timeout as the server read
	// it. Where the user may have set one, pgreap asks the server once
	// connected rather than read the options as the server would; else
	// it is pgreap's default, known without a round trip.
	_, named := rp["statement_timeout"]
	named = named || strings.Contains(strings.ReplaceAll(strings.ToLower(userOptions), "-", "_"), "statement_timeout")
	cfg.AfterConnect = afterConnect(named, cfg.ConnectTimeout)
	cfg.Tracer = statementDeadline{}
	if cfg.Database == "" && p.NeedDatabase != "" {
		return nil, fmt.Errorf("%s runs in one database: name it with -d 'dbname=NAME' (or PGDATABASE); pgreap does not guess it", p.NeedDatabase)
	}
	if cfg.Database == "" {
		// pg_stat_activity is the same from every database; libpq would
		// try a database named after the user, which rarely exists.
		cfg.Database = "postgres"
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	return cfg, nil
}

//go:embed sql/statement_timeout.sql
var statementTimeoutSQL string

// deadlineData is the key of a connection's deadline in its CustomData.
const deadlineData = "pgreap.deadline"

// afterConnect records the new connection's deadline: its statement_timeout
// (the server's reading of it if ask, else pgreap's default) plus
// DeadlineMargin, none for statement_timeout 0.
func afterConnect(ask bool, timeout time.Duration) pgconn.AfterConnectFunc {
	return func(ctx context.Context, pc *pgconn.PgConn) error {
		if !ask {
			d, _ := time.ParseDuration(DefaultStatementTimeout)
			pc.CustomData()[deadlineData] = d + DeadlineMargin
			return nil
		}
		// The read is part of connecting, bounded as the connection was.
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		for {
			res := pc.ExecParams(ctx, statementTimeoutSQL, nil, nil, nil, nil).Read()
			var pgErr *pgconn.PgError
			if errors.As(res.Err, &pgErr) && pgErr.Code == "57014" && ctx.Err() == nil {
				continue // a timeout of a few milliseconds can cancel its own reading
			}
			if res.Err != nil {
				return fmt.Errorf("read statement_timeout: %w", res.Err)
			}
			if len(res.Rows) != 1 {
				return errors.New("read statement_timeout: no such setting")
			}
			ms, err := strconv.ParseInt(string(res.Rows[0][0]), 10, 64)
			if err != nil {
				return fmt.Errorf("read statement_timeout: %w", err)
			}
			if ms > 0 {
				pc.CustomData()[deadlineData] = time.Duration(ms)*time.Millisecond + DeadlineMargin
			}
			return nil
		}
	}
}

// deadline is the client-side deadline of every statement on c; zero for
// none (statement_timeout=0).
func deadline(c *pgx.Conn) time.Duration {
	d, _ := c.PgConn().CustomData()[deadlineData].(time.Duration)
	return d
}

// statementDeadline bounds each statement on the client's side, by the
// connection's deadline. It is a pgx query tracer, the one hook pgx has
// around Exec, Query (until its rows are closed) and QueryRow, so that a
// statement added later is bounded without anyone remembering to; pgreap
// sends no batches, copies or prepared statements, which it would not
// cover. When it expires, pgx sets the socket's deadline, the read fails
// and the connection is closed: the error wraps context.DeadlineExceeded.
type statementDeadline struct{}

type deadlineKey struct{}

func (statementDeadline) TraceQueryStart(ctx context.Context, c *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	d := deadline(c)
	if d <= 0 {
		return ctx
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	return context.WithValue(ctx, deadlineKey{}, cancel)
}

func (statementDeadline) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if cancel, ok := ctx.Value(deadlineKey{}).(context.CancelFunc); ok {
		cancel()
	}
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
	if dsn != "" && !strings.Contains(dsn, "=") && !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		// As libpq reads psql's -d: neither a URL nor keyword=value is a
		// database's name (-d shop).
		set = append([][2]string{{"dbname", dsn}}, set...)
		dsn = ""
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("connection URL: %s", urlError(err))
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
		return nil, &Error{User: cfg.User, Err: err, password: cfg.Password}
	}
	return c, nil
}

// Error is a failed connection attempt.
type Error struct {
	User string
	Err  error
	// password is the one the attempt used (from the string, PGPASSWORD
	// or a passfile), masked wherever a message would quote it.
	password string
}

// Error is one line: the user, the address tried (host or socket, and port)
// and the server's message, never a password.
func (e *Error) Error() string {
	msg := fmt.Sprintf("cannot connect as user %q: %s", e.User, scrub(attempt(e.Err), []string{e.password}))
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
