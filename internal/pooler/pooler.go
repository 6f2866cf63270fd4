// Package pooler talks to PgBouncer's admin console: which client each
// server connection serves now (SHOW SERVERS, SHOW CLIENTS, SHOW POOLS), and
// the pooler's own PAUSE, RESUME and KILL of a database.
//
// The console is a privileged channel. pgreap sends it SHOW, PAUSE, RESUME
// and KILL, nothing else: listing needs a stats_users role, pausing and
// killing an admin_users one (docs/privileges.md). It speaks only the
// simple query protocol, and its statements take no parameters: a database
// name is sent as a quoted identifier.
package pooler

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/conn"
)

// AdminDB is the admin console's database name.
const AdminDB = "pgbouncer"

// Pooler is one PgBouncer's admin console, as named by a connection string.
type Pooler struct {
	// Name is how pgreap names it to people: host:port, or the socket
	// directory:port.
	Name string
	cfg  *pgconn.Config
	dsn  string
}

// Parse reads a connection string to a pooler's admin console, with libpq's
// conventions (keyword/value or URL, PG* variables, ~/.pgpass). The
// database is always the console's (pgbouncer), and the startup packet
// carries no settings: the console refuses the ones it does not know.
func Parse(dsn string) (*Pooler, error) {
	if strings.TrimSpace(dsn) == "" {
		return nil, errors.New("--pgbouncer: empty connection string")
	}
	cfg, err := pgconn.ParseConfig(adminDB(dsn))
	if err != nil {
		return nil, fmt.Errorf("--pgbouncer %s", conn.Redact(strings.Join(strings.Fields(err.Error()), " "), dsn))
	}
	cfg.Database = AdminDB
	cfg.RuntimeParams = map[string]string{"application_name": "pgreap"}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = conn.DefaultConnectTimeout
	}
	p := &Pooler{cfg: cfg, dsn: dsn}
	p.Name = fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	return p, nil
}

// Reach is a connection string to the same console without its password,
// for a record that outlives the process: undrain reconnects with it,
// taking the password from PGPASSWORD or ~/.pgpass as libpq would, when
// the pooler is not named again with --pgbouncer.
func (p *Pooler) Reach() string {
	quote := func(v string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	s := fmt.Sprintf("host=%s port=%d dbname=%s", quote(p.cfg.Host), p.cfg.Port, AdminDB)
	if p.cfg.User != "" {
		s += " user=" + quote(p.cfg.User)
	}
	return s
}

// SplitList splits a list of connection strings separated by white space
// (PGREAP_PGBOUNCER): each URL is one; keyword/value pairs run on into one
// string until a keyword comes again (host=a port=1 host=b port=2 is two).
// A quoted value may hold spaces (password='a b').
func SplitList(list string) []string {
	var out []string
	var cur []string
	seen := map[string]bool{}
	flush := func() {
		if len(cur) > 0 {
			out = append(out, strings.Join(cur, " "))
		}
		cur, seen = nil, map[string]bool{}
	}
	for _, tok := range joinEquals(fields(list)) {
		key, _, isKV := strings.Cut(tok, "=")
		switch {
		case strings.Contains(tok, "://") || !isKV:
			flush()
			out = append(out, tok)
		default:
			key = strings.TrimSpace(key)
			if seen[key] {
				flush()
			}
			seen[key] = true
			cur = append(cur, tok)
		}
	}
	flush()
	return out
}

// joinEquals puts back together what white space around = split (host =
// a, host= a, host =a: libpq allows it).
func joinEquals(toks []string) []string {
	var out []string
	for _, t := range toks {
		if n := len(out); n > 0 && (strings.HasPrefix(t, "=") || strings.HasSuffix(out[n-1], "=")) &&
			!strings.Contains(out[n-1], "://") && !strings.Contains(t, "://") {
			out[n-1] += t
			continue
		}
		out = append(out, t)
	}
	return out
}

// fields splits at white space outside single quotes (libpq's quoting:
// 'a b', with \' and \\ inside).
func fields(s string) []string {
	var out []string
	var b strings.Builder
	quoted, escaped, any := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && quoted:
			escaped = true
		case r == '\'':
			quoted = !quoted
		case unicode.IsSpace(r) && !quoted:
			if any {
				out = append(out, b.String())
				b.Reset()
				any = false
			}
			continue
		}
		b.WriteRune(r)
		any = true
	}
	if any {
		out = append(out, b.String())
	}
	return out
}

