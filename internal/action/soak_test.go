package action_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
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

// TestChurnSoak: clients connect and disconnect all the time (their pids
// are reused), while pgreap cancels the queries of some tagged victims and
// terminates others, again and again. The oracle is the server's log,
// where every backend says why it ended or why its statement did: no
// "terminating connection due to administrator command" and no "canceling
// statement due to user request" for any session but a victim's, and one
// for each action pgreap reported. PGREAP_SOAK_ACTIONS sets how many
// actions (300 by default; docs/reliability.md has the long run).
func TestChurnSoak(t *testing.T) {
	t.Parallel()
	want := 300
	timeout := 2 * time.Minute
	if s := os.Getenv("PGREAP_SOAK_ACTIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("PGREAP_SOAK_ACTIONS=%q", s)
		}
		want, timeout = n, time.Duration(n)*50*time.Millisecond+time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{MaxConnections: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })

	work, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var churned atomic.Int64
	loop := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for work.Err() == nil {
				f()
			}
		}()
	}
	connect := func(app string) *pgx.Conn {
		cn, err := pgx.Connect(work, c.DSN("postgres", pgtest.Superuser)+" application_name="+app)
		if err != nil {
			return nil
		}
		return cn
	}
	// Churn: a connection per short query, as pgbench -C does.
	for i := 0; i < 4; i++ {
		loop(func() {
			if cn := connect(fmt.Sprintf("churn-%d", i)); cn != nil {
				_, _ = cn.Exec(work, "SELECT pg_catalog.pg_sleep(0.002)")
				cn.Close(context.Background())
				churned.Add(1)
			}
		})
	}
	// Victims: running queries to cancel, idle sessions to terminate; a
	// terminated one connects again.
	for i := 0; i < 4; i++ {
		loop(func() {
			cn := connect(fmt.Sprintf("victim-run-%d", i))
			for cn != nil && work.Err() == nil {
				if _, err := cn.Exec(work, "SELECT pg_catalog.pg_sleep(5)"); err != nil && cn.IsClosed() {
					break
				}
			}
			if cn != nil {
				cn.Close(context.Background())
			}
		})
		loop(func() {
			cn := connect(fmt.Sprintf("victim-idle-%d", i))
			for cn != nil && work.Err() == nil && cn.Ping(work) == nil {
				select { // idle, looked at every 50 ms
				case <-work.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
			if cn != nil {
				cn.Close(context.Background())
			}
		})
	}

	reaper := pgtest.PgreapDSN(t, c.DSN("postgres", pgtest.Superuser))
	sel := func(app string) *selector.Selector {
		s, err := selector.Parse(selector.Spec{App: []string{app}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	outcomes := map[action.Outcome]int{}
	// Results that say the signal may have reached the session one
	// statement later than pgreap read it: the log may or may not have it.
	mayHave := map[action.Kind]int{}
	acted := 0
	for acted < want {
		for _, req := range []action.Request{
			{Action: action.Cancel, Selector: sel("victim-run-*")},
			{Action: action.Terminate, Selector: sel("victim-idle-*")},
		} {
			plan, err := action.Choose(ctx, reaper, req)
			if err != nil {
				t.Fatalf("choose after %d actions: %v", acted, err)
			}
			results, err := action.Execute(ctx, reaper, plan, action.Options{Wait: 5 * time.Second})
			if err != nil {
				t.Fatalf("execute after %d actions: %v", acted, err)
			}
			for _, r := range results {
				outcomes[r.Outcome]++
				if strings.Contains(r.Detail, "may have") {
					mayHave[r.Action]++
				}
				if r.Outcome == action.Cancelled || r.Outcome == action.Terminated {
					acted++
				}
			}
		}
	}
	// What the actions made the server log is in the file by now: a
	// backend logs why before it is gone, or before its query has ended.
	// Stopping the clients cancels their statements (pgx sends a cancel
	// request): not pgreap's doing, so the oracle reads up to here.
	fi, err := os.Stat(c.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	stop()
	wg.Wait()

	// The oracle.
	file, err := os.Open(c.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	f := io.LimitReader(file, fi.Size())
	line := regexp.MustCompile(`app=(\S*) (?:FATAL|ERROR):  (terminating connection due to administrator command|canceling statement due to user request)`)
	logged := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if !strings.HasPrefix(m[1], "victim-") {
			t.Errorf("a session that was not a victim was ended: %s", sc.Text())
		}
		logged[m[2]]++
	}
	t.Logf("%d actions (%v), %d churned connections; the server logged %d terminations and %d cancels",
		acted, outcomes, churned.Load(), logged["terminating connection due to administrator command"], logged["canceling statement due to user request"])
	for _, c := range []struct {
		kind action.Kind
		line string
		want int
	}{
		{action.Terminate, "terminating connection due to administrator command", outcomes[action.Terminated]},
		{action.Cancel, "canceling statement due to user request", outcomes[action.Cancelled]},
	} {
		if got := logged[c.line]; got < c.want || got > c.want+mayHave[c.kind] {
			t.Errorf("the log does not match the outcomes: %d %q, want %d (and up to %d more that may have happened): %v",
				got, c.line, c.want, mayHave[c.kind], outcomes)
		}
	}
	for _, o := range []action.Outcome{action.Survived, action.Denied} {
		if outcomes[o] > 0 {
			t.Errorf("%d %s", outcomes[o], o)
		}
	}
}
