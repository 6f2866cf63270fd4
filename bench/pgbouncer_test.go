package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/pooler"
)

// The application behind the pooler: poolClients loops, each running
// poolQuery on a pgxpool of poolClients connections through PgBouncer in
// transaction mode.
const (
	poolClients = 8
	poolQuery   = "SELECT pg_catalog.pg_sleep(0.02)"
	drainHold   = 5 * time.Second
)

// BenchmarkDrainPgBouncer drains a database whose application reaches it
// through PgBouncer (transaction mode), holds it drainHold, and undrains
// it, while the application runs: poolClients goroutines of a pgxpool, each
// running a 20 ms query in a loop and recording every error and every
// query's latency. Per iteration, each on a database of its own and in the
// same cluster and pooler:
//
//	pgbouncer  `pgreap drain DB --pgbouncer ADMIN`, hold, `pgreap undrain DB`
//	direct     `pgreap drain DB` (the pooler not named), hold, `pgreap undrain DB`
//	pause      a bare `PAUSE DB` on an admin connection opened beforehand,
//	           then RESUME: the floor of time to paused
//
// The pooler runs with PgBouncer's defaults for server_login_retry (15 s)
// and query_wait_timeout (120 s), as production ones do.
//
// Time to paused is measured from outside the same way for both: a poller
// reads SHOW DATABASES and SHOW SERVERS every millisecond, and the database
// is paused when it is marked paused and has no server connection left.
// For pgreap it runs from the drain process's start (so it includes the
// process, its connections and its durable record); for the floor, from
// sending PAUSE on a connection already open.
//
// Metrics, per variant:
//
//	errors/<v>       client errors during the run (target for pgbouncer: 0)
//	queries/<v>      queries completed
//	ms-maxwait/<v>   the longest query, as the client saw it
//	ms-topause/<v>   time to paused (pgbouncer and pause)
//	ratio-topause    ms-topause/pgbouncer / ms-topause/pause (target: at most 1.2)
func BenchmarkDrainPgBouncer(b *testing.B) {
	bin := buildPgreap(b)
	c := startCluster(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	pgb, err := cluster.StartPgBouncer(ctx, c, cluster.PgBouncerOptions{
		PoolMode: "transaction",
		Settings: map[string]string{"server_login_retry": "15", "query_wait_timeout": "120"},
	})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pgb.Stop() })
	env := append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME"), "PGREAP_STATE_DIR=" + b.TempDir()}, c.Env()...)
	admin := pgb.AdminDSN(cluster.AdminUser)

	sum := map[string][]float64{}
	add := func(k string, v float64) { sum[k] = append(sum[k], v) }
	i := 0
	for b.Loop() {
		for _, variant := range []string{"pgbouncer", "direct", "pause"} {
			db := fmt.Sprintf("pgb_%d_%s", i, variant)
			r := pgbRun(b, c, pgb, bin, env, admin, db, variant)
			b.Logf("%d %-9s errors %d (%v) queries %d maxwait %v topause %v", i, variant, r.errors, r.codes, r.queries, r.maxWait.Round(time.Millisecond), r.toPause.Round(100*time.Microsecond))
			add("errors/"+variant, float64(r.errors))
			add("queries/"+variant, float64(r.queries))
			add("ms-maxwait/"+variant, ms(r.maxWait))
			if variant != "direct" {
				add("ms-topause/"+variant, ms(r.toPause))
			}
		}
		i++
	}
	for k, v := range sum {
		b.ReportMetric(mean(v), k)
	}
	b.ReportMetric(mean(sum["ms-topause/pgbouncer"])/mean(sum["ms-topause/pause"]), "ratio-topause")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mean(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

type pgbResult struct {
	errors, queries int
	codes           map[string]int
	maxWait         time.Duration
	toPause         time.Duration
}

// pgbRun is one variant on a fresh database: the application runs 1 s,
// then the drain (or PAUSE), the hold, the undrain (or RESUME), and 2 s
// more after every client ran a query again.
func pgbRun(b *testing.B, c *pgtest.Cluster, pgb *cluster.PgBouncer, bin string, env []string, admin, db, variant string) pgbResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	super, err := pgconn.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	defer super.Close(ctx)
	if _, err := super.Exec(ctx, "CREATE DATABASE "+db).ReadAll(); err != nil {
		b.Fatal(err)
	}
	app := startApp(b, ctx, pgb.DSN(db, cluster.AdminUser))
	app.wait(b, time.Second)
	p, err := pooler.Parse(admin)
	if err != nil {
		b.Fatal(err)
	}
	a, err := p.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	r := pgbResult{}
	switch variant {
	case "pause":
		pauser, err := p.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		watch := watchPaused(ctx, a, db)
		start := time.Now()
		if err := pauser.Pause(ctx, db); err != nil {
			b.Fatal(err)
		}
		r.toPause = (<-watch).Sub(start)
		time.Sleep(drainHold) // the hold is the scenario, not a wait for a condition
		if err := pauser.Resume(ctx, db); err != nil {
			b.Fatal(err)
		}
		pauser.Close()
	default:
		args := []string{"drain", db}
		if variant == "pgbouncer" {
			args = append(args, "--pgbouncer", admin)
		}
		var watch <-chan time.Time
		if variant == "pgbouncer" {
			watch = watchPaused(ctx, a, db)
		}
		start := time.Now()
		pgreapRun(b, bin, env, args...)
		if watch != nil {
			r.toPause = (<-watch).Sub(start)
		}
		time.Sleep(drainHold)
		pgreapRun(b, bin, env, "undrain", db)
	}
	app.wait(b, 2*time.Second)
	r.errors, r.queries, r.codes, r.maxWait = app.stop()
	return r
}