// adminDB names the console's database in dsn unless it names one: the
// password file (~/.pgpass) is searched with the database the string
// names, and a line for database pgbouncer must be found. PGDATABASE,
// which names the server's, must not be used.
func adminDB(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if strings.Trim(u.Path, "/") == "" {
			u.Path = "/" + AdminDB
		}
		return u.String()
	}
	return "dbname=" + AdminDB + " " + dsn
}

// commandTimeout bounds a console command's answer: the connection's
// connect_timeout (10s unless the string says).
func (p *Pooler) commandTimeout() time.Duration {
	if p.cfg.ConnectTimeout > 0 {
		return p.cfg.ConnectTimeout
	}
	return conn.DefaultConnectTimeout
}

// ParseAll parses each of dsns; a name given twice is one pooler.
func ParseAll(dsns []string) ([]*Pooler, error) {
	var out []*Pooler
	seen := map[string]bool{}
	for _, d := range dsns {
		p, err := Parse(d)
		if err != nil {
			return nil, err
		}
		if !seen[p.Name] {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// Admin is one connection to a pooler's admin console. It runs one command
// at a time; PAUSE, which waits, runs on a connection of its own.
type Admin struct {
	Pooler *Pooler
	c      *pgconn.PgConn
}

// Connect opens a connection to the admin console. Its error is one line
// that names the pooler and never holds a password.
func (p *Pooler) Connect(ctx context.Context) (*Admin, error) {
	// pgconn sends a CancelRequest when a command is interrupted, and on
	// the console (1.18's admin_handle_cancel) a cancel RESUMEs every
	// database if anyone paused the whole pooler: a pause that is not
	// pgreap's to lift. This connection dials once; the cancel's dial
	// fails and pgconn just closes the socket.
	cfg := p.cfg.Copy()
	dial, dialed := cfg.DialFunc, false
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dialed {
			return nil, errNoCancel
		}
		return dial(ctx, network, addr)
	}
	cfg.AfterConnect = func(context.Context, *pgconn.PgConn) error {
		dialed = true
		return nil
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, &Error{Pooler: p.Name, Err: &conn.Error{User: p.cfg.User, Err: err}, password: p.cfg.Password}
	}
	return &Admin{Pooler: p, c: c}, nil
}

// ConnectAll connects to each pooler's admin console; on an error, the
// connections opened are closed and the error names the pooler.
func ConnectAll(ctx context.Context, poolers []*Pooler) ([]*Admin, error) {
	admins := make([]*Admin, 0, len(poolers))
	for _, p := range poolers {
		a, err := p.Connect(ctx)
		if err != nil {
			CloseAll(admins)
			return nil, err
		}
		admins = append(admins, a)
	}
	return admins, nil
}

// CloseAll closes every connection.
func CloseAll(admins []*Admin) {
	for _, a := range admins {
		a.Close()
	}
}

var errNoCancel = errors.New("pgreap sends no cancel request to a pooler's console")

// Close closes the connection.
func (a *Admin) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = a.c.Close(ctx)
}

// Error is a failure talking to a pooler: it names the pooler.
type Error struct {
	Pooler   string
	Err      error
	password string
}

func (e *Error) Error() string {
	msg := strings.Join(strings.Fields(e.Err.Error()), " ")
	if e.password != "" {
		msg = strings.ReplaceAll(msg, e.password, "********")
	}
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) && pgErr.Code == "42704" { // undefined_object: SHOW of a PgBouncer name
		msg += " (is it a PgBouncer admin console? a PostgreSQL server answers so)"
	}
	// The pooler's text goes to a terminal: no control character of it
	// gets there (an escape sequence would be the pooler's, not ours).
	msg = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, msg)
	return "pgbouncer " + e.Pooler + ": " + msg
}

func (e *Error) Unwrap() error { return e.Err }

func (a *Admin) fail(err error) error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		return err
	}
	return &Error{Pooler: a.Pooler.Name, Err: err, password: a.Pooler.cfg.Password}
}

// row is one row of a SHOW command, by column name: the columns differ
// from one PgBouncer version to the next, and pgreap reads only those it
// knows, by name.
type row map[string]string

// A count or port the pooler cannot mean (negative, past int32) is 0.
func (r row) int(col string) int {
	n, err := strconv.ParseInt(r[col], 10, 32)
	if err != nil || n < 0 {
		return 0
	}
	return int(n)
}

// time reads PgBouncer's timestamps ("2026-12-01 22:41:36 UTC").
//
// PgBouncer prints them in its host's time zone, by abbreviation. Read in
// pgreap's own zone, the abbreviation of that zone (and UTC) gives the
// offset; another abbreviation gets offset 0 from the time package, and
// the instant is then known only up to the zone's offset: see sameInstant.
func (r row) time(col string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04:05 MST", r[col], time.Local)
	if err != nil {
		return time.Time{}
	}
	return t
}

