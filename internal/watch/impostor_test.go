package watch_test

import (
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// electionKeys are the two keys of a target's election lock, as documented
// (docs/watch.md): anyone can compute them.
func electionKeys(target string) (int32, int32) {
	h := fnv.New32a()
	h.Write([]byte(target))
	return 0x70677270, int32(h.Sum32())
}

// Any login role can take a target's election lock (advisory locks need no
// privilege). Without ha.evict_impostor the daemon says so (an error
// naming the holder, pgreap_leader_conflict 1, /healthz 503 "conflict");
// with it, the holder is terminated through the guard, audited, and the
// daemon leads and acts.
func TestImpostorHoldsTheElectionLock(t *testing.T) { impostor(t, false) }

func TestImpostorEvicted(t *testing.T) { impostor(t, true) }

func impostor(t *testing.T, evict bool) {
	t.Parallel()
	tag := pgtest.Tag(t)
	impostor := pgtest.NewVictim(t, pgtest.VictimOptions{User: pgtest.NewRole(t, "NOSUPERUSER"), App: tag + "-impostor"})
	class, key := electionKeys(tag)
	impostor.Exec("SELECT pg_catalog.pg_advisory_lock($1, $2)", class, key)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-v"})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
ha: {evict_impostor: `+strconv.FormatBool(evict)+`}
rules:
  - name: slow
    match: {app: [TAG-v], state: [active]}
    action: cancel
`)
	if !evict {
		waitHealth(t, d, http.StatusServiceUnavailable, map[string]watch.State{tag: watch.Conflict})
		if n := testutil.ToFloat64(d.Metrics().LeaderConflict.WithLabelValues(tag)); n != 1 {
			t.Errorf("pgreap_leader_conflict %v", n)
		}
		logs := d.logs.String()
		if !strings.Contains(logs, `"level":"ERROR","msg":"the election lock is held by a session that is not a pgreap watch`) ||
			!strings.Contains(logs, `"pid":`+strconv.Itoa(int(impostor.PID))) || !strings.Contains(logs, tag+"-impostor") {
			t.Fatalf("log:\n%s", logs)
		}
		if !impostor.Alive() || !v.Alive() {
			t.Fatal("acted while standing by")
		}
		return
	}
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the victim's query: SQLSTATE %q, want 57014 (cancelled by the daemon once it leads)", code)
	}
	if impostor.Alive() {
		t.Fatal("the impostor is still there")
	}
	waitHealth(t, d, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	got := d.waitEntries(t, 2)
	if e := got[0]; e.Rule != "ha.evict_impostor" || e.PID != impostor.PID || e.Action != "terminate" || e.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	if n := testutil.ToFloat64(d.Metrics().LeaderConflict.WithLabelValues(tag)); n != 0 {
		t.Errorf("pgreap_leader_conflict %v after the lead was taken", n)
	}
}

// A replica standing by for another pgreap watch is healthy, says so once
// at INFO, and reports no conflict.
func TestStandbyForAReplica(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG-v], state: [active]}
    action: cancel
`
	first := startDaemon(t, dsn(t), pol)
	waitHealth(t, first, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	second := startDaemon(t, dsn(t), pol)
	waitHealth(t, second, http.StatusOK, map[string]watch.State{tag: watch.Standby})
	pgtest.Eventually(t, "a few intervals standing by", func() (bool, error) {
		return testutil.ToFloat64(second.Metrics().Leader.WithLabelValues(tag)) == 0 &&
			strings.Count(second.logs.String(), `"msg":"standing by: another pgreap watch leads"`) == 1, nil
	})
	if n := testutil.ToFloat64(second.Metrics().LeaderConflict.WithLabelValues(tag)); n != 0 {
		t.Errorf("pgreap_leader_conflict %v for a replica", n)
	}
}

// A prepared transaction can hold the election lock (pg_advisory_xact_lock,
// then PREPARE TRANSACTION): no backend, so no pid. It is reported as the
// conflict it is, and the daemon stays connected.
func TestPreparedTransactionHoldsTheElectionLock(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	class, key := electionKeys(tag)
	gid := pgtest.PrepareTransaction(t, "postgres", "", "", "SELECT pg_catalog.pg_advisory_xact_lock("+strconv.Itoa(int(class))+", "+strconv.Itoa(int(key))+")")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
ha: {evict_impostor: true}
rules:
  - name: slow
    match: {app: [TAG-v], state: [active]}
    action: cancel
`)
	waitHealth(t, d, http.StatusServiceUnavailable, map[string]watch.State{tag: watch.Conflict})
	pgtest.Eventually(t, "the error naming it", func() (bool, error) {
		logs := d.logs.String()
		return strings.Contains(logs, "held by a prepared transaction"), nil
	})
	if logs := d.logs.String(); strings.Contains(logs, "connection lost") {
		t.Fatalf("log:\n%s", logs)
	}
	if !pgtest.IsPrepared(t, gid) {
		t.Fatal("the prepared transaction was ended")
	}
}

// Replicas whose login role acts as another (ALTER ROLE ... SET role) are
// replicas still: pg_stat_activity names the login role.
func TestReplicasOfARoleThatActsAsAnother(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	group := pgtest.NewRole(t, "NOSUPERUSER")
	login := pgtest.NewRole(t, "NOSUPERUSER", group)
	pgtest.Exec(t, "ALTER ROLE "+login+" SET role = "+group)
	pol := `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
ha: {evict_impostor: true}
rules:
  - name: slow
    match: {app: [TAG-v], state: [active]}
    action: cancel
`
	as := pgtest.Shared(t).DSN("postgres", login)
	first := startDaemon(t, as, pol)
	waitHealth(t, first, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	second := startDaemon(t, as, pol)
	waitHealth(t, second, http.StatusOK, map[string]watch.State{tag: watch.Standby})
	if logs := second.logs.String() + first.logs.String(); strings.Contains(logs, "evict") && strings.Contains(logs, `"rule":"ha.evict_impostor"`) {
		t.Fatalf("a replica was evicted:\n%s", logs)
	}
}
