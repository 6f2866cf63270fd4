package cli_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// process is pgreap run as a process of its own (the test binary under
// the name pgreap), with the package cluster in its environment.
type process struct {
	cmd         *exec.Cmd
	out, errOut *lockedBuffer
	done        chan struct{} // closed when it has exited, with err set
	err         error
}

// pgreapBin is the path of a pgreap command: the test binary under the
// name pgreap, which TestMain runs as pgreap.
func pgreapBin(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pgreap")
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func startPgreap(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(pgreapBin(t), args...), out: &lockedBuffer{}, errOut: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill() // only our own child, by its pid
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s: stderr:\n%s", strings.Join(args, " "), p.errOut.String())
		}
	})
	return p
}

// wait waits for the process to exit (until the test's deadline).
func (p *process) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-pgtest.Context(t).Done():
		t.Fatalf("%s still running at the test's deadline:\n%s", p.cmd.Args, p.errOut.String())
	}
}

// code is the exit status of a process that has exited.
func (p *process) code() int { return p.cmd.ProcessState.ExitCode() }

func (p *process) waitLog(t *testing.T, what string) {
	t.Helper()
	pgtest.Eventually(t, "log "+what, func() (bool, error) {
		select {
		case <-p.done:
			return false, errors.New("pgreap exited: " + p.errOut.String())
		default:
		}
		return strings.Contains(p.errOut.String(), what), nil
	})
}

func writePolicy(t *testing.T, path, text string) {
	t.Helper()
	text = strings.NewReplacer("TAG", pgtest.Tag(t), "DSN", pgtest.Shared(t).DSN("postgres", pgtest.Superuser)).Replace(text)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// cancelled runs a long query in a new session named app and checks that
// watch cancels it. The policy chooses pg_sleep only: the victim's own
// first statement is active too, and must not be cancelled in its stead.
func cancelled(t *testing.T, app string) {
	t.Helper()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{App: app})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("%s: SQLSTATE %q, want 57014 (cancelled by watch)", app, code)
	}
}

const watchPolicy = `targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: cancel-a
    match: {app: ["TAG-a*"], state: [active], query: "pg_sleep"}
    action: cancel
`

// SIGHUP with a bad policy keeps the old one and reopens the audit log
// (logrotate); SIGTERM stops (a hang check: within 10s) with exit 0.
func TestWatchSignals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, audit := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "audit.jsonl")
	writePolicy(t, path, strings.Replace(watchPolicy, "AUDIT", audit, 1))
	p := startPgreap(t, nil, "watch", "-c", path)
	p.waitLog(t, `"msg":"leading: this replica acts on the target"`)
	tag := pgtest.Tag(t)
	cancelled(t, tag+"-a1")
	pgtest.Eventually(t, "the audit line", func() (bool, error) {
		b, err := os.ReadFile(audit)
		return err == nil && strings.Contains(string(b), tag+"-a1"), nil
	})

	// logrotate: the file is moved away, then SIGHUP. The policy is bad
	// now: rejected, the old one stays, the audit log is reopened.
	if err := os.Rename(audit, audit+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("targets: [{name: x}]\nrules: [{name: r, match: {app: [x]}, action: smite}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, `policy rejected, keeping the one in force","err":"`+path+`:2: rule \"r\": action \"smite\"`)
	cancelled(t, tag+"-a2")
	pgtest.Eventually(t, "the audit line in the new file", func() (bool, error) {
		b, err := os.ReadFile(audit)
		return err == nil && strings.Contains(string(b), tag+"-a2"), nil
	})
	if b, err := os.ReadFile(audit + ".1"); err != nil || strings.Count(string(b), "\n") != 1 || !strings.Contains(string(b), tag+"-a1") {
		t.Fatalf("rotated file: %q %v", b, err)
	}

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit: %v", p.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after SIGTERM")
	}
	t.Logf("stopped in %s (a -race build sleeps 1s at exit: GORACE atexit_sleep_ms)", time.Since(start))
	if !strings.Contains(p.errOut.String(), `"msg":"stopped"`) {
		t.Fatalf("stderr %s", p.errOut.String())
	}
}

