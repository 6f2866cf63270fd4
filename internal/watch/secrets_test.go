package watch_test

import (
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// A policy reloaded (SIGHUP) with a DSN the daemon refuses is rejected
// with a log line that does not hold the DSN's password.
func TestReloadLogHidesThePassword(t *testing.T) {
	t.Parallel()
	const text = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: first
    match: {app: ["TAG-a*"], state: [active]}
    action: cancel
`
	d := startDaemon(t, dsn(t), text)
	for _, bad := range []string{`postgres://u:secret@h:5x/db`, `password=a\\ secret port=5x`, `password=secret connect_timeout=soon`} {
		if err := os.WriteFile(d.path, []byte(policyText(t, bad, d.audit, text)), 0o600); err != nil {
			t.Fatal(err)
		}
		d.Reload(pgtest.Context(t))
		logs := d.logs.String()
		if testutil.ToFloat64(d.Metrics().ReloadSuccess) != 0 || !strings.Contains(logs, "policy rejected, keeping the one in force") {
			t.Fatalf("%s: bad policy accepted; log:\n%s", bad, logs)
		}
		if strings.Contains(logs, "secret") {
			t.Fatalf("%s: the log holds the password:\n%s", bad, logs)
		}
	}
}

// With audit: {query: none}, neither the audit line ("query": null) nor
// the log holds the text of the query acted on, which may carry a secret
// as a literal.
func TestAuditQueryNone(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
audit: {query: none}
metrics_addr: "off"
rules:
  - name: first
    match: {app: ["TAG-a*"], state: [active]}
    action: cancel
`)
	const literal = "PASSWORD 'hunter2-literal'"
	v := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-a1"})
	v.Start("SELECT pg_catalog.pg_sleep(60), '" + strings.ReplaceAll(literal, "'", "''") + "'")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("not cancelled: SQLSTATE %q", code)
	}
	got := d.waitEntries(t, 1)
	raw, err := os.ReadFile(d.audit)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].PID != v.PID || got[0].Query != nil || !strings.Contains(string(raw), `"query":null`) {
		t.Fatalf("audit: %s", raw)
	}
	if strings.Contains(string(raw), "hunter2") || strings.Contains(d.logs.String(), "hunter2") {
		t.Fatalf("the query text is in the audit log or the log:\n%s\n%s", raw, d.logs.String())
	}
}
