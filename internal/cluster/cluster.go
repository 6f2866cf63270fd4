// Package cluster starts throwaway PostgreSQL servers from the server
// binaries installed on the machine: one temporary directory holds the
// data directory, the unix socket and the log, and Stop removes it. Tests
// (internal/pgtest) and `pgreap demo` use it. It never listens on an
// address other than the socket and 127.0.0.1, but Options.Listen (a
// test's own network namespace's). StartPgBouncer puts a
// PgBouncer in front of such a server, the same way.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Superuser is the bootstrap superuser of every cluster.
const Superuser = "postgres"

// Options tune a cluster before it starts.
type Options struct {
	// BinDir holds initdb, pg_ctl and postgres (required).
	BinDir string
	// Prefix names the temporary directory (default "pgreap-cluster-").
	Prefix string
	// MaxConnections sets max_connections (default 200).
	MaxConnections int
	// Settings are extra postgresql.conf lines, name to value.
	Settings map[string]string
	// HBA lines are put before the default "trust" lines of pg_hba.conf.
	HBA []string
	// Listen is an address the server listens on besides 127.0.0.1 (a
	// test's own network namespace's, see Exec).
	Listen string
	// Exec runs the cluster's commands (default (*exec.Cmd).Run): a test
	// starts the server in a network namespace of its own with it.
	Exec func(*exec.Cmd) error
}

// Cluster is a throwaway PostgreSQL server: its data directory and unix
// socket live in one temporary directory that Stop removes. It listens on
// the socket and on 127.0.0.1 (for tests of client addresses), never on
// another address but Options.Listen.
type Cluster struct {
	// Dir holds the data directory, the socket and the server log.
	Dir string
	// BinDir is where initdb, pg_ctl and postgres were taken from.
	BinDir string
	// Major is the server's major version (12, 13, ...).
	Major int
	// Port is the TCP port on 127.0.0.1 and the socket's port number.
	Port int

	cred   *syscall.Credential
	listen string
	exec   func(*exec.Cmd) error
	// A standby's primary and its replication slot there (StartStandby).
	primary *Cluster
	slot    string
}

// SocketDir is the directory of the server's unix socket (libpq's host).
func (c *Cluster) SocketDir() string { return c.Dir }

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return filepath.Join(c.Dir, "data") }

// LogFile is the server log.
func (c *Cluster) LogFile() string { return filepath.Join(c.Dir, "server.log") }

// DSN is a keyword/value connection string over the unix socket.
func (c *Cluster) DSN(db, user string) string {
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", c.Dir, c.Port, Quote(db), Quote(user))
}

// TCPDSN is a keyword/value connection string over 127.0.0.1.
func (c *Cluster) TCPDSN(db, user string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s sslmode=disable", c.Port, Quote(db), Quote(user))
}

// Env is the libpq environment that points at the cluster as its superuser.
func (c *Cluster) Env() []string {
	return []string{
		"PGHOST=" + c.Dir,
		"PGPORT=" + strconv.Itoa(c.Port),
		"PGUSER=" + Superuser,
		"PGDATABASE=postgres",
		"PGSSLMODE=disable",
	}
}

// Quote quotes a value of a keyword/value connection string.
func Quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// Start creates and starts a cluster. When the process runs as root the
// server runs as an unprivileged user ("postgres", else "nobody"), because
// initdb and postgres refuse to run as root.
func Start(ctx context.Context, opt Options) (*Cluster, error) {
	bin, err := CheckBinDir(opt.BinDir)
	if err != nil {
		return nil, err
	}
	major, err := serverMajor(ctx, bin)
	if err != nil {
		return nil, err
	}
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "pgreap-cluster-"
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		if cred, err = unprivileged(); err != nil {
			return nil, err
		}
	}
	dir, err := newDir(prefix, cred)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, BinDir: bin, Major: major, cred: cred, listen: opt.Listen, exec: opt.Exec}
	ok := false
	defer func() {
		if !ok {
			c.abandon()
		}
	}()
	if out, err := c.run(ctx, "initdb", "-D", c.DataDir(), "-U", Superuser, "-A", "trust",
		"-E", "UTF8", "--locale=C", "-N"); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if err := c.configure(opt); err != nil {
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// newDir makes the cluster's temporary directory, owned by the server's
// user (cred, nil for ours).
func newDir(prefix string, cred *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", prefix+"*")
	if err != nil {
		return "", err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// start starts the server of a data directory that is ready, on a free
// port. A free port can be taken by someone else between our probe and
// the server's bind: it tries a few.
func (c *Cluster) start(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		var err error
		if c.Port, err = freePort(); err != nil {
			return err
		}
		out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-l", c.LogFile(), "-w", "-t", "60",
			"-o", c.serverOptions(), "start")
		if err == nil {
			return nil
		}
		logText, _ := os.ReadFile(c.LogFile())
		if attempt < 3 && strings.Contains(string(logText), "could not bind") {
			continue
		}
		return fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, logText)
	}
}

