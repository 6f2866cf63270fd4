package action_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

// TestClientOracle judges every outcome pgreap reports by what the named
// client saw, which the server's views cannot tell: which of its queries a
// cancel ended, whether its transaction committed.
//
// Four workloads run at once, as fast as they can:
//   - qloop: autocommit queries back to back, 30 ms each;
//   - bloop: the same query inside BEGIN ... COMMIT;
//   - xcycle: BEGIN; INSERT a row; 20 ms idle in transaction; COMMIT; 20 ms;
//   - rcycle: the same with a SELECT (a read-only transaction).
//
// Every client records, per statement, when it sent it, when the answer
// came, and the SQLSTATE it got (57014 for a cancel, 57P01 or a lost
// connection for a terminate); the rows of the committed transactions are in
// the ledger. pgreap cancels the queries of qloop and bloop by selector and
// by pid, terminates the sessions of xcycle and rcycle idle in transaction
// by selector, and sessions of every kind by pid. The oracle:
//   - cancelled ⇔ that query got 57014, and every 57014 is some result's;
//   - terminated ⇔ that session died; when the guard pinned its state
//     (idle in transaction after statement T), it died there: T's COMMIT
//     failed and, for a write, T's row is not in the ledger, unless the
//     result says the transaction committed first, which the ledger must
//     then show;
//   - changed ⇔ nothing happened to that query or transaction;
//   - a result that says what may have happened ("may have") is counted,
//     not judged.
//
// What no statement can prevent is the kernel's kill() by pid: between
// pgreap's last read of a session and the signal's arrival, the session can
// finish its statement and begin the next. A mismatch is forgiven only when
// the client's own clock shows that its session did just that inside that
// window; any other is a failure. Both are counted.
//
// PGREAP_ORACLE_ACTIONS sets how many results to judge (300 by default;
// `make soak` runs 5,000).
func TestClientOracle(t *testing.T) {
	t.Parallel()
	want := 300
	timeout := 3 * time.Minute
	if s := os.Getenv("PGREAP_ORACLE_ACTIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("PGREAP_ORACLE_ACTIONS=%q", s)
		}
		want, timeout = n, time.Duration(n)*100*time.Millisecond+2*time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{MaxConnections: 200})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	dsn := c.DSN("postgres", pgtest.Superuser)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE TABLE ledger (tag text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}

	var stopped atomic.Bool
	var wg sync.WaitGroup
	var clients []*client
	// start runs n clients of a workload: each connects, runs the body
	// again and again while it says the session lives on, and connects
	// again when it does not.
	start := func(kind string, n int, body func(cl *client, cn *pgx.Conn, tag string) bool) {
		for i := range n {
			cl := &client{app: fmt.Sprintf("%s-%d", kind, i)}
			clients = append(clients, cl)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for conns := 0; !stopped.Load() && ctx.Err() == nil; conns++ {
					cn := cl.connect(ctx, dsn, fmt.Sprintf("s%c%d.%d", kind[0], i, conns))
					if cn == nil {
						continue
					}
					alive := true
					for k := 0; alive && !stopped.Load(); k++ {
						alive = body(cl, cn, fmt.Sprintf("%c%d.%d.%d", kind[0], i, conns, k))
					}
					if alive {
						// The last round may have ended it while it sat
						// idle: the client learns so by asking.
						cl.exec(ctx, cn, fmt.Sprintf("f%c%d.%d", kind[0], i, conns), "final", "SELECT 1")
					}
					cn.Close(context.Background())
				}
			}()
		}
	}
	start("qloop", 50, func(cl *client, cn *pgx.Conn, tag string) bool {
		return cl.exec(ctx, cn, tag, "query", "SELECT pg_catalog.pg_sleep(0.03), '"+tag+"'")
	})
	start("bloop", 10, func(cl *client, cn *pgx.Conn, tag string) bool {
		if !cl.exec(ctx, cn, tag, "begin", "BEGIN") {
			return false
		}
		alive := cl.exec(ctx, cn, tag, "query", "SELECT pg_catalog.pg_sleep(0.03), '"+tag+"'")
		if alive && cl.last().code == "" {
			return cl.exec(ctx, cn, tag, "commit", "COMMIT")
		}
		return alive && cl.exec(ctx, cn, tag, "rollback", "ROLLBACK")
	})
	cycle := func(statement func(tag string) string) func(cl *client, cn *pgx.Conn, tag string) bool {
		return func(cl *client, cn *pgx.Conn, tag string) bool {
			if !cl.exec(ctx, cn, tag, "begin", "BEGIN") || !cl.exec(ctx, cn, tag, "work", statement(tag)) {
				return false
			}
			think(ctx, 20*time.Millisecond) // idle in transaction
			if !cl.exec(ctx, cn, tag, "commit", "COMMIT") {
				return false
			}
			think(ctx, 20*time.Millisecond)
			return true
		}
	}
	start("xcycle", 20, cycle(func(tag string) string { return "INSERT INTO ledger VALUES ('" + tag + "')" }))
	start("rcycle", 20, cycle(func(tag string) string { return "SELECT '" + tag + "'" }))

	reaper := pgtest.PgreapDSN(t, dsn)
	sel := func(spec selector.Spec) *selector.Selector {
		s, err := selector.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// A few sessions of an application, by pid, as someone who read ls
	// would name them.
	somePIDs := func(app string, n int) []int32 {
		rows, err := reaper.Query(ctx, `SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name LIKE $1`, app)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		rand.Shuffle(len(pids), func(i, j int) { pids[i], pids[j] = pids[j], pids[i] })
		return pids[:min(n, len(pids))]
	}
	var results []action.Result
	for round := 0; len(results) < want; round++ {
		reqs := []action.Request{
			{Action: action.Cancel, Selector: sel(selector.Spec{App: []string{"qloop-*"}})},
			{Action: action.Cancel, Selector: sel(selector.Spec{App: []string{"bloop-*"}})},
			{Action: action.Terminate, Selector: sel(selector.Spec{App: []string{"xcycle-*"}, State: []string{"idle in transaction"}})},
			{Action: action.Terminate, Selector: sel(selector.Spec{App: []string{"rcycle-*"}, State: []string{"idle in transaction"}})},
			{Action: action.Cancel, PIDs: somePIDs("qloop-%", 5)},
		}
		if round%3 == 0 {
			reqs = append(reqs,
				action.Request{Action: action.Terminate, PIDs: somePIDs("qloop-%", 2)},
				action.Request{Action: action.Terminate, PIDs: somePIDs("_cycle-%", 2)},
				action.Request{Action: action.Cancel, PIDs: somePIDs("bloop-%", 2)})
		}
		for _, req := range reqs {
			if len(req.PIDs) == 0 && req.Selector == nil {
				continue
			}
			plan, err := action.Choose(ctx, reaper, req)
			if err != nil {
				t.Fatalf("choose after %d results: %v", len(results), err)
			}
			res, err := action.Execute(ctx, reaper, plan, action.Options{Wait: 5 * time.Second})
			if err != nil {
				t.Fatalf("execute after %d results: %v", len(results), err)
			}
			results = append(results, res...)
		}
	}
	stopped.Store(true)
	wg.Wait()
	rows, err := admin.Query(ctx, "SELECT tag FROM ledger")
	if err != nil {
		t.Fatal(err)
	}
	tags, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	committed := map[string]bool{}
	for _, tag := range tags {
		committed[tag] = true
	}
	var stalls []time.Duration
	for i := range results {
		read, sent, _ := action.SignalWindow(&results[i])
		if !read.IsZero() && !sent.IsZero() {
			stalls = append(stalls, sent.Sub(read))
		}
	}
	slices.Sort(stalls)
	if n := len(stalls); n > 0 {
		t.Logf("from the read of a session to its signal: p50 %v, p90 %v, p99 %v, p99.9 %v, max %v",
			stalls[n/2], stalls[n*9/10], stalls[n*99/100], stalls[n*999/1000], stalls[n-1])
	}
	o := newOracle(clients, committed)
	o.judge(t, results)
}