// Two replicas of one policy: only the leader acts; killed with SIGKILL,
// the other takes over (in real time within 10s, for a loaded machine; at
// the next interval to the instant on a fake clock in the watch package's
// TestClockStandbyTakesOverAtTheNextInterval).
func TestWatchReplicas(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writePolicy(t, path, strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1)) // audit on standard output
	tag := pgtest.Tag(t)
	holder := func() string {
		var app string
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `
			SELECT a.application_name FROM pg_catalog.pg_locks AS l JOIN pg_catalog.pg_stat_activity AS a USING (pid)
			 WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE $1`, tag+"-r%").Scan(&app)
		if errors.Is(err, pgx.ErrNoRows) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return app
	}
	a := startPgreap(t, []string{"PGAPPNAME=" + tag + "-ra"}, "watch", "-c", path)
	a.waitLog(t, `"msg":"leading: this replica acts on the target"`)
	b := startPgreap(t, []string{"PGAPPNAME=" + tag + "-rb"}, "watch", "-c", path)
	b.waitLog(t, `"msg":"connected"`)
	if h := holder(); h != tag+"-ra" {
		t.Fatalf("lock held by %q", h)
	}

	cancelled(t, tag+"-a1")
	pgtest.Eventually(t, "the leader's audit line", func() (bool, error) { return strings.Contains(a.out.String(), tag+"-a1"), nil })
	if b.out.String() != "" || strings.Contains(b.errOut.String(), "leading") {
		t.Fatalf("the standby acted: %s\n%s", b.out.String(), b.errOut.String())
	}

	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, "the standby leading", func() (bool, error) { return holder() == tag+"-rb", nil })
	took := time.Since(killed)
	t.Logf("took over in %s (interval 200ms)", took)
	if took > 10*time.Second {
		t.Errorf("took over in %s, want within 10s (interval 200ms)", took)
	}
	cancelled(t, tag+"-a2")
	pgtest.Eventually(t, "the new leader's audit line", func() (bool, error) { return strings.Contains(b.out.String(), tag+"-a2"), nil })
	if strings.Contains(b.out.String(), tag+"-a1") {
		t.Fatal("the new leader acted again on the first session")
	}
}

func TestWatchBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writePolicy(t, bad, strings.Replace(watchPolicy, "action: cancel", "action: cancel\n    actoin: terminate", 1))
	good := filepath.Join(dir, "good.yaml")
	writePolicy(t, good, strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1))
	badBlocking := filepath.Join(dir, "bad-blocking.yaml")
	writePolicy(t, badBlocking, strings.Replace(watchPolicy, `query: "pg_sleep"}`, `query: "pg_sleep",`+"\n            blocking_longer_than: 1 minute}", 1))
	blocking := filepath.Join(dir, "blocking.yaml")
	writePolicy(t, blocking, strings.Replace(strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1), `state: [active], query: "pg_sleep"}`, "blocking_longer_than: 30s}", 1))
	badCount := filepath.Join(dir, "bad-count.yaml")
	writePolicy(t, badCount, strings.Replace(watchPolicy, "action: cancel", "action: cancel\n    max_actions: {count: 2.5, per: 1m}", 1))
	badPer := filepath.Join(dir, "bad-per.yaml")
	writePolicy(t, badPer, strings.Replace(watchPolicy, `metrics_addr: "off"`, `metrics_addr: "off"`+"\nmax_actions: {count: 5, per: 1ns}", 1))
	busy := filepath.Join(dir, "busy.yaml")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	writePolicy(t, busy, strings.Replace(strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1), `metrics_addr: "off"`, "metrics_addr: "+ln.Addr().String(), 1))
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"watch"}, "watch needs a policy: -c FILE"},
		{[]string{"watch", "-c", bad, "--check"}, bad + `:9: unknown key "actoin"`},
		{[]string{"watch", "-c", bad}, bad + `:9: unknown key "actoin"`},
		{[]string{"watch", "-c", badBlocking, "--check"}, badBlocking + `:8: rule "cancel-a": blocking_longer_than "1 minute": not a duration`},
		{[]string{"watch", "-c", badCount, "--check"}, badCount + `:9: rule "cancel-a": max_actions: count 2.5: a whole number of sessions`},
		{[]string{"watch", "-c", badPer, "--check"}, badPer + `:5: max_actions: per 1ns: at least 1s`},
		{[]string{"watch", "-c", good, "--log-format", "xml"}, `--log-format "xml": json or text`},
		{[]string{"watch", "-c", busy}, "metrics_addr " + ln.Addr().String() + ": bind: address already in use"},
	}
	for _, tt := range tests {
		r := run(t, false, tt.args...)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.args, r.code, r.out, r.errOut, tt.err)
		}
	}
	r := run(t, false, "watch", "-c", good, "--check")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, good+": ok\n") || !strings.Contains(r.out, "1. cancel-a: cancel when app "+pgtest.Tag(t)+"-a*, state active") {
		t.Fatalf("--check:\n%s", r.out)
	}
	r = run(t, false, "watch", "-c", blocking, "--check")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "1. cancel-a: cancel when app "+pgtest.Tag(t)+"-a*, at the root of a lock wait longer than 30s") {
		t.Fatalf("--check:\n%s", r.out)
	}
	// The example policy shipped in deploy/ is valid.
	r = run(t, false, "watch", "-c", "../../deploy/policy.example.yaml", "--check")
	r.wantCode(t, 0)
}
