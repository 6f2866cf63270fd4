package watch_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/watch"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

// daemon is an in-process `pgreap watch` on a policy file.
type daemon struct {
	*watch.Daemon
	path  string // the policy
	audit string // the audit log
	logs  *syncBuffer
	stop  func()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// policyText fills a policy template: DSN is the cluster's DSN, TAG the
// test's tag (also the target's name: targets of one name contend for one
// advisory lock, as replicas do), AUDIT the audit log.
func policyText(t *testing.T, dsn, audit, text string) string {
	return strings.NewReplacer("DSN", dsn, "TAG", pgtest.Tag(t), "AUDIT", audit).Replace(text)
}

func startDaemon(t *testing.T, dsn, text string) *daemon {
	t.Helper()
	return startDaemonOpts(t, dsn, text, watch.Options{})
}

// startDaemonOpts starts a daemon with options (Path, Logger and AuditOut
// are set here).
func startDaemonOpts(t *testing.T, dsn, text string, opt watch.Options) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{path: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl"), logs: &syncBuffer{}}
	if err := os.WriteFile(d.path, []byte(policyText(t, dsn, d.audit, text)), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Load(d.path)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opt.Path, opt.Logger, opt.AuditOut = d.path, logger, io.Discard
	d.Daemon, err = watch.New(pol, opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Run(ctx, nil); err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Errorf("watch did not stop within 5s")
			}
		})
	}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	return d
}