// client is one workload connection after another, as its client saw them.
type client struct {
	app      string
	sessions []*clientSession
}

type clientSession struct {
	pid    int32
	start  time.Time
	events []clientEvent
}

// clientEvent is one statement: when it was sent and answered by the
// client's clock, and what the client got: "" (success), a SQLSTATE, or
// "lost" (the connection closed without one).
type clientEvent struct {
	tag, step, code string
	sent, done      time.Time
}

// connect opens the client's next session and learns its backend_start,
// with a statement that pgreap may cancel like any other ("query" step of
// tag s<client>.<n>); the session is given up if it is.
func (cl *client) connect(ctx context.Context, dsn string, tag string) *pgx.Conn {
	cn, err := pgx.Connect(ctx, dsn+" application_name="+cl.app)
	if err != nil {
		return nil
	}
	s := &clientSession{pid: int32(cn.PgConn().PID())}
	cl.sessions = append(cl.sessions, s)
	e := clientEvent{tag: tag, step: "query", sent: time.Now()}
	err = cn.QueryRow(ctx, "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid() AND '"+tag+"' IS NOT NULL").Scan(&s.start)
	e.done, e.code = time.Now(), pgtest.SQLState(err)
	s.events = append(s.events, e)
	if err != nil {
		cn.Close(context.Background())
		return nil
	}
	return cn
}

