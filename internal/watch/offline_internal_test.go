package watch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/pooler"
)

// decision is what the daemon armed, or --test says, for one session.
type decision struct {
	pid  int32
	rule string
	due  time.Time
}

func (d decision) String() string {
	return fmt.Sprintf("pid %d: %s at %s", d.pid, d.rule, d.due.UTC().Format(time.RFC3339Nano))
}

// The daemon and --test decide alike: the daemon, on a real server, takes
// its snapshot (the server marks which rules match) and arms its rules;
// that snapshot, written as `ls -o json` writes it and read back, is given
// to Test (Go decides the marks, selector.Holds). Every rule, session and
// instant must be the same. The rules cover each selector Holds decides,
// both matching and not.
func TestOfflineDecidesAsTheDaemon(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	db := pgtest.NewDB(t)
	ctx := pgtest.Context(t)
	tbl := pgtest.Name(t, "t")
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	tbl2 := pgtest.Name(t, "u")
	if _, err := admin.Exec(ctx, "CREATE TABLE "+tbl+" (x int); CREATE TABLE "+tbl2+" (x int)"); err != nil {
		t.Fatal(err)
	}
	open := func(app string, tcp bool) *pgtest.Victim {
		return pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-" + app, TCP: tcp})
	}
	sleeper := open("sleep", true)
	sleeper.Start("SELECT pg_catalog.pg_sleep(600)")
	sleeper.WaitState("active", "")
	idle := open("idle", false)
	idle.Exec("BEGIN")
	idle.Exec("SELECT 1")
	holder := open("holder", false)
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE " + tbl + " IN ACCESS EXCLUSIVE MODE")
	waiter := open("waiter", false)
	waiter.Start("SELECT count(*) FROM " + tbl)
	waiter.WaitState("active", "Lock")
	// A chain: mid holds tbl2 and waits behind holder, tail waits behind
	// mid. mid blocks and waits: no root; holder is the root of all three
	// waits, from the oldest one's wait_start.
	mid := open("mid", false)
	mid.Exec("BEGIN")
	mid.Exec("LOCK TABLE " + tbl2 + " IN ACCESS EXCLUSIVE MODE")
	mid.Start("LOCK TABLE " + tbl + " IN ACCESS SHARE MODE")
	mid.WaitState("active", "Lock")
	tail := open("tail", false)
	tail.Start("SELECT count(*) FROM " + tbl2)
	tail.WaitState("active", "Lock")
	kept := open("kept", false)
	kept.Exec("BEGIN")
	kept.Exec("SELECT 2")
	// Named as a watch's connection, of pgreap's role: the guard protects
	// it; both arm it.
	watcher := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: AppName})
	watcher.Exec("BEGIN")
	watcher.Exec("SELECT 4")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-otherdb"}) // database postgres
	other.Exec("BEGIN")
	other.Exec("SELECT 3")

	text := strings.NewReplacer("TAG", tag, "DB", db).Replace(`
targets: [{name: TAG, dsn: "host=/nonexistent"}]
interval: 1h
protect: {apps: ["TAG-kept"]}
rules:
  - name: slow
    match: {app: ["TAG-*"], state: [active], query: "pg_sleep", longer_than: 1h}
    action: cancel
  - name: slow-regex-miss
    match: {app: ["TAG-*"], query: "^nothing", longer_than: 1s}
    action: cancel
  - name: from-net
    match: {app: ["TAG-*"], client: ["127.0.0.0/8"], xact_longer_than: 90m}
    action: terminate
  - name: from-elsewhere
    match: {app: ["TAG-*"], client: ["10.0.0.0/8"]}
    action: terminate
  - name: forgotten
    match: {app: ["TAG-*"], db: [DB], exclude_app: ["TAG-holder"], backend_type: ["client backend"], state: ["idle in transaction"], xact_longer_than: 30m}
    action: terminate
  - name: watch-waits
    match: {app: ["TAG-*"], waiting: true}
    action: cancel
    dry_run: true
  - name: pileup
    match: {app: ["TAG-*"], blocking_longer_than: 1h}
    action: terminate
  - name: roots
    match: {app: ["TAG-*"], blocking: true, longer_than: 2h}
    action: terminate
  - name: replay
    match: {app: ["TAG-*"], blocking_replay: true}
    action: terminate
  - name: other-db
    match: {app: ["TAG-*"], exclude_db: [DB], user: ["` + pgtest.Superuser + `"], exclude_user: ["nobody*"], state: ["idle*"]}
    action: terminate
    dry_run: true
  - name: watchers
    match: {db: [DB], app: [pgreap-watch], xact_longer_than: 5h}
    action: terminate
  - name: everyone
    match: {app: ["TAG-*"], longer_than: 4h}
    action: terminate
`)
	pol, err := policy.Parse("policy.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	ours := func(sess *activity.Session) bool {
		return strings.HasPrefix(sess.ApplicationName, tag+"-") || sess.PID == watcher.PID
	}
	offline, verdicts := agree(t, pol, pgtest.Shared(t).DSN(db, pgtest.Superuser), nil, ours)
	// And what they agree on is what the rules say.
	got := map[int32][]string{}
	for _, x := range offline {
		got[x.pid] = append(got[x.pid], x.rule)
	}
	check := func(v *pgtest.Victim, rules ...string) {
		t.Helper()
		if !slices.Equal(got[v.PID], rules) {
			t.Errorf("%s: rules %v, want %v", v.App, got[v.PID], rules)
		}
	}
	// slow (query 1h) is due before from-net (xact 90m, same start) and
	// everyone (4h); the waiter is only audited by the dry run (its query,
	// a count, runs: slow wants pg_sleep).
	check(sleeper, "slow")
	check(idle, "forgotten")
	// The root of the pile-up is due from the oldest wait behind it
	// (pileup, 1h) before roots (2h of its own state); mid blocks too, but
	// waits: only roots takes it.
	check(holder, "pileup")
	check(waiter, "watch-waits", "everyone")
	check(mid, "watch-waits", "roots")
	check(tail, "watch-waits", "everyone")
	var oldest time.Time
	for _, x := range verdicts[waiter.PID][:1] {
		oldest = x.Session.WaitStart
	}
	if vs := verdicts[holder.PID]; len(vs) != 1 || oldest.IsZero() || !vs[0].Due.Equal(oldest.Add(time.Hour)) {
		t.Errorf("the root: %+v, want pileup due 1h after the oldest wait (%v)", vs, oldest)
	}
	check(other, "other-db", "everyone")
	check(kept)
	check(watcher, "watchers")
	if vs := verdicts[watcher.PID]; len(vs) != 1 || vs[0].Outcome != "protected" || !strings.Contains(vs[0].Detail, "a pgreap watch session") {
		t.Errorf("the watch's session: %+v, want protected as a pgreap watch session", vs)
	}
	if vs := verdicts[kept.PID]; len(vs) != 1 || vs[0].Outcome != "protected" || !strings.Contains(vs[0].Detail, "protect: apps") {
		t.Errorf("the protected session: %+v, want protected by protect: apps", vs)
	}
}

