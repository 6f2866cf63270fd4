package cli_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// pool is an application's pool behind a PgBouncer: clients that each run
// short queries in a loop, through the pooler, counting what completes
// and what fails, as the application would see it.
type pool struct {
	done   atomic.Int64
	errs   atomic.Int64
	mu     sync.Mutex
	first  error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startPool(t *testing.T, b *cluster.PgBouncer, db string, clients int) *pool {
	t.Helper()
	ctx, cancel := context.WithCancel(pgtest.Context(t))
	p := &pool{cancel: cancel}
	// exec mode: PgBouncer 1.18 keeps no prepared statement across
	// transactions.
	dsn := b.DSN(db, pgtest.Superuser) + " default_query_exec_mode=exec application_name=" + cluster.Quote(pgtest.Tag(t))
	for i := 0; i < clients; i++ {
		cn := pgtest.Connect(t, dsn)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for ctx.Err() == nil {
				var one int
				err := cn.QueryRow(ctx, "SELECT 1").Scan(&one)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					p.errs.Add(1)
					p.mu.Lock()
					if p.first == nil {
						p.first = err
					}
					p.mu.Unlock()
				default:
					p.done.Add(1)
				}
			}
		}()
	}
	t.Cleanup(p.stop)
	pgtest.Eventually(t, "the pool runs queries", func() (bool, error) { return p.done.Load() >= int64(clients), nil })
	return p
}

func (p *pool) stop() {
	p.cancel()
	p.wg.Wait()
}

// poolerDB is database db's row in SHOW DATABASES (nil: none).
func poolerDB(t *testing.T, b *cluster.PgBouncer, db string) map[string]string {
	t.Helper()
	for _, r := range pgtest.Show(t, b, "DATABASES") {
		if r["name"] == db {
			return r
		}
	}
	return nil
}

// paused reads SHOW DATABASES' paused of db. An auto-database (the
// harness's `*` entry) with no client and no server connection left is not
// listed: the tests keep a client on it.
func paused(t *testing.T, b *cluster.PgBouncer, db string) bool {
	t.Helper()
	r := poolerDB(t, b, db)
	if r == nil {
		t.Fatalf("SHOW DATABASES does not list %s", db)
	}
	return r["paused"] == "1"
}

// pausableDB is a database to drain behind a PgBouncer of the test's own
// in pool mode mode: reopened and resumed when the test ends, whatever it
// left.
func pausableDB(t *testing.T, mode string) (*cluster.PgBouncer, string) {
	t.Helper()
	b := ownPgBouncer(t, mode)
	db := pgtest.NewDB(t)
	reopen(t, db)
	resumeAtEnd(t, b, db)
	return b, db
}

// ownPgBouncer is a PgBouncer of the test's own: PgBouncer 1.18 answers a
// PAUSE only once every paused database of the pooler is quiet, so tests
// that pause do not share one.
func ownPgBouncer(t *testing.T, mode string) *cluster.PgBouncer {
	return pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{PoolMode: mode})
}

// console runs one command on b's admin console.
func console(t *testing.T, b *cluster.PgBouncer, sql string) error {
	t.Helper()
	cn, err := pgconn.Connect(pgtest.Context(t), b.AdminDSN(cluster.AdminUser))
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close(context.Background())
	_, err = cn.Exec(pgtest.Context(t), sql).ReadAll()
	return err
}

// resumeAtEnd lifts a pause a failed test left, before the database is
// dropped.
func resumeAtEnd(t *testing.T, b *cluster.PgBouncer, db string) {
	t.Cleanup(func() { _ = console(t, b, "RESUME "+pgx.Identifier{db}.Sanitize()) })
}

// inTransaction opens a client through the pooler that holds a
// transaction open, so its server connection stays its own; it returns the
// backend's pid.
func inTransaction(t *testing.T, b *cluster.PgBouncer, db string) (*pgx.Conn, int32) {
	t.Helper()
	cn := pgtest.Connect(t, b.DSN(db, pgtest.Superuser)+" default_query_exec_mode=exec application_name="+cluster.Quote(pgtest.Tag(t)))
	ctx := pgtest.Context(t)
	if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	var pid int32
	if err := cn.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return cn, pid
}

