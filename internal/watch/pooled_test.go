package watch_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// Behind a pooler, a rule on app matches the client a server connection
// serves, not the application_name the backend kept from its last client
// (PgBouncer does not reset it for a client that set none): B's long query
// on A's old server connection is left alone, A's is cancelled at the
// threshold, and the audit line names the pooled client.
func TestRulesMatchPooledClients(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a, bc := connect(appA), connect("")
	pid := pgtest.BackendPID(t, a)
	run := func(cn *pgx.Conn, sql string) <-chan error {
		done := make(chan error, 1)
		go func() { _, err := cn.Exec(ctx, sql); done <- err }()
		return done
	}
	hold := pgtest.Connect(t, pgtest.Shared(t).DSN(db, cluster.Superuser))
	if _, err := hold.Exec(ctx, "SELECT pg_catalog.pg_advisory_lock(19)"); err != nil {
		t.Fatal(err)
	}
	bDone := run(bc, "SELECT pg_catalog.pg_advisory_lock(19) /* B */")

	text := strings.ReplaceAll(`
targets: [{name: TAG, dsn: "DSN", pgbouncer: ["PGB"]}]
interval: 100ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: ["A-*"], state: [active], longer_than: 1s}
    action: cancel
`, "PGB", b.AdminDSN(b.StatsUser))
	d := startDaemon(t, dsn(t), text)

	// B's query has run past the threshold, and the daemon has looked
	// twice since.
	var seen uint64
	pgtest.Eventually(t, "B's query past the threshold, looked at twice", func() (bool, error) {
		select {
		case err := <-bDone:
			t.Fatalf("B's query ended while it waited: %v (SQLSTATE %s)", err, pgtest.SQLState(err))
		default:
		}
		var over bool
		err := pgtest.Admin(t).QueryRow(ctx, `SELECT query LIKE '%/* B */%' AND pg_catalog.now() - query_start > interval '1.2s'
		   FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active'`, pid).Scan(&over)
		if err == pgx.ErrNoRows {
			return false, nil
		}
		if err != nil || !over {
			return false, err
		}
		if seen == 0 {
			seen = snapshots(t, d)
		}
		return snapshots(t, d) >= seen+2, nil
	})
	var own string
	if err := pgtest.Admin(t).QueryRow(ctx, "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&own); err != nil {
		t.Fatal(err)
	}
	t.Logf("the backend's own application_name while it serves B: %q", own)
	if _, err := hold.Exec(ctx, "SELECT pg_catalog.pg_advisory_unlock(19)"); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("B's query: %v (SQLSTATE %s), want it done", err, pgtest.SQLState(err))
	}

	start := time.Now()
	if err := <-run(a, "SELECT pg_catalog.pg_sleep(60) /* A */"); pgtest.SQLState(err) != "57014" {
		t.Fatalf("A's query: %v, want cancelled (57014)", err)
	}
	t.Logf("A's query cancelled after %s", time.Since(start).Round(time.Millisecond))
	got := d.waitEntries(t, 1)
	if len(got) != 1 {
		t.Fatalf("audit: %+v, want A's cancel only", got)
	}
	e := got[0]
	if e.PID != pid || e.Outcome != "cancelled" || e.Pooler == nil || e.Pooler.ApplicationName == nil ||
		*e.Pooler.ApplicationName != appA || e.Pooler.Serving != "client" || e.Pooler.ClientPort == nil {
		t.Fatalf("audit line: %+v pooler %+v", e, e.Pooler)
	}
}

// A pooler of a target that stops answering stops the snapshots (its
// clients would be judged by its address): the daemon then says so, on
// /healthz (503, "pooler down") and in pgreap_poolers_up, and recovers
// when the pooler answers again.
func TestPoolerDownIsUnhealthy(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{})
	text := strings.ReplaceAll(`
targets: [{name: TAG, dsn: "DSN", pgbouncer: ["PGB"]}]
interval: 100ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`, "PGB", b.AdminDSN(b.StatsUser))
	d := startDaemon(t, dsn(t), text)
	waitHealth(t, d, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, d, http.StatusServiceUnavailable, map[string]watch.State{tag: watch.PoolerDown})
	if _, body := fetch(t, "http://"+d.Addr()+"/metrics"); !strings.Contains(body, `pgreap_poolers_up{target="`+tag+`"} 0`) {
		t.Errorf("metrics while the pooler is down:\n%s", grepLines(body, "pgreap_poolers_up"))
	}
}

func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
