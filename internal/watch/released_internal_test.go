package watch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/policy"
)

// releasedCounter counts the released lookups a connection sends.
type releasedCounter struct{ n atomic.Int32 }

func (c *releasedCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(data.SQL, "-- pgreap watch: of the sessions that waited behind") {
		c.n.Add(1)
	}
	return ctx
}

func (c *releasedCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A verification that finds several roots of lock waits ended looks up
// the waiters they released in one statement, not one per root: on the
// daemon's one connection, a deadline due meanwhile waits for them (200
// pile-ups: 60 roots of one snapshot, 100 ms). Each root's audit line
// names its own waiters released, none of another root's, and not one
// still waiting.
func TestRecordLooksUpReleasedOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	ctx := pgtest.Context(t)
	type pile struct{ root, waiter *pgtest.Victim }
	piles := make([]pile, 3)
	for i := range piles {
		root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
		root.Exec(fmt.Sprintf("CREATE TABLE t%d (id int)", i))
		root.Exec("BEGIN")
		root.Exec(fmt.Sprintf("LOCK TABLE t%d IN ACCESS EXCLUSIVE MODE", i))
		waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
		waiter.Start(fmt.Sprintf("SELECT count(*) FROM t%d", i))
		waiter.WaitState("active", "Lock")
		piles[i] = pile{root, waiter}
	}
	// The first two roots end their transaction: their waiters take the
	// lock and finish. The third still holds its waiter.
	for _, p := range piles[:2] {
		p.root.Exec("ROLLBACK")
		if err := p.waiter.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	read := func(pid int32) activity.Session {
		t.Helper()
		s := activity.Session{PID: pid}
		if err := pgtest.Admin(t).QueryRow(ctx, "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&s.BackendStart); err != nil {
			t.Fatal(err)
		}
		s.WaitStart = s.BackendStart
		return s
	}
	plan := &action.Plan{}
	f := &inflight{rule: rule{Rule: policy.Rule{Name: "pileup", Action: policy.Cancel}}, plan: plan, behind: map[int32][]*activity.Session{}}
	for _, p := range piles {
		w := read(p.waiter.PID)
		plan.Results = append(plan.Results, action.Result{Session: read(p.root.PID), Action: action.Cancel, Outcome: action.Cancelled})
		f.behind[p.root.PID] = []*activity.Session{&w}
	}
	f.logged = make([]bool, len(plan.Results))

	cfg, err := conn.Config(conn.Params{DSN: pgtest.Shared(t).DSN(db, pgtest.Superuser)})
	if err != nil {
		t.Fatal(err)
	}
	counter := &releasedCounter{}
	cfg.Tracer = counter
	cn, err := conn.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close(context.Background())
	var out bytes.Buffer
	audit, err := OpenAudit("", &out)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{cn: cn, t: &target{name: "t", log: slog.New(slog.DiscardHandler), metrics: NewMetrics(), audit: audit, now: time.Now}}
	s.record(ctx, f)

	if n := counter.n.Load(); n != 1 {
		t.Errorf("%d released lookups for %d roots, want 1", n, len(piles))
	}
	released := map[int32][]int32{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		released[e.PID] = nil
		for _, r := range e.Released {
			if r.WaitedSeconds == nil || *r.WaitedSeconds <= 0 {
				t.Errorf("root %d: released %d waited %v", e.PID, r.PID, r.WaitedSeconds)
			}
			released[e.PID] = append(released[e.PID], r.PID)
		}
	}
	want := map[int32][]int32{piles[0].root.PID: {piles[0].waiter.PID}, piles[1].root.PID: {piles[1].waiter.PID}, piles[2].root.PID: nil}
	if fmt.Sprint(released) != fmt.Sprint(want) {
		t.Errorf("released by root %v, want %v", released, want)
	}
}