// serverOptions are the postmaster's: its port, socket and addresses.
func (c *Cluster) serverOptions() string {
	listen := "127.0.0.1"
	if c.listen != "" {
		listen += "," + c.listen
	}
	return fmt.Sprintf("-p %d -k %s -c listen_addresses=%s", c.Port, c.Dir, listen)
}

func (c *Cluster) configure(opt Options) error {
	settings := map[string]string{
		"max_connections":           "200",
		"fsync":                     "off",
		"synchronous_commit":        "off",
		"full_page_writes":          "off",
		"shared_buffers":            "32MB",
		"log_line_prefix":           "'%m [%p] app=%a '",
		"log_connections":           "off",
		"max_worker_processes":      "16",
		"max_prepared_transactions": "10", // prepared transactions at the root of lock waits
		"max_parallel_workers":      "8",
		"unix_socket_permissions":   "0777",
		// the default from 14 on; 12 and 13 store md5 otherwise
		"password_encryption": "scram-sha-256",
	}
	if opt.MaxConnections > 0 {
		settings["max_connections"] = strconv.Itoa(opt.MaxConnections)
	}
	for k, v := range opt.Settings {
		settings[k] = v
	}
	var conf strings.Builder
	conf.WriteString("\n# pgreap\n")
	for _, k := range sortedKeys(settings) {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	if err := appendFile(filepath.Join(c.DataDir(), "postgresql.conf"), conf.String()); err != nil {
		return err
	}
	// "all" does not match replication connections: the replication
	// lines let StartStandby (pg_basebackup, the walreceiver) in.
	hba := strings.Join(opt.HBA, "\n") + "\n" +
		"local all all trust\n" +
		"host all all 127.0.0.1/32 trust\n" +
		"local replication all trust\n" +
		"host replication all 127.0.0.1/32 trust\n"
	return os.WriteFile(filepath.Join(c.DataDir(), "pg_hba.conf"), []byte(hba), 0o600)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Stop stops the server and removes its directory. A server that cannot
// be stopped keeps its directory, and the error says how to stop it.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-m", "fast", "-w", "-t", "20", "stop")
	if err != nil {
		// Only our own postmaster, by the pid in its own pid file.
		_, err = c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-m", "immediate", "-w", "-t", "10", "stop")
	}
	if err != nil {
		// pg_ctl status: 0 running, 3 not running, 4 no data directory.
		if _, statusErr := c.run(ctx, "pg_ctl", "-D", c.DataDir(), "status"); statusErr == nil {
			return fmt.Errorf("the server in %s did not stop (%w): pg_ctl -D %s stop -m immediate, then remove it", c.Dir, err, c.DataDir())
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		return err
	}
	return c.dropSlot()
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: no
// checkpoint, clients cut off), for tests of what pgreap does then.
//
// PostgreSQL 12 and 13 wait for ever for a child stuck in its SIGQUIT
// handler (seen once in CI, on 13, under load); 14 and later SIGKILL such
// a child after 5 s. Crash does what 14 does, to the postmaster's own
// children, and says so in the server log.
func (c *Cluster) Crash(ctx context.Context) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-m", "immediate", "-w", "-t", "20", "stop")
	if err == nil {
		return nil
	}
	pm, children := c.processes()
	for _, p := range children {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	_ = appendFile(c.LogFile(), fmt.Sprintf("pgtest: immediate shutdown stuck; SIGKILL to the children of postmaster %d: %v\n", pm, children))
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, statErr := os.Stat(filepath.Join(c.DataDir(), "postmaster.pid")); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
	}
	return fmt.Errorf("pg_ctl stop -m immediate: %w (children %v)\n%s", err, children, out)
}

type process struct {
	pid   int
	ppid  int
	uid   uint32   // effective user
	state string   // /proc/PID/stat's state and what it waits in
	args  []string // the command line
	cwd   string
}

func (p process) String() string {
	return fmt.Sprintf("%d %s (%s)", p.pid, strings.Join(p.args, " "), p.state)
}

// processes reads the postmaster's pid from its pid file and finds its
// children.
func (c *Cluster) processes() (int, []process) {
	b, err := os.ReadFile(filepath.Join(c.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0, nil
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pm <= 1 {
		return 0, nil
	}
	return pm, scan(func(p process) bool { return p.ppid == pm })
}

// isPostgres says whether p runs the postgres binary: a postmaster, a
// bootstrap backend, or a child that shows "postgres: what it does".
func isPostgres(p process) bool {
	return strings.HasPrefix(filepath.Base(p.args[0]), "postgres")
}

// scan lists the processes in /proc that match.
func scan(match func(process) bool) []process {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []process
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 2 {
			continue
		}
		p := process{state: fields[0]}
		p.pid, _ = strconv.Atoi(strings.Fields(s)[0])
		p.ppid, _ = strconv.Atoi(fields[1])
		dir := filepath.Dir(f)
		if fi, err := os.Stat(dir); err == nil {
			p.uid = fi.Sys().(*syscall.Stat_t).Uid
		}
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		p.args = strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		p.cwd, _ = os.Readlink(filepath.Join(dir, "cwd"))
		p.cwd = strings.TrimSuffix(p.cwd, " (deleted)")
		if !match(p) {
			continue
		}
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		p.state += " " + string(wchan)
		out = append(out, p)
	}
	return out
}

// abandon stops what an interrupted or failed Start began and removes the
// directory. initdb and pg_ctl start, stopped by ctx, leave processes
// behind that still write into it: initdb's bootstrap backend, pg_ctl's
// child before it execs the shell, the shell that execs the postmaster,
// a postmaster that has not written its pid file yet, and its children.
// They run as the server's user and either name the data directory on
// their command line or work in the directory; it is new, so nothing
// else does. They are stopped by pid: postgres with SIGQUIT (an immediate
// shutdown, which ends a postmaster's children), the others with SIGKILL;
// whatever is left after 10 s gets SIGKILL. Only then does the directory
// go, or the server would write into it as it goes (in CI, a demo
// interrupted while its server started left its directory behind).
func (c *Cluster) abandon() {
	if _, err := os.Stat(filepath.Join(c.DataDir(), "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, _ = c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-m", "immediate", "-w", "-t", "15", "stop")
		cancel()
	}
	uid := uint32(os.Geteuid())
	if c.cred != nil {
		uid = c.cred.Uid
	}
	ours := func(p process) bool {
		if p.uid != uid || p.pid == os.Getpid() {
			return false
		}
		if p.cwd == c.Dir || strings.HasPrefix(p.cwd, c.Dir+"/") {
			return true
		}
		for _, a := range p.args {
			if a == c.DataDir() || strings.Contains(a, `"`+c.DataDir()+`"`) {
				return true
			}
		}
		return false
	}
	start := time.Now()
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		left := scan(ours)
		if len(left) == 0 {
			break
		}
		late := time.Since(start) > 10*time.Second
		for _, p := range left {
			if isPostgres(p) && !late {
				_ = syscall.Kill(p.pid, syscall.SIGQUIT)
			} else {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
		if time.Since(start) > 30*time.Second {
			break
		}
		time.Sleep(delay)
	}
	os.RemoveAll(c.Dir)
}

// Restart stops and starts the server on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir(), "-l", c.LogFile(), "-w", "-t", "60", "-m", "fast",
		"-o", c.serverOptions(), "restart")
	if err != nil {
		return fmt.Errorf("pg_ctl restart: %w\n%s", err, out)
	}
	return nil
}

// run executes one of the cluster's binaries as the server's user.
func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = []string{"PATH=" + c.BinDir + ":/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// pg_ctl start leaves the postmaster running with our pipes open; a log
	// file instead of a pipe lets pg_ctl return.
	out, err := os.CreateTemp("", "pgreap-cmd-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if c.exec != nil {
		err = c.exec(cmd)
	} else {
		err = cmd.Run()
	}
	text, _ := os.ReadFile(out.Name())
	return text, err
}

func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, errors.New("running as root and no unprivileged user (postgres or nobody) to run the server as")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// CheckBinDir returns dir, made absolute, if it holds initdb, pg_ctl and
// postgres.
func CheckBinDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("no directory of PostgreSQL server binaries given")
	}
	// Absolute: the binaries run with the cluster's directory as theirs.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
			return "", fmt.Errorf("%s: no %s there", dir, b)
		}
	}
	return dir, nil
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

func serverMajor(ctx context.Context, bin string) (int, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "postgres"), "--version")
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("%s/postgres --version: %w", bin, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := versionRE.FindStringSubmatch(sc.Text()); m != nil {
			return strconv.Atoi(m[1])
		}
	}
	return 0, fmt.Errorf("%s/postgres --version: cannot read %q", bin, out)
}
