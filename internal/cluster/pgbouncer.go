package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoPgBouncer: FindPgBouncer found no pgbouncer binary. Its text says
// how to install one, on one line.
var ErrNoPgBouncer = errors.New("no pgbouncer binary found (on PATH, in /usr/sbin or /usr/bin): " +
	"install it (Debian/Ubuntu: sudo apt-get install pgbouncer; Fedora/RHEL: sudo dnf install pgbouncer; " +
	"macOS: brew install pgbouncer)")

// FindPgBouncer returns the path of the pgbouncer binary: on PATH, else
// where packages put it (Debian's is /usr/sbin/pgbouncer, not on a
// user's PATH).
func FindPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return filepath.Abs(p)
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer", "/opt/homebrew/bin/pgbouncer"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", ErrNoPgBouncer
}

// PgBouncerOptions tune a PgBouncer before it starts.
type PgBouncerOptions struct {
	// Binary is the pgbouncer binary (default: FindPgBouncer).
	Binary string
	// Prefix names the temporary directory (default "pgreap-pgbouncer-").
	Prefix string
	// PoolMode is pool_mode: "transaction" (default) or "session".
	PoolMode string
	// AuthType is auth_type: "trust" (default: any role of the server
	// logs in, found with auth_query as the superuser) or "md5" (only
	// the users of Users, with their passwords).
	AuthType string
	// Users are the auth_file's users and passwords (md5). The admin
	// user (the cluster's superuser) and StatsUser are added with a
	// random password when missing; Password tells it.
	Users map[string]string
	// StatsUser is stats_users (default "pgreap_stats"): it may SHOW on
	// the admin console, nothing else. It needs no role on the server.
	StatsUser string
	// ServerTCP makes the server connections go to 127.0.0.1 instead of
	// the unix socket, so each has a client_port in pg_stat_activity
	// (SHOW SERVERS' local_port).
	ServerTCP bool
	// Settings are extra [pgbouncer] lines, name to value; they override
	// the defaults (e.g. query_wait_timeout, server_login_retry).
	Settings map[string]string
}

// PgBouncer is a PgBouncer in front of a Cluster, run in the foreground
// as a child process (its pid is ours to signal); its configuration, log
// and unix socket live in one temporary directory that Stop removes. It
// listens on 127.0.0.1 and on the socket, never on another address.
type PgBouncer struct {
	// Dir holds pgbouncer.ini, the auth file, the log and the socket.
	Dir string
	// Port is the TCP port on 127.0.0.1 and the socket's port number.
	Port int
	// Mode is pool_mode: "transaction" or "session".
	Mode string
	// AuthType is auth_type: "trust" or "md5".
	AuthType string
	// StatsUser is the stats_users role of the admin console.
	StatsUser string
	// ServerTCP: server connections go over 127.0.0.1, not the socket.
	ServerTCP bool
	// Binary is the pgbouncer binary and Version what its --version said
	// first ("PgBouncer 1.18.0").
	Binary  string
	Version string

	passwords map[string]string
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the process has been waited for
	stopOnce  sync.Once
	stopErr   error
}

// AdminUser is the admin_users role of every PgBouncer: the cluster's
// superuser.
const AdminUser = Superuser

// LogFile is PgBouncer's log (its stderr).
func (b *PgBouncer) LogFile() string { return filepath.Join(b.Dir, "pgbouncer.log") }

// Pid is the pgbouncer process's pid.
func (b *PgBouncer) Pid() int { return b.cmd.Process.Pid }

// Password is user's password in the auth file ("" if none: trust).
func (b *PgBouncer) Password(user string) string { return b.passwords[user] }

// DSN is a keyword/value connection string of a client of the pooler,
// over 127.0.0.1. With pgx in transaction mode add
// default_query_exec_mode=exec (or simple_protocol): PgBouncer 1.18 keeps
// no prepared statements across transactions.
func (b *PgBouncer) DSN(db, user string) string {
	return b.dsn("127.0.0.1", db, user)
}

