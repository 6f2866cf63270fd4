package watch_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// fetch GETs url: status and body.
func fetch(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitHealth waits until /healthz answers code with the targets in the
// states given, and returns the body.
func waitHealth(t *testing.T, d *daemon, code int, want map[string]watch.State) string {
	t.Helper()
	var body string
	pgtest.Eventually(t, "/healthz", func() (bool, error) {
		var got int
		got, body = fetch(t, "http://"+d.Addr()+"/healthz")
		var h watch.Health
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			return false, err
		}
		if got != code || len(h.Targets) != len(want) {
			return false, nil
		}
		for name, st := range want {
			if h.Targets[name] != st {
				return false, nil
			}
		}
		return true, nil
	})
	return body
}

// /healthz is 503 while a target is down, naming each target's state, and
// 200 once every target is led, by this replica or another; /livez is 200
// all along (a database down is no reason to restart the daemon).
func TestHealth(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close() // nothing listens there: connection refused
	const pol = `
targets:
  - {name: TAG, dsn: "DSN"}
DOWN
interval: 200ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`
	down := `  - {name: TAG-down, dsn: "host=127.0.0.1 port=` + port + ` connect_timeout=1 sslmode=disable"}`
	d := startDaemon(t, dsn(t), strings.Replace(pol, "DOWN", down, 1))
	body := waitHealth(t, d, http.StatusServiceUnavailable, map[string]watch.State{tag: watch.Leading, tag + "-down": watch.Down})
	if want := `{"status":"unavailable","targets":{"` + tag + `":"leading","` + tag + `-down":"down"}}` + "\n"; body != want {
		t.Errorf("/healthz %q, want %q", body, want)
	}
	if code, body := fetch(t, "http://"+d.Addr()+"/livez"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/livez %d %q while a target is down", code, body)
	}

	if err := os.WriteFile(d.path, []byte(policyText(t, dsn(t), d.audit, strings.Replace(pol, "DOWN\n", "", 1))), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	body = waitHealth(t, d, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	if want := `{"status":"ok","targets":{"` + tag + `":"leading"}}` + "\n"; body != want {
		t.Errorf("/healthz %q, want %q", body, want)
	}

	// A second replica of the policy stands by: healthy, for the target is
	// led by the first.
	replica := startDaemon(t, dsn(t), strings.Replace(pol, "DOWN\n", "", 1))
	waitHealth(t, replica, http.StatusOK, map[string]watch.State{tag: watch.Standby})
	if code, _ := fetch(t, "http://"+replica.Addr()+"/livez"); code != http.StatusOK {
		t.Errorf("/livez %d", code)
	}
}

// A reload that changes a target's DSN starts the new connection only once
// the old one has stopped, here slowly: its network froze while a signal
// was being verified. The new connection ends the old one's backend, which
// the server keeps (with the election lock) behind the frozen network, and
// leads; what the old one had not verified is audited survived.
func TestReloadNewDSNAfterOldStops(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	v := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-v"})
	t.Cleanup(func() {
		_, _ = pgtest.Admin(t).Exec(context.Background(),
			"SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start = $2", v.PID, v.BackendStart)
	})
	// It survives cancels, and says it got one in its application_name.
	v.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60);
		EXCEPTION WHEN query_canceled THEN PERFORM pg_catalog.set_config('application_name', '` + tag + `-cancelled', false); END; END LOOP; END $$`)
	v.WaitState("active", "")
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: stubborn
    match: {app: ["TAG-v"], state: [active]}
    action: cancel-then-terminate
    grace: 1h
`
	d := startDaemon(t, p.DSN("postgres", pgtest.Superuser), pol)
	pgtest.Eventually(t, "the cancel", func() (bool, error) {
		var app string
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = $1", v.PID).Scan(&app)
		return app == tag+"-cancelled", err
	})
	// The victim sees its cancel before the daemon has read the reply of
	// the statement that sent it: frozen then, the daemon could only say
	// the session may have been signalled. A statement the daemon's
	// backend started after the cancel was seen means the reply was read
	// (one connection, one statement at a time).
	var seen time.Time
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT pg_catalog.clock_timestamp()").Scan(&seen); err != nil {
		t.Fatal(err)
	}
	daemonPID := d.connectedPID(t, tag)
	pgtest.Eventually(t, "the daemon's next statement", func() (bool, error) {
		var later bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
			"SELECT coalesce(query_start > $2, false) FROM pg_catalog.pg_stat_activity WHERE pid = $1", daemonPID, seen).Scan(&later)
		return later, err
	})

	p.Freeze()
	newDSN := dsn(t) + " application_name=" + tag + "-new"
	if err := os.WriteFile(d.path, []byte(policyText(t, newDSN, d.audit, pol)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	pgtest.Eventually(t, "the new connection", func() (bool, error) {
		var n int
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1", tag+"-new").Scan(&n)
		return n == 1, err
	})
	// Order, not timing: the old connection's loop had ended when the new
	// one was opened.
	if logs := d.logs.String(); !strings.Contains(logs, `"msg":"stopped watching the target"`) {
		t.Fatalf("the new DSN connected before the old connection stopped; log:\n%s", logs)
	}
	waitHealth(t, d, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	if testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues(tag)) != 1 {
		t.Error("pgreap_target_up is not 1")
	}
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != v.PID || e.Action != "cancel" || e.Outcome != "survived" {
		t.Errorf("audit %+v", got)
	}
}

// A reload that changes the DSN while a cancel-then-terminate's grace runs:
// the rule has not done what it says, so the watch that takes the target
// over judges the session again (cancel, grace, terminate), and the
// counters of what the old one did stay. The grace (5s) is the room the
// reload has to come in.
func TestReloadDuringAGraceStillTerminates(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-v"})
	v.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60);
		EXCEPTION WHEN query_canceled THEN PERFORM pg_catalog.set_config('application_name', '` + tag + `-v-cancelled', false); END; END LOOP; END $$`)
	v.WaitState("active", "")
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: stubborn
    match: {app: ["TAG-v*"], state: [active]}
    action: cancel-then-terminate
    grace: 5s
`
	d := startDaemon(t, dsn(t), pol)
	pgtest.Eventually(t, "the cancel", func() (bool, error) {
		var app string
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = $1", v.PID).Scan(&app)
		return app == tag+"-v-cancelled", err
	})
	if err := os.WriteFile(d.path, []byte(policyText(t, dsn(t)+" connect_timeout=7", d.audit, pol)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	pgtest.Eventually(t, "the terminate", func() (bool, error) { return !v.Alive(), nil })
	got := d.waitEntries(t, 2)
	if last := got[len(got)-1]; last.PID != v.PID || last.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	if n := testutil.ToFloat64(d.Metrics().Actions.WithLabelValues(tag, "stubborn", "cancel", "survived")); n < 1 {
		t.Errorf("the old watch's cancel survived is no longer counted: %v", n)
	}
}