// zoneKnown reports whether t, read by row.time, has a known offset.
func zoneKnown(t time.Time) bool {
	name, offset := t.Zone()
	return offset != 0 || name == "UTC" || name == "GMT" || t.Location() == time.UTC
}

// command runs one console command and returns its rows. The simple query
// protocol is the console's only one.
func (a *Admin) command(ctx context.Context, sql string) ([]row, error) {
	if !strings.HasPrefix(sql, "PAUSE ") {
		// Every command but PAUSE answers at once: a console that does
		// not (a pooler stopped, the network) fails the command, and its
		// connection, instead of holding pgreap (a watch that would look
		// healthy while it takes no snapshot).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.Pooler.commandTimeout())
		defer cancel()
	}
	results, err := a.c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, a.fail(err)
	}
	var rows []row
	for _, res := range results {
		if res.Err != nil {
			return nil, a.fail(res.Err)
		}
		for _, vals := range res.Rows {
			r := make(row, len(vals))
			for i, f := range res.FieldDescriptions {
				if i < len(vals) && vals[i] != nil {
					r[f.Name] = string(vals[i])
				}
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// Version is the pooler's version ("PgBouncer 1.18.0").
func (a *Admin) Version(ctx context.Context) (string, error) {
	rows, err := a.command(ctx, "SHOW VERSION")
	if err != nil {
		return "", err
	}
	if len(rows) == 0 {
		return "", a.fail(errors.New("SHOW VERSION: no row"))
	}
	return rows[0]["version"], nil
}

// Server is a row of SHOW SERVERS: one connection from the pooler to a
// PostgreSQL backend.
type Server struct {
	User, Database, State string
	// Addr and Port are the server's; LocalAddr and LocalPort the
	// pooler's end of the connection (the backend's client_addr and
	// client_port; "unix" over a socket).
	Addr            string
	Port            int
	LocalAddr       string
	LocalPort       int
	ConnectTime     time.Time
	Ptr, Link       string // Link: the Ptr of the client it serves, "" for none
	RemotePID       int32  // the backend's pid
	ApplicationName string
}

// Servers is SHOW SERVERS.
func (a *Admin) Servers(ctx context.Context) ([]Server, error) {
	rows, err := a.command(ctx, "SHOW SERVERS")
	if err != nil {
		return nil, err
	}
	out := make([]Server, 0, len(rows))
	for _, r := range rows {
		out = append(out, Server{
			User: r["user"], Database: r["database"], State: r["state"],
			Addr: r["addr"], Port: r.int("port"), LocalAddr: r["local_addr"], LocalPort: r.int("local_port"),
			ConnectTime: r.time("connect_time"), Ptr: r["ptr"], Link: r["link"],
			RemotePID: int32(r.int("remote_pid")), ApplicationName: r["application_name"],
		})
	}
	return out, nil
}

// Client is a row of SHOW CLIENTS: one client of the pooler.
type Client struct {
	User, Database, State string
	Addr                  string // "unix" over a socket
	Port                  int
	ConnectTime           time.Time
	Ptr, Link             string // Link: the Ptr of the server connection it uses, "" for none
	ApplicationName       string
}

// Clients is SHOW CLIENTS.
func (a *Admin) Clients(ctx context.Context) ([]Client, error) {
	rows, err := a.command(ctx, "SHOW CLIENTS")
	if err != nil {
		return nil, err
	}
	out := make([]Client, 0, len(rows))
	for _, r := range rows {
		out = append(out, Client{
			User: r["user"], Database: r["database"], State: r["state"],
			Addr: r["addr"], Port: r.int("port"), ConnectTime: r.time("connect_time"),
			Ptr: r["ptr"], Link: r["link"], ApplicationName: r["application_name"],
		})
	}
	return out, nil
}

// Pool is a row of SHOW POOLS: one (database, user) pool.
type Pool struct {
	Database, User string
	// ClWaiting counts the clients waiting for a server connection.
	ClActive, ClWaiting int
	SvActive, SvIdle    int
	SvUsed              int
	PoolMode            string
}

// Pools is SHOW POOLS.
func (a *Admin) Pools(ctx context.Context) ([]Pool, error) {
	rows, err := a.command(ctx, "SHOW POOLS")
	if err != nil {
		return nil, err
	}
	out := make([]Pool, 0, len(rows))
	for _, r := range rows {
		out = append(out, Pool{
			Database: r["database"], User: r["user"],
			ClActive: r.int("cl_active"), ClWaiting: r.int("cl_waiting"),
			SvActive: r.int("sv_active"), SvIdle: r.int("sv_idle"), SvUsed: r.int("sv_used"),
			PoolMode: r["pool_mode"],
		})
	}
	return out, nil
}

// Database is a row of SHOW DATABASES: a database the pooler serves.
type Database struct {
	Name     string // as clients name it
	Host     string
	Port     int
	Database string // on the server
	PoolMode string
	Paused   bool
	Disabled bool
}

// Databases is SHOW DATABASES.
func (a *Admin) Databases(ctx context.Context) ([]Database, error) {
	rows, err := a.command(ctx, "SHOW DATABASES")
	if err != nil {
		return nil, err
	}
	out := make([]Database, 0, len(rows))
	for _, r := range rows {
		out = append(out, Database{
			Name: r["name"], Host: r["host"], Port: r.int("port"), Database: r["database"],
			PoolMode: r["pool_mode"], Paused: r["paused"] == "1", Disabled: r["disabled"] == "1",
		})
	}
	return out, nil
}

// Setting is one setting of SHOW CONFIG, as the pooler prints it
// (query_wait_timeout in seconds, "0" for none), "" when it has no such
// key.
func (a *Admin) Setting(ctx context.Context, key string) (string, error) {
	rows, err := a.command(ctx, "SHOW CONFIG")
	if err != nil {
		return "", err
	}
	for _, r := range rows {
		if r["key"] == key {
			return r["value"], nil
		}
	}
	return "", nil
}

// ErrNotPaused is RESUME of a database that is not paused.
var ErrNotPaused = errors.New("not paused")

// ErrNoDatabase is a command on a database the pooler does not know.
var ErrNoDatabase = errors.New("no such database")

// ident quotes a database name for the console, which reads identifiers as
// PostgreSQL does.
func ident(db string) string { return pgx.Identifier{db}.Sanitize() }

// Pause is PAUSE db: the pooler gives no more server connections to that
// database's clients (they wait), and returns once every server connection
// of it is released and closed (in transaction mode, when the transactions
// in flight end; in session mode, when the clients leave). It waits as long
// as that takes; cancelling ctx closes the connection, and the database
// stays paused (the pooler keeps a pause its issuer left).
//
// PAUSE of a database already paused returns at once, paused or not yet:
// a caller checks Databases first.
func (a *Admin) Pause(ctx context.Context, db string) error {
	_, err := a.command(ctx, "PAUSE "+ident(db))
	return a.known(err)
}

// Resume is RESUME db. A database that is not paused is ErrNotPaused.
func (a *Admin) Resume(ctx context.Context, db string) error {
	_, err := a.command(ctx, "RESUME "+ident(db))
	return a.known(err)
}

// ErrNotAdmin: the console's role is not in admin_users (a stats_users
// one may only SHOW).
var ErrNotAdmin = errors.New("the role is not in the pooler's admin_users (PAUSE, RESUME and KILL need it)")

// CheckAdmin reports whether the role may PAUSE, RESUME and KILL
// (ErrNotAdmin otherwise), before anything is done: it sends RESUME of a
// name no database has, which an admin is told does not exist, and anyone
// else that it needs admin access. Nothing is resumed.
func (a *Admin) CheckAdmin(ctx context.Context) error {
	err := a.Resume(ctx, "pgreap admin check, not a database")
	switch {
	case errors.Is(err, ErrNoDatabase), errors.Is(err, ErrNotPaused), err == nil:
		return nil
	case strings.Contains(err.Error(), "admin access needed"):
		return &Error{Pooler: a.Pooler.Name, Err: ErrNotAdmin}
	}
	return err
}

// CheckAdminAll is CheckAdmin on each; the first refusal.
func CheckAdminAll(ctx context.Context, admins []*Admin) error {
	for _, a := range admins {
		if err := a.CheckAdmin(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Kill is KILL db: the pooler drops every client and server connection of
// the database at once, and new clients wait until RESUME.
func (a *Admin) Kill(ctx context.Context, db string) error {
	_, err := a.command(ctx, "KILL "+ident(db))
	return a.known(err)
}

func (a *Admin) known(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.Contains(pgErr.Message, "is not paused"):
			return &Error{Pooler: a.Pooler.Name, Err: fmt.Errorf("%w: %s", ErrNotPaused, pgErr.Message)}
		case strings.HasPrefix(pgErr.Message, "no such database"):
			return &Error{Pooler: a.Pooler.Name, Err: fmt.Errorf("%w: %s", ErrNoDatabase, pgErr.Message)}
		}
	}
	return err
}