// SocketDSN is DSN over the pooler's unix socket.
func (b *PgBouncer) SocketDSN(db, user string) string {
	return b.dsn(b.Dir, db, user)
}

// AdminDSN is a connection string of the admin console (dbname=pgbouncer)
// over 127.0.0.1, as user (AdminUser or StatsUser). The console speaks only
// the simple query protocol: with pgx add
// default_query_exec_mode=simple_protocol, or use pgconn's Exec.
func (b *PgBouncer) AdminDSN(user string) string {
	return b.DSN("pgbouncer", user)
}

func (b *PgBouncer) dsn(host, db, user string) string {
	s := fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", host, b.Port, Quote(db), Quote(user))
	if p := b.passwords[user]; p != "" {
		s += " password=" + Quote(p)
	}
	return s
}

// StartPgBouncer starts a PgBouncer in front of c and returns once its
// admin console answers. ctx bounds the start only: the PgBouncer runs
// until Stop (or until this process dies: it gets SIGTERM then). When this
// process runs as root, pgbouncer runs as the cluster's unprivileged user
// (it refuses root).
func StartPgBouncer(ctx context.Context, c *Cluster, opt PgBouncerOptions) (*PgBouncer, error) {
	bin := opt.Binary
	if bin == "" {
		var err error
		if bin, err = FindPgBouncer(); err != nil {
			return nil, err
		}
	}
	b := &PgBouncer{
		Mode: opt.PoolMode, AuthType: opt.AuthType, StatsUser: opt.StatsUser,
		ServerTCP: opt.ServerTCP, Binary: bin, passwords: map[string]string{},
	}
	if b.Mode == "" {
		b.Mode = "transaction"
	}
	if b.Mode != "transaction" && b.Mode != "session" {
		return nil, fmt.Errorf("pgbouncer: pool mode %q: want transaction or session", b.Mode)
	}
	if b.AuthType == "" {
		b.AuthType = "trust"
	}
	if b.AuthType != "trust" && b.AuthType != "md5" {
		return nil, fmt.Errorf("pgbouncer: auth type %q: want trust or md5", b.AuthType)
	}
	if b.StatsUser == "" {
		b.StatsUser = "pgreap_stats"
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", bin, err)
	}
	b.Version = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])

	prefix := opt.Prefix
	if prefix == "" {
		prefix = "pgreap-pgbouncer-"
	}
	if b.Dir, err = os.MkdirTemp("", prefix+"*"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = b.Stop()
		}
	}()
	if c.cred != nil {
		// pgbouncer writes its socket here, as the cluster's user.
		if err := os.Chown(b.Dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(b.Dir, 0o755); err != nil {
		return nil, err
	}
	for user, pw := range opt.Users {
		b.passwords[user] = pw
	}
	if b.AuthType == "md5" {
		for _, user := range []string{AdminUser, b.StatsUser} {
			if b.passwords[user] == "" {
				b.passwords[user] = randomPassword()
			}
		}
	}
	if err := b.writeFile(c, "users.txt", b.authFile(), 0o600); err != nil {
		return nil, err
	}
	// A free port can be taken by someone else between our probe and
	// pgbouncer's bind: try a few.
	for attempt := 0; ; attempt++ {
		if b.Port, err = freePort(); err != nil {
			return nil, err
		}
		if err := b.writeFile(c, "pgbouncer.ini", b.ini(c, opt.Settings), 0o644); err != nil {
			return nil, err
		}
		err = b.start(ctx, c)
		if err == nil {
			break
		}
		logText, _ := os.ReadFile(b.LogFile())
		if attempt < 3 && strings.Contains(string(logText), "in use") {
			continue
		}
		return nil, fmt.Errorf("pgbouncer: %w\n%s", err, logText)
	}
	ok = true
	return b, nil
}

func randomPassword() string {
	buf := make([]byte, 12)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

func (b *PgBouncer) writeFile(c *Cluster, name, text string, mode os.FileMode) error {
	path := filepath.Join(b.Dir, name)
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		return err
	}
	if c.cred != nil {
		return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
	}
	return nil
}

// authFile lists the users PgBouncer knows itself: in trust mode the admin
// and stats users (the others are looked up on the server with auth_query,
// as the admin user), in md5 mode every user with its password.
func (b *PgBouncer) authFile() string {
	users := map[string]string{AdminUser: "", b.StatsUser: ""}
	for u, p := range b.passwords {
		users[u] = p
	}
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	q := strings.NewReplacer(`"`, `""`)
	var s strings.Builder
	for _, u := range names {
		fmt.Fprintf(&s, "\"%s\" \"%s\"\n", q.Replace(u), q.Replace(users[u]))
	}
	return s.String()
}

func (b *PgBouncer) ini(c *Cluster, extra map[string]string) string {
	host := c.SocketDir()
	if b.ServerTCP {
		host = "127.0.0.1"
	}
	settings := map[string]string{
		"listen_addr":     "127.0.0.1",
		"listen_port":     strconv.Itoa(b.Port),
		"unix_socket_dir": b.Dir,
		"pool_mode":       b.Mode,
		"auth_type":       b.AuthType,
		"auth_file":       filepath.Join(b.Dir, "users.txt"),
		"admin_users":     AdminUser,
		"stats_users":     b.StatsUser,
		// the log goes to stderr, which Start sends to LogFile: it
		// holds pgbouncer's own errors at start too
		"logfile": "",
		// after a failed server login pgbouncer waits this long before the
		// next (default 15 s): tests end and restart servers' sessions
		"server_login_retry":     "1",
		"server_connect_timeout": "5",
		"query_wait_timeout":     "60",
		"client_login_timeout":   "30",
		"max_client_conn":        "500",
		"default_pool_size":      "20",
	}
	if b.AuthType == "trust" {
		// trust still wants every user in the auth file; the server's
		// roles come from auth_query instead
		settings["auth_user"] = AdminUser
	}
	for k, v := range extra {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var s strings.Builder
	fmt.Fprintf(&s, "[databases]\n* = host=%s port=%d\n\n[pgbouncer]\n", host, c.Port)
	for _, k := range keys {
		fmt.Fprintf(&s, "%s = %s\n", k, settings[k])
	}
	return s.String()
}

// start runs pgbouncer and waits until its admin console accepts a
// connection, the process ends, or ctx does.
func (b *PgBouncer) start(ctx context.Context, c *Cluster) error {
	logf, err := os.OpenFile(b.LogFile(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(b.Binary, filepath.Join(b.Dir, "pgbouncer.ini"))
	cmd.Dir = b.Dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test binary or demo that dies leaves no pooler behind (Linux).
	cmd.SysProcAttr = childAttr(c.cred)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.cmd, b.exited = cmd, exited

	dsn := b.AdminDSN(AdminUser) + " connect_timeout=5"
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		cn, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			cn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("pgbouncer exited at start: %s", cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("pgbouncer's admin console did not answer: %w (last: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
	}
}

// Stop ends pgbouncer (SIGTERM, its immediate shutdown in 1.18; SIGKILL
// after 10 s), waits for it, and removes its directory. A second Stop does
// nothing.
func (b *PgBouncer) Stop() error {
	b.stopOnce.Do(func() {
		if b.cmd != nil {
			_ = b.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.exited:
			case <-time.After(10 * time.Second):
				_ = b.cmd.Process.Kill()
				select {
				case <-b.exited:
				case <-time.After(10 * time.Second):
					b.stopErr = fmt.Errorf("pgbouncer %d did not end after SIGKILL: its directory %s stays", b.cmd.Process.Pid, b.Dir)
					return
				}
			}
		}
		if b.Dir != "" {
			b.stopErr = os.RemoveAll(b.Dir)
		}
	})
	return b.stopErr
}