func backendAlive(t *testing.T, pid int32) bool {
	t.Helper()
	var n int
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func drainRecordOf(t *testing.T, db string) *maintenance.Record {
	t.Helper()
	files := recordsOf(t, db)
	if len(files) != 1 {
		t.Fatalf("drain records of %s: %v", db, files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var r maintenance.Record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// A pool of clients through PgBouncer (transaction mode) goes on through a
// drain, a hold and an undrain without a single error: while the database
// is drained they wait in the pooler, and after undrain their queries
// complete.
func TestDrainPgBouncerClientsWait(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	p := startPool(t, b, db, 6)
	admin := b.AdminDSN(cluster.AdminUser)

	r := run(t, false, "drain", db, "--pgbouncer", admin)
	r.wantCode(t, 0)
	if !paused(t, b, db) {
		t.Fatalf("SHOW DATABASES: %s not paused after the drain\n%s", db, r.errOut)
	}
	if allow, _ := dbSettings(t, db); allow {
		t.Fatal("the drained database still allows connections")
	}
	// The harness's pooler lets clients wait 60s (query_wait_timeout).
	if !strings.Contains(r.errOut, "paused on pgbouncer") || !strings.Contains(r.errOut, "query_wait_timeout (60s") {
		t.Fatalf("drain's messages do not say the pooler is paused and its clients wait:\n%s", r.errOut)
	}
	// Held: the clients wait in the pooler, with no error.
	pgtest.Eventually(t, "the pool's clients wait in the pooler", func() (bool, error) {
		for _, row := range pgtest.Show(t, b, "POOLS") {
			if row["database"] == db && row["cl_waiting"] != "0" {
				return true, nil
			}
		}
		return false, nil
	})
	held := p.done.Load()

	u := run(t, false, "undrain", db, "--pgbouncer", admin)
	u.wantCode(t, 0)
	if !strings.Contains(u.out, "resumed on pgbouncer") {
		t.Fatalf("undrain does not say it resumed the pooler:\n%s", u.out)
	}
	if paused(t, b, db) {
		t.Fatal("still paused after undrain")
	}
	pgtest.Eventually(t, "the pool's queries complete after undrain", func() (bool, error) { return p.done.Load() > held+12, nil })
	p.stop()
	if n := p.errs.Load(); n != 0 {
		t.Fatalf("the pool saw %d errors through drain, hold and undrain (first: %v)", n, p.first)
	}
	for _, s := range drainRecordOf(t, db).Poolers {
		if s.Ours() {
			t.Fatalf("the record still has a pause of its own after undrain: %+v", s)
		}
	}
}

// A transaction left open holds PAUSE up: after --grace its backend is
// terminated (through the guard), PAUSE completes and the drain with it.
func TestDrainPgBouncerGraceEndsHolder(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	p := startPool(t, b, db, 2)
	_, pid := inTransaction(t, b, db)
	admin := b.AdminDSN(cluster.AdminUser)

	r := run(t, false, "drain", db, "--pgbouncer", admin, "--grace", "300ms", "--timeout", "60s")
	r.wantCode(t, 0)
	if backendAlive(t, pid) {
		t.Fatalf("the open transaction's backend %d is still there after the drain", pid)
	}
	if !strings.Contains(r.errOut, "pid "+strconv.Itoa(int(pid))) || !strings.Contains(r.errOut, "terminated") {
		t.Fatalf("drain does not name the holder it ended (pid %d):\n%s", pid, r.errOut)
	}
	if !paused(t, b, db) {
		t.Fatal("not paused after the drain")
	}
	held := p.done.Load()
	run(t, false, "undrain", db, "--pgbouncer", admin).wantCode(t, 0)
	if paused(t, b, db) {
		t.Fatal("still paused after undrain")
	}
	pgtest.Eventually(t, "the pool's queries complete after undrain", func() (bool, error) { return p.done.Load() > held+4, nil })
	p.stop()
	if n := p.errs.Load(); n != 0 {
		t.Fatalf("the pool's clients, not in a transaction, saw %d errors (first: %v)", n, p.first)
	}
}

// A pooler that cannot be paused by --timeout is rolled back: RESUME, the
// database not blocked, exit 3 naming what held it up.
func TestDrainPgBouncerTimeoutRollsBack(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	p := startPool(t, b, db, 2)
	cn, pid := inTransaction(t, b, db)
	admin := b.AdminDSN(cluster.AdminUser)

	// The grace outlasts the timeout: the holder is never ended.
	r := run(t, false, "drain", db, "--pgbouncer", admin, "--grace", "10m", "--timeout", "1s")
	r.wantCode(t, 3)
	if paused(t, b, db) {
		t.Fatalf("SHOW DATABASES: still paused after the rollback\n%s", r.errOut)
	}
	if !strings.Contains(r.errOut, "pid "+strconv.Itoa(int(pid))) || !strings.Contains(r.errOut, "rolled back") {
		t.Fatalf("drain does not name the holder (pid %d) and the rollback:\n%s", pid, r.errOut)
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("the database was blocked though the poolers could not be paused")
	}
	// The holder was left alone and goes on.
	if _, err := cn.Exec(pgtest.Context(t), "COMMIT"); err != nil {
		t.Fatalf("the holder's transaction: %v", err)
	}
	// The pool went on after the rollback, without an error.
	after := p.done.Load()
	pgtest.Eventually(t, "the pool's queries go on", func() (bool, error) { return p.done.Load() > after+4, nil })
	p.stop()
	if n := p.errs.Load(); n != 0 {
		t.Fatalf("the pool saw %d errors (first: %v)", n, p.first)
	}
	// A drain that rolled back leaves nothing to undo.
	u := run(t, false, "undrain", db, "--pgbouncer", admin)
	u.wantCode(t, 0)
	if !strings.Contains(u.out, "already restored") {
		t.Fatalf("undrain after a rolled back drain:\n%s", u.out)
	}
}

// A pause that was someone else's before the drain came is never resumed
// by pgreap: neither by undrain nor by a rollback.
func TestDrainPgBouncerLeavesOthersPause(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	startPool(t, b, db, 1)
	if err := console(t, b, "PAUSE "+pgx.Identifier{db}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	admin := b.AdminDSN(cluster.AdminUser)
	r := run(t, false, "drain", db, "--pgbouncer", admin)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "paused already, by someone else") {
		t.Fatalf("drain does not say the pooler was paused already:\n%s", r.errOut)
	}
	u := run(t, false, "undrain", db, "--pgbouncer", admin)
	u.wantCode(t, 0)
	if !paused(t, b, db) {
		t.Fatalf("undrain resumed a pause that was not its own:\n%s", u.out)
	}
	if !strings.Contains(u.out, "left paused") {
		t.Fatalf("undrain does not say it left the pooler paused:\n%s", u.out)
	}
}

// --dry-run names each pooler and what each step would do, and changes
// nothing: no pause, no block, no record.
func TestDrainPgBouncerDryRun(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	_, pid := inTransaction(t, b, db)
	r := run(t, false, "drain", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--dry-run")
	r.wantCode(t, 0)
	for _, want := range []string{"send PAUSE " + db + " to pgbouncer 127.0.0.1:" + strconv.Itoa(b.Port), "pid " + strconv.Itoa(int(pid)), "rolled back", "ALLOW_CONNECTIONS false"} {
		if !strings.Contains(r.errOut, want) {
			t.Fatalf("dry run does not say %q:\n%s", want, r.errOut)
		}
	}
	if paused(t, b, db) {
		t.Fatal("a dry run paused the pooler")
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("a dry run blocked the database")
	}
	if files := recordsOf(t, db); len(files) > 0 {
		t.Fatalf("a dry run wrote a record: %v", files)
	}
}

// A drain killed (SIGKILL) while its PAUSE waits leaves the pooler paused
// (PgBouncer keeps the pause of a closed connection); the record, written
// before PAUSE was sent, lets undrain resume it, with nothing but the
// record to find the pooler.
func TestDrainPgBouncerKilledWhilePausing(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	p := startPool(t, b, db, 2)
	holder, _ := inTransaction(t, b, db)
	admin := b.AdminDSN(cluster.AdminUser)

	d := startPgreap(t, nil, "drain", db, "--pgbouncer", admin, "--grace", "10m", "--timeout", "10m")
	pgtest.Eventually(t, "the drain's PAUSE waits", func() (bool, error) { return paused(t, b, db), nil })
	_ = d.cmd.Process.Kill() // our own child, by its pid
	d.wait(t)
	if !paused(t, b, db) {
		t.Fatal("the pause went with the killed drain: nothing left to test")
	}
	if _, err := holder.Exec(pgtest.Context(t), "COMMIT"); err != nil {
		t.Fatalf("the holder: %v", err)
	}

	u := run(t, false, "undrain", db) // no --pgbouncer: the record says where
	u.wantCode(t, 0)
	if paused(t, b, db) {
		t.Fatalf("still paused after undrain:\n%s%s", u.out, u.errOut)
	}
	if !strings.Contains(u.out, "resumed on pgbouncer") {
		t.Fatalf("undrain does not say it resumed the pooler:\n%s", u.out)
	}
	after := p.done.Load()
	pgtest.Eventually(t, "the pool's queries complete after undrain", func() (bool, error) { return p.done.Load() > after+4, nil })
	p.stop()
	if n := p.errs.Load(); n != 0 {
		t.Fatalf("the pool saw %d errors (first: %v)", n, p.first)
	}
}

// In session mode a client keeps its server connection until it leaves,
// so every connected client holds PAUSE up: after --grace their backends
// are terminated (those clients see their connection end), and the
// clients that come during the hold wait in the pooler, without an error,
// until undrain.
func TestDrainPgBouncerSessionMode(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "session")
	dsn := b.DSN(db, pgtest.Superuser) + " default_query_exec_mode=exec application_name=" + cluster.Quote(pgtest.Tag(t))
	old := pgtest.Connect(t, dsn)
	var pid int32
	if err := old.QueryRow(pgtest.Context(t), "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	admin := b.AdminDSN(cluster.AdminUser)

	r := run(t, false, "drain", db, "--pgbouncer", admin, "--grace", "300ms")
	r.wantCode(t, 0)
	if backendAlive(t, pid) {
		t.Fatalf("the session-mode client's backend %d holds PAUSE up and is still there:\n%s", pid, r.errOut)
	}
	// A client that comes now waits in the pooler.
	ctx := pgtest.Context(t)
	answer := make(chan error, 1)
	go func() {
		cn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			defer cn.Close(context.Background())
			var one int
			err = cn.QueryRow(ctx, "SELECT 1").Scan(&one)
		}
		answer <- err
	}()
	pgtest.Eventually(t, "the new client waits in the pooler", func() (bool, error) {
		for _, row := range pgtest.Show(t, b, "POOLS") {
			if row["database"] == db && row["cl_waiting"] != "0" {
				return true, nil
			}
		}
		return false, nil
	})
	select {
	case err := <-answer:
		t.Fatalf("the new client was answered during the hold: %v", err)
	default:
	}
	run(t, false, "undrain", db, "--pgbouncer", admin).wantCode(t, 0)
	select {
	case err := <-answer:
		if err != nil {
			t.Fatalf("the client that waited through the hold: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the client that waited is not answered after undrain")
	}
}

// pausedWhole says whether b is paused as a whole (PAUSE without a
// database): the console refuses to pause its own database with "already
// suspended/paused" then, and with "cannot pause admin db" otherwise.
func pausedWhole(t *testing.T, b *cluster.PgBouncer) bool {
	t.Helper()
	err := console(t, b, "PAUSE pgbouncer")
	switch {
	case err != nil && strings.Contains(err.Error(), "already suspended/paused"):
		return true
	case err != nil && strings.Contains(err.Error(), "cannot pause admin db"):
		return false
	}
	t.Fatalf("PAUSE pgbouncer: %v", err)
	return false
}

// A drain that rolls back while someone pauses the whole pooler leaves
// that pause alone: pgreap never sends the console a cancel request (in
// PgBouncer 1.18 a cancel on the console RESUMEs a whole-pooler pause).
func TestDrainPgBouncerRollbackKeepsWholePause(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	startPool(t, b, db, 1)
	inTransaction(t, b, db)
	admin := b.AdminDSN(cluster.AdminUser)

	d := startPgreap(t, nil, "drain", db, "--pgbouncer", admin, "--grace", "10m", "--timeout", "3s")
	pgtest.Eventually(t, "the drain's PAUSE waits", func() (bool, error) { return paused(t, b, db), nil })
	// Someone pauses the whole pooler: it waits for the same transaction.
	whole, err := pgconn.Connect(pgtest.Context(t), admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = console(t, b, "RESUME")
		_ = whole.Close(context.Background())
	})
	whole.Exec(context.Background(), "PAUSE") // it waits: not read
	pgtest.Eventually(t, "the whole pooler is paused", func() (bool, error) { return pausedWhole(t, b), nil })
	d.wait(t)
	if d.code() != 3 {
		t.Fatalf("drain exit %d, want 3 (timeout):\n%s", d.code(), d.errOut.String())
	}
	if !pausedWhole(t, b) {
		t.Fatalf("the drain's rollback lifted a pause of the whole pooler that was not its own:\n%s", d.errOut.String())
	}
}

// A console role that may only SHOW (stats_users) is refused PAUSE: drain
// says so in one line naming the pooler, exit 2, with nothing paused,
// blocked or left to undo.
func TestDrainPgBouncerStatsUserRefused(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	startPool(t, b, db, 1)
	r := run(t, false, "drain", db, "--pgbouncer", b.AdminDSN(b.StatsUser))
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "admin_users") || !strings.Contains(r.errOut, "pgbouncer 127.0.0.1:"+strconv.Itoa(b.Port)) ||
		strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 {
		t.Fatalf("drain does not say, in one line, that the pooler refuses PAUSE:\n%s", r.errOut)
	}
	if strings.Contains(r.errOut, "stay paused") || paused(t, b, db) {
		t.Fatalf("a refused PAUSE is taken for a pause:\n%s", r.errOut)
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("the database was blocked")
	}
	if files := recordsOf(t, db); len(files) != 0 {
		t.Fatalf("a drain that did nothing left a record: %v", files)
	}
}

// Interrupted (SIGINT) while PAUSE waits, drain rolls every pause back
// before it exits: nothing paused, nothing blocked.
func TestDrainPgBouncerInterruptedWhilePausing(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	startPool(t, b, db, 1)
	inTransaction(t, b, db)
	d := startPgreap(t, nil, "drain", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--grace", "10m", "--timeout", "10m")
	pgtest.Eventually(t, "the drain's PAUSE waits", func() (bool, error) { return paused(t, b, db), nil })
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil { // our own child, by its pid
		t.Fatal(err)
	}
	d.wait(t)
	if d.code() != 3 || !strings.Contains(d.errOut.String(), "interrupted while pausing") {
		t.Fatalf("drain exit %d:\n%s", d.code(), d.errOut.String())
	}
	if paused(t, b, db) {
		t.Fatalf("still paused after the interrupted drain:\n%s", d.errOut.String())
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("the database was blocked")
	}
}

// Drain with a pooler killed (SIGKILL) at random moments (before it
// recorded anything, while PAUSE waits, during its grace, blocking,
// holding): each time, undrain leaves the pooler resumed and the database
// open, and the pool's clients, which only ever waited, carry on without
// an error.
func TestDrainPgBouncerKilledAtRandomMoments(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	p := startPool(t, b, db, 3)
	admin := b.AdminDSN(cluster.AdminUser)
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	killed := 0
	for i := 0; i < 6; i++ {
		holder, _ := inTransaction(t, b, db) // holds PAUSE up until --grace
		d := startPgreap(t, nil, "drain", db, "--pgbouncer", admin, "--grace", "200ms", "--timeout", "20s")
		// The moment to kill, not a wait: every other one within --grace,
		// while PAUSE surely waits (the holder's transaction is open), so
		// that some drains are killed before they are done, whatever the
		// draw.
		limit := 500
		if i%2 == 0 {
			limit = 200
		}
		delay := time.Duration(rng.IntN(limit)) * time.Millisecond
		kill := time.AfterFunc(delay, func() { _ = d.cmd.Process.Kill() })
		d.wait(t)
		kill.Stop()
		if d.code() == -1 {
			killed++
		}
		u := run(t, false, "undrain", db, "--pgbouncer", admin)
		if u.code != 0 && !(u.code == 2 && strings.Contains(u.errOut, "no drain record")) {
			t.Fatalf("kill at %s: undrain exit %d: %s%s", delay, u.code, u.out, u.errOut)
		}
		if paused(t, b, db) {
			t.Fatalf("kill at %s: still paused after undrain\ndrain: %s\nundrain: %s", delay, d.errOut.String(), u.out)
		}
		if allow, _ := dbSettings(t, db); !allow {
			t.Fatalf("kill at %s: still blocked after undrain", delay)
		}
		holder.Close(context.Background())
		after := p.done.Load()
		pgtest.Eventually(t, "the pool's queries go on", func() (bool, error) { return p.done.Load() > after+6, nil })
	}
	p.stop()
	if n := p.errs.Load(); n != 0 {
		t.Fatalf("the pool saw %d errors (first: %v)", n, p.first)
	}
	t.Logf("6 drains, %d killed before they were done", killed)
	if killed == 0 {
		t.Fatal("no drain was killed before it was done: the moments do not test anything")
	}
}

// A holder that pgreap's role may not see (no pg_read_all_stats: no
// backend_start to pin) is never signalled: at the timeout drain names it
// by the pooler's word (its backend pid) and rolls back.
func TestDrainPgBouncerUnseenHolderIsNamed(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	owner := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend")
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgx.Identifier{owner}.Sanitize())
	t.Cleanup(func() {
		_, _ = pgtest.Admin(t).Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgtest.Superuser)
	})
	startPool(t, b, db, 1)
	_, pid := inTransaction(t, b, db)
	r := run(t, false, "-U", owner, "drain", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--grace", "100ms", "--timeout", "2s")
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, "backend pid "+strconv.Itoa(int(pid))) || !strings.Contains(r.errOut, "left alone") {
		t.Fatalf("drain does not name the holder it may not see (pid %d):\n%s", pid, r.errOut)
	}
	if !backendAlive(t, pid) {
		t.Fatal("a holder whose identity pgreap could not pin was ended")
	}
	if paused(t, b, db) {
		t.Fatal("still paused after the rollback")
	}
}

// One drain or undrain of a database at a time on a host: a second drain
// while the first one's PAUSE waits is refused (one line, exit 2), and so
// is an undrain; neither lifts the first one's pause. Before, the second
// took the first one's pause for its own and rolled it back.
func TestDrainPgBouncerOneAtATime(t *testing.T) {
	t.Parallel()
	b, db := pausableDB(t, "transaction")
	holder, _ := inTransaction(t, b, db)
	admin := b.AdminDSN(cluster.AdminUser)

	d := startPgreap(t, nil, "drain", db, "--pgbouncer", admin, "--grace", "10m", "--timeout", "10m")
	pgtest.Eventually(t, "the drain's PAUSE waits", func() (bool, error) { return paused(t, b, db), nil })
	for _, args := range [][]string{
		{"drain", db, "--pgbouncer", admin, "--grace", "20s", "--timeout", "1s"},
		// the same server under another name: a record of its own
		{"-h", "127.0.0.1", "drain", db, "--pgbouncer", admin, "--grace", "20s", "--timeout", "1s"},
		{"undrain", db, "--pgbouncer", admin},
	} {
		r := run(t, false, args...)
		r.wantCode(t, 2)
		if lines := strings.Split(strings.TrimSpace(r.errOut), "\n"); len(lines) != 1 || !strings.Contains(r.errOut, "is running") {
			t.Fatalf("%v while a drain runs: %q", args, r.errOut)
		}
		if !paused(t, b, db) {
			t.Fatalf("%v lifted the running drain's pause", args)
		}
	}
	_ = d.cmd.Process.Kill() // our own child, by its pid
	d.wait(t)
	if _, err := holder.Exec(pgtest.Context(t), "COMMIT"); err != nil {
		t.Fatalf("the holder: %v", err)
	}
	run(t, false, "undrain", db).wantCode(t, 0)
	if paused(t, b, db) {
		t.Fatal("still paused after undrain")
	}
}

// A drain record edited by hand is refused whole by undrain (one line,
// exit 2, nothing done): a reach that connects to another pooler than the
// one named (undrain said it resumed the one named while it talked to the
// other), a state no drain writes, a name no pooler has.
func TestUndrainRefusesAnEditedPoolerRecord(t *testing.T) {
	t.Parallel()
	b := ownPgBouncer(t, "transaction")
	other := ownPgBouncer(t, "transaction")
	db := pgtest.NewDB(t)
	reopen(t, db)
	resumeAtEnd(t, b, db)
	p := startPool(t, b, db, 1) // keeps the pooler's entry of db listed
	defer p.stop()
	admin := b.AdminDSN(cluster.AdminUser)
	run(t, false, "drain", db, "--pgbouncer", admin).wantCode(t, 0)
	if !paused(t, b, db) {
		t.Fatal("not paused after the drain")
	}
	path := recordsOf(t, db)[0]
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := drainRecordOf(t, db)
	for name, edit := range map[string]func(p *maintenance.PoolerPause){
		"reach to another pooler": func(p *maintenance.PoolerPause) {
			p.Reach = strings.Replace(p.Reach, strconv.Itoa(b.Port), strconv.Itoa(other.Port), 1)
		},
		"unknown state":         func(p *maintenance.PoolerPause) { p.State = "PAUSED" },
		"a name with a newline": func(p *maintenance.PoolerPause) { p.Database += "\nother" },
	} {
		r := *rec
		r.Poolers = slices.Clone(rec.Poolers)
		edit(&r.Poolers[0])
		data, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		u := run(t, false, "undrain", db)
		u.wantCode(t, 2)
		if lines := strings.Split(strings.TrimSpace(u.errOut), "\n"); len(lines) != 1 || !strings.Contains(u.errOut, "edited?") {
			t.Errorf("%s: undrain said %q", name, u.errOut)
		}
		if !paused(t, b, db) {
			t.Fatalf("%s: the pause was lifted", name)
		}
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, false, "undrain", db).wantCode(t, 0)
	if paused(t, b, db) {
		t.Fatal("still paused after the undrain of the record as written")
	}
}

// A pooler whose `*` entry serves any name from another server: the PAUSE
// of the drained database's name creates an entry that points at that
// server. It is rolled back at once, the database is not blocked, and
// drain says why.
func TestDrainPgBouncerWildcardOfAnotherServer(t *testing.T) {
	t.Parallel()
	other := pgtest.Own(t, pgtest.Options{BinDir: pgtest.Shared(t).BinDir})
	b := pgtest.OwnPgBouncer(t, other, pgtest.PgBouncerOptions{})
	db := pgtest.NewDB(t)
	reopen(t, db)
	resumeAtEnd(t, b, db)
	r := run(t, false, "drain", db, "--pgbouncer", b.AdminDSN(cluster.AdminUser), "--timeout", "20s")
	if r.code == 0 || !strings.Contains(r.errOut, "another server") {
		t.Fatalf("drain through another server's pooler: exit %d\n%s", r.code, r.errOut)
	}
	if row := poolerDB(t, b, db); row != nil && row["paused"] == "1" {
		t.Fatalf("the other server's pooler is left paused: %v", row)
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("the database was blocked")
	}
}