func (cl *client) last() *clientEvent {
	s := cl.sessions[len(cl.sessions)-1]
	return &s.events[len(s.events)-1]
}

// exec runs one statement and records what the client got; it reports
// whether the session is still there.
func (cl *client) exec(ctx context.Context, cn *pgx.Conn, tag, step, sql string) bool {
	sent := time.Now()
	_, err := cn.Exec(ctx, sql)
	e := clientEvent{tag: tag, step: step, sent: sent, done: time.Now()}
	if err != nil {
		e.code = pgtest.SQLState(err)
		switch {
		case e.code == "" && cn.IsClosed():
			e.code = "lost"
		case e.code == "":
			e.code = "error: " + err.Error()
		}
	}
	s := cl.sessions[len(cl.sessions)-1]
	s.events = append(s.events, e)
	return !cn.IsClosed()
}

func think(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

var tagRE = regexp.MustCompile(`'([qbxr]\d+\.\d+\.\d+|s[qbxr]\d+\.\d+)'`)

func tagOf(query string) string {
	if m := tagRE.FindStringSubmatch(query); m != nil {
		return m[1]
	}
	return ""
}

func dies(code string) bool { return code == "57P01" || code == "lost" }

// slack covers the clock's granularity between the client and the server
// (the same clock, read by two processes).
const slack = time.Millisecond

type sessionKey struct {
	pid   int32
	start int64
}

type oracle struct {
	sessions  map[sessionKey]*clientSession
	events    map[string][]*clientEvent // by tag: a statement's steps, in order
	session   map[string]*clientSession // by tag
	committed map[string]bool
}

func newOracle(clients []*client, committed map[string]bool) *oracle {
	o := &oracle{sessions: map[sessionKey]*clientSession{}, events: map[string][]*clientEvent{},
		session: map[string]*clientSession{}, committed: committed}
	for _, cl := range clients {
		for _, s := range cl.sessions {
			o.sessions[sessionKey{s.pid, s.start.UnixMicro()}] = s
			for i := range s.events {
				e := &s.events[i]
				o.events[e.tag] = append(o.events[e.tag], e)
				o.session[e.tag] = s
			}
		}
	}
	return o
}

// step is the statement of tag at step, or nil.
func (o *oracle) step(tag, step string) *clientEvent {
	for _, e := range o.events[tag] {
		if e.step == step {
			return e
		}
	}
	return nil
}

// overlaps: the statement e, from its sending to its answer by the
// client's clock, overlapped the moments between pgreap's read of the
// session and the return of its signal call, where the kernel's kill() by
// pid may find the session one statement further than pgreap read it.
func overlaps(r *action.Result, e *clientEvent) bool {
	read, _, returned := action.SignalWindow(r)
	return e != nil && !read.IsZero() && !e.done.Before(read.Add(-slack)) && !e.sent.After(returned.Add(slack))
}

// completedAround: the query e completed, though a cancel was sent as it
// ran: forgiven when its answer reached the client within ranOn of the
// signal's return (a query past its last check for interrupts completes,
// and the cancel is ignored when the session is idle).
func completedAround(r *action.Result, e *clientEvent) bool {
	const ranOn = 20 * time.Millisecond
	_, _, returned := action.SignalWindow(r)
	return overlaps(r, e) && !e.done.After(returned.Add(ranOn))
}

// judge holds every result against what the clients saw.
func (o *oracle) judge(t *testing.T, results []action.Result) {
	t.Helper()
	for _, s := range o.sessions {
		for _, e := range s.events {
			if e.code != "" && e.code != "57014" && !dies(e.code) && e.code != "25P02" {
				t.Errorf("%s %s: unexpected %s", e.tag, e.step, e.code)
			}
		}
	}
	counts := map[action.Outcome]int{}
	wrong, raced, flagged := 0, 0, 0
	// miss is a result the clients contradict; raced says whether the
	// clients' clocks show it raced the kill.
	miss := func(r *action.Result, race bool, format string, args ...any) {
		what := fmt.Sprintf(format, args...)
		if race {
			raced++
			t.Logf("raced the kill: %s %d (%s %s): %s", r.Action, r.PID, r.Outcome, r.Detail, what)
			return
		}
		wrong++
		if wrong <= 20 {
			read, sent, returned := action.SignalWindow(r)
			t.Errorf("%s %d (%s, %s): %s [read %s, signal %s-%s]", r.Action, r.PID, r.Outcome, r.Detail, what,
				clock(read), clock(sent), clock(returned))
		}
	}
	cancelled := map[string]bool{}
	terminated := map[sessionKey]bool{}
	mayHave := map[sessionKey]bool{}
	for i := range results {
		r := &results[i]
		counts[r.Outcome]++
		tag := tagOf(r.Query)
		k := sessionKey{r.PID, r.BackendStart.UnixMicro()}
		s := o.sessions[k]
		if strings.Contains(r.Detail, "may have") {
			flagged++
			mayHave[k] = true
			if r.Outcome == action.Terminated {
				terminated[k] = true
			}
			continue
		}
		switch r.Outcome {
		case action.Cancelled:
			cancelled[tag] = true
			q := o.step(tag, "query")
			switch {
			case q == nil:
				miss(r, false, "reported cancelled, but no client ran %q", r.Query)
			case q.code != "57014":
				miss(r, completedAround(r, q), "reported cancelled, but query %s got %q [sent %s, answered %s]", tag, q.code, clock(q.sent), clock(q.done))
			}
		case action.Terminated:
			terminated[k] = true
			if s == nil {
				miss(r, false, "no client had this session")
				continue
			}
			died := s.death()
			switch {
			case died == nil:
				miss(r, false, "reported terminated, but its client saw it live on")
			case !r.Guard.Query || tag == "" || (tag[0] != 'x' && tag[0] != 'r'):
				// Named by pid: any state will do.
			case strings.Contains(r.Detail, "committed"):
				if !o.committed[tag] {
					miss(r, false, "says its transaction %s committed, but the ledger has no row of it", tag)
				}
			case died.tag != tag || died.step != "commit" || o.committed[tag]:
				// Its COMMIT ran as the signal went out.
				c := o.step(tag, "commit")
				miss(r, overlaps(r, c), "pinned idle in transaction after %s, but it died at %s %s (committed: %v)", tag, died.tag, died.step, o.committed[tag])
			}
		case action.Changed:
			q := o.step(tag, "query")
			switch {
			case r.Action == action.Cancel && q != nil && q.code == "57014" && !cancelledByAnother(results, i, tag):
				miss(r, false, "reported changed, but query %s got 57014", tag)
			case r.Action == action.Terminate && s != nil && s.death() != nil && s.death().tag == tag:
				miss(r, false, "reported changed, but it died in transaction %s", tag)
			}
		case action.Survived, action.Denied:
			miss(r, false, "unexpected outcome")
		}
	}
	// Every effect the clients saw is some result's.
	for k, s := range o.sessions {
		for i := range s.events {
			e := &s.events[i]
			switch {
			case e.code == "57014" && !cancelled[e.tag] && !mayHave[k]:
				// The cancel meant for the statement before may have
				// come after this one began.
				raceable := func(r *action.Result) bool {
					return sessionKey{r.PID, r.BackendStart.UnixMicro()} == k && overlaps(r, e)
				}
				if i > 0 && anyResult(results, raceable) {
					raced++
					t.Logf("raced the kill: query %s (pid %d) got the cancel meant for the one before", e.tag, k.pid)
					continue
				}
				wrong++
				t.Errorf("query %s (pid %d) got 57014, but no result says cancelled", e.tag, k.pid)
			case dies(e.code) && !terminated[k]:
				wrong++
				t.Errorf("session %d died at %s %s (%s), but no result says terminated", k.pid, e.tag, e.step, e.code)
			}
		}
	}
	judged := counts[action.Cancelled] + counts[action.Terminated] + counts[action.Changed]
	t.Logf("%d results (%v): %d judged against the clients: %d wrong, %d raced the kill, %d said what may have happened",
		len(results), counts, judged, wrong, raced, flagged)
	// Measured on a saturated 2-core machine: under 1% (docs/safety.md).
	if (raced+flagged)*20 > judged {
		t.Errorf("%d raced and %d uncertain of %d: more than 5%%", raced, flagged, judged)
	}
}

func anyResult(results []action.Result, f func(*action.Result) bool) bool {
	for i := range results {
		if f(&results[i]) {
			return true
		}
	}
	return false
}

func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format("15:04:05.000000")
}

// death is the statement at which the session's client saw it end, or nil.
func (s *clientSession) death() *clientEvent {
	for i := range s.events {
		if dies(s.events[i].code) {
			return &s.events[i]
		}
	}
	return nil
}

// cancelledByAnother: another result (another round, before or after)
// cancelled the same query, which a changed result does not contradict:
// an idle session still shows the text of the query a cancel ended.
func cancelledByAnother(results []action.Result, i int, tag string) bool {
	for k, r := range results {
		if k != i && r.Outcome == action.Cancelled && tagOf(r.Query) == tag {
			return true
		}
	}
	return false
}
