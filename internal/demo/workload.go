package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreap/pgreap/internal/cluster"
)

// The workload's sizes.
const (
	poolSize = 5 // shop-web sessions: the application's connection pool
	clients  = 8 // shop-web's requests in flight, sharing the pool
	queued   = 2 // checkouts waiting on the forgotten transaction's lock
)

// workload is the shop's sessions: each runs in a goroutine of its own
// until stop. Its connections are plain pgx connections, and shop-web's a
// pgxpool, as an application's would be. With a PgBouncer, the web
// application's (shop-web's pool and the checkouts) go through it.
type workload struct {
	c      *cluster.Cluster
	pgb    *cluster.PgBouncer // nil: everyone connects to the server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []*pgx.Conn
	pool   *pgxpool.Pool
	web    requests
}

// requests counts shop-web's requests as the application sees them:
// done, failed, and in flight (waiting for a connection of the pool or
// for the server).
type requests struct {
	mu       sync.Mutex
	ok       int
	failed   int
	codes    map[string]int    // failures by SQLSTATE
	inFlight map[int]time.Time // by request loop: when its request began
	lastOK   time.Time         // when the latest request that succeeded began
	longest  time.Duration     // the longest request that succeeded, since mark
}

// webStats is what the tour says about shop-web's requests.
type webStats struct {
	OK, Failed int
	Codes      map[string]int // failures by SQLSTATE
	Waiting    int            // requests in flight now
	Oldest     time.Duration  // how long the oldest of them has waited
	Longest    time.Duration  // the longest that succeeded since mark
}

func (r *requests) begin(loop int) time.Time {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inFlight == nil {
		r.inFlight = map[int]time.Time{}
	}
	r.inFlight[loop] = now
	return now
}

// failure names a request's failure: the server's SQLSTATE, or
// "connection lost" (a connection the server ended, found dead when the
// request was written on it).
func failure(err error) string {
	var pgErr *pgconn.PgError
	var netErr *net.OpError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code
	case errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection lost"
	}
	return "other"
}

func (r *requests) end(loop int, began time.Time, err error) {
	took := time.Since(began)
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inFlight, loop)
	if err != nil {
		r.failed++
		if r.codes == nil {
			r.codes = map[string]int{}
		}
		r.codes[failure(err)]++
		return
	}
	r.ok++
	r.longest = max(r.longest, took)
	if began.After(r.lastOK) {
		r.lastOK = began
	}
}

// mark starts the count of the longest request anew.
func (r *requests) mark() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.longest = 0
}

func (r *requests) stats() webStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := webStats{OK: r.ok, Failed: r.failed, Codes: maps.Clone(r.codes), Waiting: len(r.inFlight), Longest: r.longest}
	for _, began := range r.inFlight {
		s.Oldest = max(s.Oldest, time.Since(began))
	}
	return s
}

// okSince says whether a request that began after t has succeeded.
func (r *requests) okSince(t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastOK.After(t)
}

// webDSN is the connection string of the web application's sessions:
// through the PgBouncer if there is one. pgx must not prepare named
// statements through it (transaction mode: the next transaction may run on
// another server connection).
func (w *workload) webDSN(app string) string {
	if w.pgb == nil {
		return w.c.DSN("shop", cluster.Superuser) + " application_name=" + app
	}
	return w.pgb.DSN("shop", cluster.Superuser) + " application_name=" + app + " default_query_exec_mode=exec"
}

func (w *workload) connect(ctx context.Context, db, app string, settings ...string) (*pgx.Conn, error) {
	return w.connectDSN(ctx, w.c.DSN(db, cluster.Superuser)+" application_name="+app, settings...)
}

func (w *workload) connectDSN(ctx context.Context, dsn string, settings ...string) (*pgx.Conn, error) {
	for _, s := range settings {
		dsn += " " + s
	}
	cn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.conns = append(w.conns, cn)
	w.mu.Unlock()
	return cn, nil
}