// agree runs the daemon's session on the server (dsn, behind poolers if
// any) until it has armed, writes its snapshot as ls -o json writes it,
// reads it back and gives it to Test: both must decide the same rules,
// sessions and instants for the sessions ours keeps. It returns --test's
// decisions and verdicts.
func agree(t *testing.T, pol *policy.Policy, dsn string, poolers []*pooler.Pooler, ours func(*activity.Session) bool) ([]decision, map[int32][]Verdict) {
	t.Helper()
	ctx := pgtest.Context(t)
	// The daemon: its session leads, takes its snapshot, arms.
	tg := &target{name: pgtest.Tag(t), log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: NewMetrics(),
		clock: RealClock{}, now: time.Now, done: map[key]bool{}, poolers: poolers}
	tg.state.Store(Connecting)
	s := tg.newSession(pgtest.Connect(t, dsn), pol)
	t.Cleanup(s.closeAdmins)
	if err := s.tick(ctx); err != nil {
		t.Fatal(err)
	}
	s.arm(s.snap, 0) // again without the clocks' offset: dues by the server's clock
	var daemon []decision
	for _, a := range s.armed {
		if ours(&a.session) {
			daemon = append(daemon, decision{a.session.PID, s.rules[a.rule].Name, a.due.Add(-margin)})
		}
	}

	// --test on the same snapshot as ls -o json writes it.
	rows := make([]output.Row, len(s.snap.Sessions))
	for i := range s.snap.Sessions {
		rows[i] = output.Row{Session: s.snap.Sessions[i]}
	}
	var buf bytes.Buffer
	opt := output.Options{Now: s.snap.Taken, QueryID: s.snap.HasQueryID(), Pooler: len(poolers) > 0}
	if err := output.WriteRows(&buf, output.JSON, rows, opt); err != nil {
		t.Fatal(err)
	}
	taken, _ := json.Marshal(s.snap.Taken)
	file := fmt.Sprintf(`{"taken_at": %s, "sessions": %s}`, taken, buf.Bytes())
	snap, err := output.ReadSnapshot([]byte(file), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var offline []decision
	verdicts := map[int32][]Verdict{}
	for _, v := range Test(pol, snap, false) {
		if ours(&v.Session) {
			verdicts[v.Session.PID] = append(verdicts[v.Session.PID], v)
			if v.Rule != "" {
				offline = append(offline, decision{v.Session.PID, v.Rule, v.Due})
			}
		}
	}
	sortDecisions := func(ds []decision) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.String())
		}
		slices.Sort(out)
		return out
	}
	d, o := sortDecisions(daemon), sortDecisions(offline)
	if !slices.Equal(d, o) {
		t.Fatalf("the daemon and --test disagree:\ndaemon:\n  %s\n--test:\n  %s", strings.Join(d, "\n  "), strings.Join(o, "\n  "))
	}
	return offline, verdicts
}

