// Package conn opens pgreap's own connections: libpq conventions through
// pgx (PG* variables, ~/.pgpass, service files, URLs and keyword/value
// strings), a session that names itself and bounds its statements, and
// connection errors as one line that names host, port and user.
package conn

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
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
//     picked up either;
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
	if rp["application_name"] == "" {
		rp["application_name"] = "pgreap"
	}
	// A setting in the startup packet wins over the same one in its
	// options (-c name=value, from the string or PGOPTIONS): set the
	// defaults only where neither names them.
	opts := startupOptions(rp["options"])
	for name, def := range map[string]string{"statement_timeout": DefaultStatementTimeout, "lock_timeout": DefaultLockTimeout,
		"synchronous_commit": DefaultSynchronousCommit, "jit": DefaultJIT} {
		if v, ok := opts[name]; ok {
			if _, set := rp[name]; !set {
				rp[name] = v
			}
		}
		if _, ok := rp[name]; !ok {
			rp[name] = def
		}
	}
	timeout, ok := pgDuration(rp["statement_timeout"])
	if !ok {
		return nil, fmt.Errorf("statement_timeout %q (connection string or PGOPTIONS): not a duration PostgreSQL takes (e.g. 30s, 2min, 5000)", rp["statement_timeout"])
	}
	if timeout > 0 {
		cfg.Tracer = statementDeadline(timeout + DeadlineMargin)
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

// deadline is the client-side deadline of every statement on a
// connection configured by Config; zero for none (statement_timeout=0).
func deadline(cfg *pgx.ConnConfig) time.Duration {
	if d, ok := cfg.Tracer.(statementDeadline); ok {
		return time.Duration(d)
	}
	return 0
}

// statementDeadline bounds each statement on the client's side. It is a
// pgx query tracer, the one hook pgx has around Exec, Query (until its rows
// are closed) and QueryRow, so that a statement added later is bounded
// without anyone remembering to; pgreap sends no batches, copies or
// prepared statements, which it would not cover. When it expires,
// pgx sets the socket's deadline, the read fails and the connection is
// closed: the error wraps context.DeadlineExceeded.
type statementDeadline time.Duration

type deadlineKey struct{}

func (d statementDeadline) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(d))
	return context.WithValue(ctx, deadlineKey{}, cancel)
}

func (statementDeadline) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if cancel, ok := ctx.Value(deadlineKey{}).(context.CancelFunc); ok {
		cancel()
	}
}

// startupOptions reads the settings in a startup packet's options, as
// the server does: words split on spaces (a backslash escapes the next
// character), "-c name=value", "-cname=value" or "--name=value", dashes
// in a name read as underscores.
func startupOptions(s string) map[string]string {
	var words []string
	var w strings.Builder
	inWord, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			w.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inWord = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	out := map[string]string{}
	for i := 0; i < len(words); i++ {
		var kv string
		switch word := words[i]; {
		case word == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(word, "--"):
			kv = word[2:]
		case strings.HasPrefix(word, "-c"):
			kv = word[2:]
		default:
			continue
		}
		if name, value, ok := strings.Cut(kv, "="); ok {
			out[strings.ToLower(strings.ReplaceAll(name, "-", "_"))] = value
		}
	}
	return out
}

// pgDuration reads statement_timeout as the server does (guc.c's
// parse_int): an integer as strtol reads it (0x hex, a leading 0 octal),
// or a number with a fraction or an exponent; blanks, then a unit (us,
// ms, s, min, h, d; none means ms); rounded to whole milliseconds, half to
// even; 0 to INT_MAX.
func pgDuration(s string) (time.Duration, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	n := intPrefix(s)
	var val float64
	if n < len(s) && (s[n] == '.' || s[n] == 'e' || s[n] == 'E') || n == 0 && strings.HasPrefix(s, ".") {
		n = len(floatPrefix.FindString(s))
		f, err := strconv.ParseFloat(s[:n], 64)
		if n == 0 || err != nil {
			return 0, false
		}
		val = f
	} else {
		if n == 0 {
			return 0, false
		}
		i, err := strconv.ParseInt(s[:n], 0, 64)
		if err != nil {
			return 0, false
		}
		val = float64(i)
	}
	unit := strings.TrimRight(strings.TrimLeft(s[n:], " \t\n\v\f\r"), " \t\n\v\f\r")
	scale := map[string]float64{"": 1, "us": 0.001, "ms": 1, "s": 1e3, "min": 60e3, "h": 3600e3, "d": 86400e3}
	k, ok := scale[unit]
	if !ok {
		return 0, false
	}
	ms := math.RoundToEven(val * k)
	if ms < 0 || ms > math.MaxInt32 {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

var floatPrefix = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?`)

// intPrefix is the length of the integer strtol(s, &end, 0) reads at the
// start of s (0 for none): a sign, then 0x and hex digits, 0 and octal
// digits, or decimal digits.
func intPrefix(s string) int {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := func(j int, ok func(byte) bool) int {
		for j < len(s) && ok(s[j]) {
			j++
		}
		return j
	}
	isHex := func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
	switch {
	case strings.HasPrefix(s[i:], "0x") || strings.HasPrefix(s[i:], "0X"):
		if j := digits(i+2, isHex); j > i+2 {
			return j
		}
		return i + 1 // "0", then the x is left over
	case strings.HasPrefix(s[i:], "0"):
		return digits(i, func(c byte) bool { return c >= '0' && c <= '7' })
	}
	if j := digits(i, func(c byte) bool { return c >= '0' && c <= '9' }); j > i {
		return j
	}
	return 0
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