func (d *daemon) entries(t *testing.T) []watch.Entry {
	t.Helper()
	b, err := os.ReadFile(d.audit)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []watch.Entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e watch.Entry
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// connectedPID is the backend pid of the daemon's first connection to
// target, from its log.
func (d *daemon) connectedPID(t *testing.T, target string) int32 {
	t.Helper()
	var pid int32
	pgtest.Eventually(t, "the daemon's connection", func() (bool, error) {
		sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
		for sc.Scan() {
			var line struct {
				Msg    string `json:"msg"`
				Target string `json:"target"`
				PID    int32  `json:"pid"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "connected" && line.Target == target {
				pid = line.PID
				return true, nil
			}
		}
		return false, nil
	})
	return pid
}

// waitEntries waits until the audit log has n lines.
func (d *daemon) waitEntries(t *testing.T, n int) []watch.Entry {
	t.Helper()
	var got []watch.Entry
	pgtest.Eventually(t, "audit lines", func() (bool, error) {
		got = d.entries(t)
		return len(got) >= n, nil
	})
	return got
}

func dsn(t *testing.T) string { return pgtest.Shared(t).DSN("postgres", pgtest.Superuser) }

// A query is cancelled at its threshold though the interval is a minute:
// the deadline path, not the poll. The server saw one snapshot. In real
// time, with a bound far from the minute a poll would take; the instant
// itself is proven on a fake clock (TestClockArmsAndActsAtTheDeadline).
func TestDeadlineNotPoll(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1m
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
`)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	queryStart := overshoot(t, v, time.Second)
	got := d.waitEntries(t, 1)
	e := got[0]
	if e.Target != pgtest.Tag(t) || e.Rule != "slow" || e.DryRun || e.PID != v.PID || !e.BackendStart.Equal(v.BackendStart) ||
		e.QueryStart == nil || !e.QueryStart.Equal(queryStart) || e.Datname != "postgres" || e.Usename != pgtest.Superuser ||
		e.ApplicationName != v.App || e.Query == nil || *e.Query != "SELECT pg_catalog.pg_sleep(60)" || e.Action != "cancel" ||
		e.Outcome != "cancelled" || e.ClientAddr != nil || e.Time.IsZero() {
		t.Errorf("audit line %+v", e)
	}
	if n := snapshots(t, d); n != 1 {
		t.Errorf("%d snapshots, want 1 (interval 1m)", n)
	}
	// No rule on lock pile-ups: nothing was released, nor looked for.
	if n, ok := actedLog(t, d, v.PID)["released"]; ok {
		t.Errorf("the acted log line of a longer_than rule says released %v", n)
	}
	// The session stays: a cancel ends the query.
	v.Exec("SELECT 1")
	if len(d.entries(t)) != 1 {
		t.Errorf("audit lines %+v", d.entries(t))
	}
}

// overshoot checks that the victim's cancelled query ended (its
// state_change, by the server's clock) after query_start + threshold, and
// within 5s of it (a loaded machine's room; an interval of a minute, or a
// hung connection's 30 s, would be later), and returns its query_start.
func overshoot(t *testing.T, v *pgtest.Victim, threshold time.Duration) time.Time {
	t.Helper()
	var queryStart, stateChange time.Time
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
		"SELECT query_start, state_change FROM pg_catalog.pg_stat_activity WHERE pid = $1", v.PID).Scan(&queryStart, &stateChange); err != nil {
		t.Fatal(err)
	}
	over := stateChange.Sub(queryStart.Add(threshold))
	t.Logf("overshoot %s", over)
	if over < 0 || over > 5*time.Second {
		t.Errorf("cancelled %s after the threshold, want within 5s", over)
	}
	return queryStart
}

func snapshots(t *testing.T, d *daemon) uint64 {
	t.Helper()
	mfs, err := d.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "pgreap_snapshot_duration_seconds" {
			var n uint64
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
			return n
		}
	}
	return 0
}

// Of the real rules, the first in file order acts; a dry-run rule audits
// and takes the session from no one; protected sessions are untouched;
// metrics count every attempt; /metrics and /healthz answer.
func TestProtectDryRunAndMetrics(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	vip := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-vip"})
	dry := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-dry"})
	plain := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-plain"})
	for _, v := range []*pgtest.Victim{vip, dry, plain} {
		v.Start("SELECT pg_catalog.pg_sleep(60)")
		v.WaitState("active", "")
	}
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1m
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
protect:
  apps: ["TAG-vip"]
rules:
  - name: try-first
    match: {app: ["TAG-dry"], state: [active]}
    action: terminate
    dry_run: true
  - name: everyone
    match: {app: ["TAG-*"], state: [active]}
    action: cancel
  - name: too-late
    match: {app: ["TAG-*"], state: [active]}
    action: terminate
`)
	for _, v := range []*pgtest.Victim{dry, plain} {
		if code := pgtest.SQLState(v.Wait()); code != "57014" {
			t.Fatalf("%s: SQLSTATE %q, want 57014", v.App, code)
		}
	}
	got := d.waitEntries(t, 3)
	type line struct {
		pid  int32
		rule string
	}
	byRule := map[line]watch.Entry{}
	for _, e := range got {
		byRule[line{e.PID, e.Rule}] = e
	}
	if e := byRule[line{dry.PID, "try-first"}]; e.Outcome != "planned" || !e.DryRun || e.Action != "terminate" {
		t.Errorf("dry run line %+v", e)
	}
	for _, v := range []*pgtest.Victim{dry, plain} {
		if e := byRule[line{v.PID, "everyone"}]; e.Outcome != "cancelled" || e.DryRun {
			t.Errorf("%s line %+v", v.App, e)
		}
	}
	if len(got) != 3 {
		t.Errorf("audit lines %+v", got)
	}
	vip.WaitState("active", "")
	if !dry.Alive() || !plain.Alive() {
		t.Error("a session was terminated")
	}

	m := d.Metrics()
	if n := testutil.ToFloat64(m.Actions.WithLabelValues(tag, "everyone", "cancel", "cancelled")); n != 2 {
		t.Errorf("actions cancelled = %v", n)
	}
	if n := testutil.ToFloat64(m.Actions.WithLabelValues(tag, "try-first", "terminate", "planned")); n != 1 {
		t.Errorf("actions planned = %v", n)
	}
	if testutil.ToFloat64(m.TargetUp.WithLabelValues(tag)) != 1 || testutil.ToFloat64(m.Leader.WithLabelValues(tag)) != 1 {
		t.Error("target_up or leader not 1")
	}
	body := get(t, "http://"+d.Addr()+"/metrics")
	for _, want := range []string{
		`pgreap_actions_total{action="cancel",outcome="cancelled",rule="everyone",target="` + tag + `"} 2`,
		`pgreap_target_up{target="` + tag + `"} 1`,
		`pgreap_leader{target="` + tag + `"} 1`,
		`pgreap_config_reload_success 1`,
		`pgreap_sessions{state="active",target="` + tag + `"}`,
		`pgreap_snapshot_duration_seconds_count{target="` + tag + `"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, tag+"-") || strings.Contains(body, "pg_sleep") {
		t.Error("/metrics carries an application name or a query")
	}
	if body := get(t, "http://"+d.Addr()+"/healthz"); body != `{"status":"ok","targets":{"`+tag+`":"leading"}}`+"\n" {
		t.Errorf("/healthz %q", body)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// cancel-then-terminate: a query that ends on the cancel is only
// cancelled; one that ignores it is terminated after the grace (5s: the
// room the cancelled query has to end; TestClockGraceThenEscalation proves
// the grace to the instant).
func TestCancelThenTerminate(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	sleeper := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-a"})
	sleeper.Start("SELECT pg_catalog.pg_sleep(60)")
	stubborn := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-b"})
	stubborn.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
	sleeper.WaitState("active", "")
	stubborn.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1m
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: escalate
    match: {app: ["TAG-*"], state: [active]}
    action: cancel-then-terminate
    grace: 5s
`)
	if code := pgtest.SQLState(sleeper.Wait()); code != "57014" {
		t.Errorf("sleeper: SQLSTATE %q, want 57014", code)
	}
	if code := pgtest.SQLState(stubborn.Wait()); code != "57P01" {
		t.Errorf("stubborn: SQLSTATE %q, want 57P01", code)
	}
	got := d.waitEntries(t, 2)
	byPID := map[int32]watch.Entry{}
	for _, e := range got {
		byPID[e.PID] = e
	}
	if e := byPID[sleeper.PID]; e.Action != "cancel" || e.Outcome != "cancelled" {
		t.Errorf("sleeper %+v", e)
	}
	if e := byPID[stubborn.PID]; e.Action != "terminate" || e.Outcome != "terminated" {
		t.Errorf("stubborn %+v", e)
	}
	if !sleeper.Alive() || stubborn.Alive() {
		t.Error("wrong sessions ended")
	}
}

// A reload with a bad file keeps the policy in force; a good one replaces
// it.
func TestReload(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: first
    match: {app: ["TAG-a*"], state: [active]}
    action: cancel
`)
	if err := os.WriteFile(d.path, []byte("targets: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	if testutil.ToFloat64(d.Metrics().ReloadSuccess) != 0 || !strings.Contains(d.logs.String(), "policy rejected, keeping the one in force") {
		t.Fatalf("bad policy accepted; log:\n%s", d.logs.String())
	}
	a := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-a1"})
	a.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(a.Wait()); code != "57014" {
		t.Fatalf("old policy not in force: SQLSTATE %q", code)
	}

	text := policyText(t, dsn(t), d.audit, `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: second
    match: {app: ["TAG-b*"], state: [active]}
    action: cancel
`)
	if err := os.WriteFile(d.path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	if testutil.ToFloat64(d.Metrics().ReloadSuccess) != 1 {
		t.Fatal("good policy rejected")
	}
	b := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-b1"})
	b.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(b.Wait()); code != "57014" {
		t.Fatalf("new policy not in force: SQLSTATE %q", code)
	}
	got := d.waitEntries(t, 2)
	if got[0].Rule != "first" || got[1].Rule != "second" || len(got) != 2 {
		t.Fatalf("audit %+v", got)
	}
}

// The server restarted (pg_ctl restart -m fast), or crashed (pg_ctl stop
// -m immediate, then started), under watch: the daemon reconnects and acts
// again, and never audits a session twice.
func TestServerRestart(t *testing.T) {
	for _, how := range []string{"restart", "crash"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			serverRestart(t, how == "crash")
		})
	}
}

func serverRestart(t *testing.T, crash bool) {
	ctx := pgtest.Context(t)
	c := pgtest.Own(t, pgtest.Options{})
	d := startDaemon(t, c.DSN("postgres", pgtest.Superuser), `
targets: [{name: solo, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: ["TAG"], state: [active], longer_than: 300ms}
    action: cancel
`)
	victim := func() (*pgx.Conn, chan error) {
		cn, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser)+" application_name="+pgtest.Tag(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close(context.Background()) })
		done := make(chan error, 1)
		go func() { _, err := cn.Exec(ctx, "SELECT pg_catalog.pg_sleep(60)"); done <- err }()
		return cn, done
	}
	_, done := victim()
	if code := pgtest.SQLState(<-done); code != "57014" {
		t.Fatalf("before the restart: SQLSTATE %q", code)
	}
	d.waitEntries(t, 1)
	if crash {
		if err := c.Crash(ctx); err != nil {
			t.Fatal(err)
		}
		pgtest.Eventually(t, "the target down", func() (bool, error) {
			return testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues("solo")) == 0, nil
		})
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, "the daemon back", func() (bool, error) {
		return strings.Contains(d.logs.String(), `"msg":"connection lost"`) &&
			testutil.ToFloat64(d.Metrics().Leader.WithLabelValues("solo")) == 1, nil
	})
	_, done = victim()
	if code := pgtest.SQLState(<-done); code != "57014" {
		t.Fatalf("after the restart: SQLSTATE %q", code)
	}
	got := d.waitEntries(t, 2)
	if len(got) != 2 || got[0].PID == got[1].PID && got[0].BackendStart.Equal(got[1].BackendStart) {
		t.Fatalf("audit %+v", got)
	}
	if !strings.Contains(d.logs.String(), `"msg":"connected"`) {
		t.Fatal("no reconnection logged")
	}
}