// Behind a pooler, both judge a server connection by the client it
// serves (the "pooler" object of ls -o json): a rule on the client's
// address (127.0.0.1, to the pooler) matches the backend, whose own
// client_addr is none (the pooler reaches the server on its socket); one
// on a user the client is not does not.
func TestOfflinePooledAsTheDaemon(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a := connect(appA)
	pid := pgtest.BackendPID(t, a)
	done := make(chan error, 1)
	go func() { _, err := a.Exec(ctx, "SELECT pg_catalog.pg_sleep(600)"); done <- err }()
	t.Cleanup(func() {
		if _, err := pgtest.Admin(t).Exec(context.Background(), "SELECT pg_catalog.pg_cancel_backend($1)", pid); err == nil {
			<-done
		}
	})
	pgtest.Eventually(t, "A's query running", func() (bool, error) {
		var n int
		err := pgtest.Admin(t).QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'", pid).Scan(&n)
		return n == 1, err
	})
	poolers, err := pooler.ParseAll([]string{b.AdminDSN(b.StatsUser)})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("policy.yaml", []byte(strings.NewReplacer("APP", appA, "DB", db).Replace(`
targets: [{name: main, dsn: "host=/nonexistent"}]
rules:
  - name: by-client-addr
    match: {db: [DB], client: [127.0.0.1], state: [active], longer_than: 30m}
    action: cancel
  - name: by-client
    match: {db: [DB], app: [APP], state: [active], longer_than: 1h}
    action: cancel
  - name: by-client-user
    match: {db: [DB], user: [nobody], longer_than: 1s}
    action: cancel
`)))
	if err != nil {
		t.Fatal(err)
	}
	offline, verdicts := agree(t, pol, pgtest.Shared(t).DSN(db, pgtest.Superuser), poolers,
		func(s *activity.Session) bool { return s.PID == pid })
	if len(offline) != 1 || offline[0].rule != "by-client-addr" || verdicts[pid][0].Session.Pooler == nil {
		t.Fatalf("--test: %v (%+v), want by-client-addr on the pooled client", offline, verdicts[pid])
	}
}
