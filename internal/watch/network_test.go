package watch_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// proxiedDaemon is a daemon whose one target is the package's cluster
// through a proxy, with a short statement_timeout (the deadline is 2.3 s)
// and connect_timeout; its rule cancels the test's queries after 300ms.
func proxiedDaemon(t *testing.T) (*pgtest.Proxy, *daemon) {
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	d := startDaemon(t, p.DSN("postgres", pgtest.Superuser)+" statement_timeout=300ms connect_timeout=1", `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 300ms}
    action: cancel
`)
	return p, d
}

// The network to a target stalls (nothing forwarded, nothing closed): the
// daemon's statement deadline notices it, the target goes down, and when
// the network comes back the daemon reconnects and acts; a session is
// audited once.
func TestStalledNetwork(t *testing.T) {
	t.Parallel()
	p, d := proxiedDaemon(t)
	up := func() float64 { return testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues(pgtest.Tag(t))) }
	pgtest.Eventually(t, "the target up", func() (bool, error) { return up() == 1, nil })
	p.Stall()
	pgtest.Eventually(t, "the stall noticed", func() (bool, error) {
		return up() == 0 && strings.Contains(d.logs.String(), `"msg":"connection lost"`), nil
	})
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	if n := len(d.entries(t)); n != 0 {
		t.Fatalf("%d audit lines while the network is stalled", n)
	}
	p.Resume()
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled)", code)
	}
	got := d.waitEntries(t, 1)
	if len(got) != 1 || got[0].PID != v.PID || got[0].Outcome != "cancelled" {
		t.Fatalf("audit %+v", got)
	}
	pgtest.Eventually(t, "the target up again", func() (bool, error) { return up() == 1, nil })
	if n := len(d.entries(t)); n != 1 {
		t.Fatalf("%d audit lines, want 1", n)
	}
}

// The daemon's connection is frozen (a middlebox lost the flow: nothing
// passes, not even the close, while new connections get through). The
// server keeps the abandoned backend, and with it the advisory lock that
// elects the leader, until its TCP keepalive gives up (hours by default):
// the daemon's new connection ends that backend, by its identity, and
// leads again at once.
func TestAbandonedBackendKeepsNoLead(t *testing.T) {
	t.Parallel()
	p, d := proxiedDaemon(t)
	leader := func() float64 { return testutil.ToFloat64(d.Metrics().Leader.WithLabelValues(pgtest.Tag(t))) }
	pgtest.Eventually(t, "the daemon leading", func() (bool, error) { return leader() == 1, nil })
	p.Freeze()
	pgtest.Eventually(t, "the abandoned session ended", func() (bool, error) {
		return strings.Contains(d.logs.String(), "ended an abandoned session of this daemon"), nil
	})
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled while the old flow is still frozen)", code)
	}
	if got := d.waitEntries(t, 1); len(got) != 1 || got[0].PID != v.PID {
		t.Fatalf("audit %+v", got)
	}
}

// The daemon misjudges the server's clock: its first snapshot took long to
// reach the server (held here by the proxy), so it sends the cancel before
// the query is past its threshold by the server's clock, and the statement
// finds it does not match yet, three times in a row. The query is judged
// again at the next snapshot and cancelled then. Before, it was marked as
// acted on and left to run: seen in CI under load, after a restart.
func TestEarlySignalIsJudgedAgain(t *testing.T) {
	t.Parallel()
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	// The first snapshot: the only measure of the clocks' offset yet.
	held := p.On("blocked_by", pgtest.Stall, pgtest.Before)
	d := startDaemon(t, p.DSN("postgres", pgtest.Superuser), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1s
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
`)
	<-held
	v := heldSnapshot(t, p)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled)\n%s", code, d.logs.String())
	}
	got := d.waitEntries(t, 1)
	if len(got) != 1 || got[0].PID != v.PID || got[0].Outcome != "cancelled" {
		t.Fatalf("audit %+v", got)
	}
	// Found early: tried again shortly, or (past the retries) judged again
	// by the next snapshot.
	if !strings.Contains(d.logs.String(), `"detail":"no longer matches the selection"`) {
		t.Fatalf("the early signal did not happen:\n%s", d.logs.String())
	}
}

// heldSnapshot starts a query while the proxy holds a snapshot, and lets
// the snapshot go on once the query is 300 ms old: the snapshot reaches
// the server 300 ms into the query, and over 300 ms after it was sent, so
// it measures the server's clock that much ahead of the daemon's.
func heldSnapshot(t *testing.T, p *pgtest.Proxy) *pgtest.Victim {
	t.Helper()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(30)")
	pgtest.Eventually(t, "the query 300 ms old", func() (bool, error) {
		var old bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `SELECT state = 'active' AND now() - query_start > interval '300 ms'
			FROM pg_catalog.pg_stat_activity WHERE pid = $1`, v.PID).Scan(&old)
		return old, err
	})
	p.Resume()
	return v
}

// One snapshot slow to reach the server, after others that were not, does
// not make the daemon send early: the deadlines follow the least offset of
// the last snapshots. Before, each deadline of the interval was sent early
// by the delay, found not yet past its threshold, and tried again.
func TestSlowSnapshotDoesNotSendEarly(t *testing.T) {
	t.Parallel()
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	d := startDaemon(t, p.DSN("postgres", pgtest.Superuser), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1s
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
`)
	// A few measures first: the first snapshot of a connection is slow
	// too (its backend reads the catalogs it plans with).
	waitSnapshots(t, d, 3)
	held := p.On("blocked_by", pgtest.Stall, pgtest.Before) // the next snapshot
	<-held
	v := heldSnapshot(t, p)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled)\n%s", code, d.logs.String())
	}
	got := d.waitEntries(t, 1)
	if len(got) != 1 || got[0].PID != v.PID || got[0].Outcome != "cancelled" {
		t.Fatalf("audit %+v", got)
	}
	if strings.Contains(d.logs.String(), `"detail":"no longer matches the selection"`) {
		t.Fatalf("sent before the threshold:\n%s", d.logs.String())
	}
}