// A target that hangs (a listener that never answers) does not delay
// another: each has its own goroutine and connection.
func TestSlowTargetDoesNotDelayAnother(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never answered
		}
	}()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets:
  - {name: TAG-hung, dsn: "host=`+host+` port=`+port+` connect_timeout=30 sslmode=disable"}
  - {name: TAG, dsn: "DSN"}
interval: 1m
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 500ms}
    action: cancel
`)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014", code)
	}
	overshoot(t, v, 500*time.Millisecond)
	if testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues(pgtest.Tag(t)+"-hung")) != 0 {
		t.Error("the hung target is up")
	}
}

// --dry-run makes every rule a dry run: audited planned, nothing touched.
func TestDryRunForAll(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	d := startDaemonOpts(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1m
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: idle
    match: {app: [TAG], state: [idle]}
    action: terminate
`, watch.Options{DryRun: true})
	got := d.waitEntries(t, 1)
	if e := got[0]; e.PID != v.PID || e.Outcome != "planned" || !e.DryRun || e.Action != "terminate" {
		t.Fatalf("audit %+v", e)
	}
	v.Exec("SELECT 1")
	if !v.Alive() {
		t.Fatal("a dry run ended the session")
	}
}

// A fastpath function call (libpq's PQfn, large objects) does not move
// query_start: two calls in a row look like one query by it. The rule
// acts on each call, not once for all.
func TestFastpathCallsAreActedOnEach(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("SELECT 1") // the last statement: its query_start stays
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow-calls
    match: {app: [TAG], state: [fastpath function call], longer_than: 200ms}
    action: cancel
`)
	for i := 1; i <= 2; i++ {
		v.StartFastpathSleep(20)
		if code := pgtest.SQLState(v.Wait()); code != "57014" {
			t.Fatalf("call %d ended with SQLSTATE %q, want 57014 (cancelled)", i, code)
		}
		got := d.waitEntries(t, i)
		if e := got[i-1]; e.Outcome != "cancelled" || e.PID != v.PID {
			t.Fatalf("audit line %d: %+v", i, e)
		}
	}
}