// goRun runs f in a goroutine that stop waits for.
func (w *workload) goRun(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		// A panic here would end the process without stopping the
		// cluster: the session ends instead, and the demo goes on.
		defer func() { _ = recover() }()
		f()
	}()
}

// stop ends every session of the workload and waits for its goroutines.
func (w *workload) stop() {
	if w == nil {
		return
	}
	w.cancel()
	w.wg.Wait()
	if w.pool != nil {
		w.pool.Close()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, cn := range w.conns {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = cn.Close(ctx)
		cancel()
	}
}

// startWorkload creates the shop and starts its sessions, and returns once
// they are all in place (the lock queue, the report's workers).
func startWorkload(ctx context.Context, c *cluster.Cluster, pgb *cluster.PgBouncer) (*workload, error) {
	wctx, cancel := context.WithCancel(ctx)
	w := &workload{c: c, pgb: pgb, ctx: wctx, cancel: cancel}
	// Not one of the shop's sessions: closed once the shop is in place.
	admin, err := pgx.Connect(ctx, c.DSN("postgres", cluster.Superuser)+" application_name=demo-setup")
	if err != nil {
		return w, err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE shop"); err != nil {
		return w, fmt.Errorf("demo setup: %w", err)
	}
	setup, err := w.connect(ctx, "shop", "demo-setup")
	if err != nil {
		return w, err
	}
	if _, err := setup.Exec(ctx, `
		CREATE TABLE products (id int PRIMARY KEY, name text, stock int);
		INSERT INTO products SELECT g, 'product ' || g, 100 FROM generate_series(1, 1000) g;
		CREATE TABLE orders AS
			SELECT g AS id, 1 + g % 1000 AS product_id, 1 + g % 5 AS qty, now() - g * interval '1 minute' AS created_at
			  FROM generate_series(1, 200000) g;
		ANALYZE`); err != nil {
		return w, fmt.Errorf("demo setup: %w", err)
	}
	_ = setup.Close(ctx) // not part of the show

	if err := w.startPool(ctx); err != nil {
		return w, err
	}
	// The forgotten transaction: a batch job that updated a product and
	// never committed.
	batch, err := w.connect(ctx, "shop", "batch")
	if err != nil {
		return w, err
	}
	if _, err := batch.Exec(ctx, "BEGIN; UPDATE products SET stock = stock - 1 WHERE id = 1"); err != nil {
		return w, err
	}
	for i := 0; i < queued; i++ {
		cn, err := w.connectDSN(ctx, w.webDSN("checkout"))
		if err != nil {
			return w, err
		}
		w.goRun(func() { _, _ = cn.Exec(w.ctx, "UPDATE products SET stock = stock + 1 WHERE id = 1") })
	}
	etl, err := w.connect(ctx, "shop", "etl")
	if err != nil {
		return w, err
	}
	if _, err := etl.Exec(ctx, "BEGIN; SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day'"); err != nil {
		return w, err
	}
	if err := w.startReport(ctx); err != nil {
		return w, err
	}

	// Ready when everyone is in place and the checkouts have waited 1s
	// (unblock --longer-than 1s). The report's workers may not come
	// (max_worker_processes used up): the demo goes on without them.
	// Through a PgBouncer in transaction mode the pool has as many server
	// connections as requests ran at once: ready when one has succeeded.
	began := time.Now()
	deadline := began.Add(30 * time.Second)
	for {
		var pool, waiting, workers int
		err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE application_name = 'shop-web'),
			       count(*) FILTER (WHERE wait_event_type = 'Lock' AND query_start < now() - interval '1s'),
			       count(*) FILTER (WHERE backend_type = 'parallel worker')
			  FROM pg_catalog.pg_stat_activity WHERE datname = 'shop'`).Scan(&pool, &waiting, &workers)
		if err != nil {
			return w, err
		}
		if w.pgb != nil && w.web.okSince(began) {
			pool = poolSize
		}
		if pool >= poolSize && waiting >= queued && (workers > 0 || time.Now().After(deadline.Add(-25*time.Second))) {
			return w, nil
		}
		if time.Now().After(deadline) {
			return w, fmt.Errorf("demo workload: not in place after 30s (pool %d, waiting %d)", pool, waiting)
		}
		select {
		case <-ctx.Done():
			return w, ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling the server
		}
	}
}

// startReport starts the runaway report: a parallel query that runs for
// minutes.
func (w *workload) startReport(ctx context.Context) error {
	cn, err := w.connect(ctx, "shop", "report",
		"parallel_setup_cost=0", "parallel_tuple_cost=0", "min_parallel_table_scan_size=0")
	if err != nil {
		return err
	}
	w.goRun(func() {
		_, _ = cn.Exec(w.ctx, `SELECT product_id, sum(qty) FROM orders
			 WHERE pg_catalog.pg_sleep(0.002) IS NOT NULL GROUP BY product_id ORDER BY 2 DESC`)
	})
	return nil
}

// startPool opens shop-web's pool and starts its clients.
func (w *workload) startPool(ctx context.Context) error {
	cfg, err := pgxpool.ParseConfig(w.webDSN("shop-web"))
	if err != nil {
		return err
	}
	cfg.MinConns, cfg.MaxConns = poolSize, poolSize
	// A connection the server ended (kick, drain) is replaced promptly,
	// as in any pool kept at a minimum size: it is found dead when it is
	// next lent (the request it was lent to fails, or pgxpool's ping
	// before lending one idle for a second does), and the health check
	// opens its successor, at once or, while the database refuses
	// connections, every second until it takes them again.
	cfg.HealthCheckPeriod = time.Second
	if w.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return err
	}
	for i := 0; i < clients; i++ {
		w.goRun(func() { w.webClient(i) })
	}
	return nil
}

// webClient is one of the application's request loops: a short query on
// a connection from the pool, then the time to the next request. A
// request that fails (its connection ended, the database refusing
// connections) is not retried, only counted: the next one comes as it
// would.
func (w *workload) webClient(loop int) {
	for w.ctx.Err() == nil {
		var stock int
		began := w.web.begin(loop)
		err := w.pool.QueryRow(w.ctx, "SELECT stock FROM products WHERE id = $1", 2+rand.IntN(999)).Scan(&stock)
		if w.ctx.Err() != nil {
			return // the demo ends: not the application's failure
		}
		w.web.end(loop, began, err)
		pause(w.ctx, time.Duration(50+rand.IntN(250))*time.Millisecond)
	}
}

// waitPool waits until the pool is back after its connections were ended:
// directly, all its connections open again; through a PgBouncer (whose
// server connections come and go with the requests), a request that
// began after now has succeeded.
func (w *workload) waitPool(ctx context.Context) error {
	if w.pgb != nil {
		began := time.Now()
		for !w.web.okSince(began) {
			if time.Since(began) > 20*time.Second {
				return fmt.Errorf("demo workload: no request of the pool has succeeded through PgBouncer for 20s (%d failed in all)", w.web.stats().Failed)
			}
			pause(ctx, 20*time.Millisecond) // polling the counts
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		return nil
	}
	cn, err := pgx.Connect(ctx, w.c.DSN("postgres", cluster.Superuser)+" application_name=demo-setup")
	if err != nil {
		return err
	}
	defer cn.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := cn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity
			 WHERE datname = 'shop' AND application_name = 'shop-web'`).Scan(&n); err != nil {
			return err
		}
		if n >= poolSize {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo workload: the pool has %d of its %d connections 20s after they were ended", n, poolSize)
		}
		pause(ctx, 20*time.Millisecond) // polling the server
	}
}

// pause is the workload's think time (not a wait for a condition).
func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