// watchPaused reports the instant db is paused in the pooler with no server
// connection left, polling every millisecond.
func watchPaused(ctx context.Context, a *pooler.Admin, db string) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			dbs, err1 := a.Databases(ctx)
			servers, err2 := a.Servers(ctx)
			if err1 == nil && err2 == nil &&
				slices.ContainsFunc(dbs, func(d pooler.Database) bool { return d.Name == db && d.Paused }) &&
				!slices.ContainsFunc(servers, func(s pooler.Server) bool { return s.Database == db }) {
				ch <- time.Now()
				return
			}
			time.Sleep(time.Millisecond)
		}
		ch <- time.Time{}
	}()
	return ch
}

func pgreapRun(b *testing.B, bin string, env []string, args ...string) {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("pgreap %v: %v\n%s", args, err, out)
	}
}

// app is the application: clients looping on a pool.
type app struct {
	pool   *pgxpool.Pool
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
	waits  []time.Duration
	ran    []int // queries per client
}

func startApp(b *testing.B, ctx context.Context, dsn string) *app {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(dsn + fmt.Sprintf(" default_query_exec_mode=exec application_name=shop-app pool_max_conns=%d pool_min_conns=%d", poolClients, poolClients))
	if err != nil {
		b.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	a := &app{pool: pool, cancel: cancel, ran: make([]int, poolClients)}
	for i := range poolClients {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for actx.Err() == nil {
				t := time.Now()
				_, err := pool.Exec(actx, poolQuery)
				d := time.Since(t)
				if actx.Err() != nil {
					return
				}
				a.mu.Lock()
				if err != nil {
					a.errs = append(a.errs, err)
					a.mu.Unlock()
					// as an application retries a failed request: not at once
					time.Sleep(10 * time.Millisecond)
					continue
				} else {
					a.waits = append(a.waits, d)
					a.ran[i]++
				}
				a.mu.Unlock()
			}
		}()
	}
	return a
}

// wait lets the application run for d, then until every client has run a
// query since.
func (a *app) wait(b *testing.B, d time.Duration) {
	b.Helper()
	a.mu.Lock()
	before := slices.Clone(a.ran)
	a.mu.Unlock()
	time.Sleep(d)
	deadline := time.Now().Add(time.Minute)
	for {
		a.mu.Lock()
		all := true
		for i := range a.ran {
			all = all && a.ran[i] > before[i]
		}
		a.mu.Unlock()
		if all {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("the application ran no query for a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *app) stop() (errs, queries int, codes map[string]int, maxWait time.Duration) {
	a.cancel()
	a.wg.Wait()
	a.pool.Close()
	codes = map[string]int{}
	for _, err := range a.errs {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			codes[pe.Code]++
		} else {
			codes["other"]++
		}
	}
	sort.Slice(a.waits, func(i, j int) bool { return a.waits[i] < a.waits[j] })
	if len(a.waits) > 0 {
		maxWait = a.waits[len(a.waits)-1]
	}
	return len(a.errs), len(a.waits), codes, maxWait
}
