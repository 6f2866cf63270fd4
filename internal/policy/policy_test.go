package policy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/policy"
)

const good = `targets:
  - name: main
    dsn: "host=/tmp dbname=postgres"
interval: 2s
audit_log: /tmp/audit.jsonl
protect:
  users: [replicator]
  apps: ["pg_dump*"]
rules:
  - name: runaway-reports
    match:
      app: ["report*"]
      state: [active]
      longer_than: 5m
    action: cancel
  - name: stuck
    match:
      state: ["idle in transaction"]
      longer_than: 10m
    action: cancel-then-terminate
    dry_run: true
`

func TestParseGood(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Targets) != 1 || p.Targets[0].Name != "main" || p.Interval != 2*time.Second ||
		p.MetricsAddr != policy.DefaultMetricsAddr || p.AuditLog != "/tmp/audit.jsonl" {
		t.Fatalf("policy %+v", p)
	}
	if p.AuditQuery != policy.QueryFull {
		t.Fatalf("audit query %q, want full by default", p.AuditQuery)
	}
	if len(p.Rules) != 2 || p.Rules[0].Action != policy.Cancel || p.Rules[0].Selector.LongerThan != 5*time.Minute ||
		p.Rules[1].Grace != policy.DefaultGrace || !p.Rules[1].DryRun {
		t.Fatalf("rules %+v", p.Rules)
	}
	// A cancel chooses only sessions that run a query; the other
	// actions, any state their match allows.
	if st := p.Rules[0].Selector.State; len(st) != 1 || st[0] != "active" || len(p.Rules[1].Selector.State) != 1 {
		t.Fatalf("states %v, %v", st, p.Rules[1].Selector.State)
	}
	if p.Targets[0].PgBouncer != nil {
		t.Fatalf("pgbouncer %v, want none", p.Targets[0].PgBouncer)
	}
	pooled, err := policy.Parse("p.yaml", []byte(strings.Replace(good, "dbname=postgres\"", "dbname=postgres\"\n    pgbouncer: [\"host=pgb1 port=6432 user=stats\"]", 1)))
	if err != nil || len(pooled.Targets[0].PgBouncer) != 1 {
		t.Fatalf("target with a pgbouncer: %v %+v", err, pooled)
	}
	blocking, err := policy.Parse("p.yaml", []byte(strings.Replace(good, "longer_than: 10m", "blocking_longer_than: 30s", 1)))
	if err != nil || blocking.Rules[1].Selector.BlockingLongerThan != 30*time.Second {
		t.Fatalf("blocking_longer_than: %v %+v", err, blocking)
	}
	g := p.Rules[0].Guarded(p.Protect)
	if len(g.ExcludeUser) != 1 || g.ExcludeUser[0] != "replicator" || len(g.ExcludeApp) != 1 || len(p.Rules[0].Selector.ExcludeApp) != 0 {
		t.Fatalf("guarded %+v", g)
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top key", "targets: [{name: a}]\nintervall: 5s\nrules: []\n", "p.yaml:2: unknown key \"intervall\""},
		{"unknown rule key", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    actoin: terminate\n", 1), "p.yaml:16: unknown key \"actoin\""},
		{"unknown match key", strings.Replace(good, "      app: [\"report*\"]", "      application: [\"report*\"]", 1), "p.yaml:12: unknown key \"application\""},
		{"bad duration", strings.Replace(good, "longer_than: 5m", "longer_than: 5 minutes", 1), "p.yaml:14: rule \"runaway-reports\": longer_than \"5 minutes\""},
		{"bad blocking_longer_than", strings.Replace(good, "longer_than: 10m", "blocking_longer_than: 10 minutes", 1), "p.yaml:19: rule \"stuck\": blocking_longer_than \"10 minutes\": not a duration"},
		{"zero blocking_longer_than", strings.Replace(good, "longer_than: 10m", "blocking_longer_than: 0s", 1), "p.yaml:19: rule \"stuck\": blocking_longer_than \"0s\": must be more than zero"},
		{"bad interval", strings.Replace(good, "interval: 2s", "interval: soon", 1), "p.yaml:4: interval \"soon\": not a duration"},
		{"tiny interval", strings.Replace(good, "interval: 2s", "interval: 5ms", 1), "p.yaml:4: interval 5ms: at least 100ms"},
		{"bad action", strings.Replace(good, "action: cancel\n", "action: kill\n", 1), "p.yaml:15: rule \"runaway-reports\": action \"kill\""},
		{"no action", strings.Replace(good, "    action: cancel\n", "", 1), "p.yaml:10: rule \"runaway-reports\": no action"},
		{"grace on cancel", strings.Replace(good, "action: cancel\n", "action: cancel\n    grace: 5s\n", 1), "p.yaml:16: rule \"runaway-reports\": grace is for cancel-then-terminate"},
		{"cancel of idle sessions", strings.Replace(good, "state: [active]", "state: [idle, \"idle in transaction*\"]", 1), "p.yaml:13: rule \"runaway-reports\": a cancel ends a running query, and state idle, idle in transaction* never runs one (active, fastpath function call)"},
		{"bad regex", strings.Replace(good, "      state: [active]\n", "      query: \"(\"\n", 1), "p.yaml:13: rule \"runaway-reports\": query \"(\""},
		{"bad cidr", strings.Replace(good, "      state: [active]\n", "      client: [10.0.0.0/99]\n", 1), "p.yaml:13: rule \"runaway-reports\": client \"10.0.0.0/99\""},
		{"empty match", strings.Replace(good, "    match:\n      app: [\"report*\"]\n      state: [active]\n      longer_than: 5m\n", "    match: {}\n", 1), "p.yaml:11: rule \"runaway-reports\": match chooses nothing"},
		{"wrong type", strings.Replace(good, "dry_run: true", "dry_run: sometimes", 1), "p.yaml:21: cannot unmarshal str `sometimes` into bool"},
		{"blank dry_run", strings.Replace(good, "dry_run: true", "dry_run:", 1), "p.yaml:21: no value: say true or false"},
		{"a blank bool through a merge key", strings.Replace(good, "  - name: stuck\n", "  - <<: {dry_run: }\n    name: stuck\n", 1), "p.yaml:16: unknown key \"<<\" (known here: name, match, action, grace, dry_run, max_actions)"},
		{"a merge key", strings.Replace(good, "    match:\n      app: [\"report*\"]\n", "    match:\n      <<: {app: [\"report*\"]}\n", 1), "p.yaml:12: unknown key \"<<\""},
		{"a string for a mapping", strings.Replace(good, "audit_log: /tmp/audit.jsonl\n", "audit_log: /tmp/audit.jsonl\naudit: full\n", 1), "p.yaml:6: expected a mapping of query, found a string"},
		{"a webhook URL for a notify item", good + "notify:\n  - https://hooks.example/services/T0/secret-token\n", "p.yaml:23: expected a mapping of name, webhook, headers, headers_file, on, format, found a string"},
		{"a DSN for a target", strings.Replace(good, "  - name: main\n    dsn: \"host=/tmp dbname=postgres\"\n", "  - \"postgres://u:secret@h/db\"\n", 1), "p.yaml:2: expected a mapping of name, dsn"},
		{"a root that waits", strings.Replace(good, "      state: [active]\n      longer_than: 5m\n", "      blocking_longer_than: 5m\n      waiting: true\n", 1), "p.yaml:14: rule \"runaway-reports\": blocking_longer_than chooses the roots of lock waits, which wait on no lock: with waiting: true it matches nothing"},
		{"a key named -", strings.Replace(good, "      state: [active]\n", "      state: [active]\n      \"-\": 1s\n", 1), "p.yaml:14: unknown key \"-\""},
		{"duplicate rule", strings.Replace(good, "name: stuck", "name: runaway-reports", 1), "p.yaml:16: rule \"runaway-reports\" is defined twice (first at line 10)"},
		{"no targets", strings.Replace(good, "targets:\n  - name: main\n    dsn: \"host=/tmp dbname=postgres\"\n", "", 1), "p.yaml:1: no targets"},
		{"no rules", good[:strings.Index(good, "rules:")], "p.yaml:1: no rules"},
		{"bad dsn", strings.Replace(good, `dsn: "host=/tmp dbname=postgres"`, `dsn: "host=/tmp port=notaport"`, 1), "p.yaml:3: target \"main\": dsn:"},
		{"bad pgbouncer", strings.Replace(good, `dsn: "host=/tmp dbname=postgres"`, "dsn: \"host=/tmp dbname=postgres\"\n    pgbouncer: [\"host=pgb1 port=6432\", \"host=pgb2 password=secret port=x\"]", 1), "p.yaml:4: target \"main\": pgbouncer: "},
		{"bad audit query", strings.Replace(good, "audit_log: /tmp/audit.jsonl\n", "audit_log: /tmp/audit.jsonl\naudit:\n  query: redacted\n", 1), "p.yaml:7: audit query \"redacted\": not full or none"},
		{"unknown audit key", strings.Replace(good, "audit_log: /tmp/audit.jsonl\n", "audit_log: /tmp/audit.jsonl\naudit: {queries: none}\n", 1), "p.yaml:6: unknown key \"queries\""},
		{"dsn the daemon refuses", strings.Replace(good, `dsn: "host=/tmp dbname=postgres"`, `dsn: "host=/tmp password=secret connect_timeout=soon"`, 1), "p.yaml:3: target \"main\": dsn: "},
		{"bad metrics", strings.Replace(good, "interval: 2s", "interval: 2s\nmetrics_addr: 9188", 1), "p.yaml:5: metrics_addr \"9188\": not HOST:PORT"},
		{"not yaml", "targets: [", "p.yaml:1: did not find expected node content"},
		{"a list", "- a\n- b\n", "p.yaml:1: expected a mapping of targets"},
		{"empty", "", "p.yaml: empty"},
		{"budget without per", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 3}\n", 1), "p.yaml:16: rule \"runaway-reports\": max_actions: say both count and per"},
		{"budget of zero", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 0, per: 1m}\n", 1), "p.yaml:16: rule \"runaway-reports\": max_actions: count 0: at least 1"},
		{"budget per zero", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions:\n      count: 3\n      per: 0s\n", 1), "p.yaml:18: rule \"runaway-reports\": max_actions: per \"0s\": must be more than zero"},
		{"budget per not a duration", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 3, per: hourly}\n", 1), "p.yaml:16: rule \"runaway-reports\": max_actions: per \"hourly\": not a duration"},
		{"budget count not a number", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: many, per: 1m}\n", 1), "p.yaml:16: cannot unmarshal str `many` into int"},
		{"budget unknown key", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 3, every: 1m}\n", 1), "p.yaml:16: unknown key \"every\" (known here: count, per)"},
		{"budget not a mapping", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: 3\n", 1), "p.yaml:16: expected a mapping of count, per, found a number"},
		{"global budget negative", strings.Replace(good, "interval: 2s", "interval: 2s\nmax_actions: {count: -1, per: 1h}", 1), "p.yaml:5: max_actions: count -1: at least 1"},
		{"budget count not whole", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 2.5, per: 1m}\n", 1), "p.yaml:16: rule \"runaway-reports\": max_actions: count 2.5: a whole number of sessions"},
		{"budget count a float", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions:\n      count: 3.0\n      per: 1m\n", 1), "p.yaml:17: rule \"runaway-reports\": max_actions: count 3.0: a whole number of sessions"},
		{"budget per below a second", strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 3, per: 1ns}\n", 1), "p.yaml:16: rule \"runaway-reports\": max_actions: per 1ns: at least 1s"},
		{"global budget count not whole", strings.Replace(good, "interval: 2s", "interval: 2s\nmax_actions: {count: 1e3, per: 1h}", 1), "p.yaml:5: max_actions: count 1e3: a whole number of sessions"},
		{"global budget per below a second", strings.Replace(good, "interval: 2s", "interval: 2s\nmax_actions:\n  count: 5\n  per: 999ms", 1), "p.yaml:7: max_actions: per 999ms: at least 1s"},
		{"global budget empty", strings.Replace(good, "interval: 2s", "interval: 2s\nmax_actions: {}", 1), "p.yaml:5: max_actions: say both count and per"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policy.Parse("p.yaml", []byte(tt.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "secret") {
				t.Fatalf("err = %v\nwant one line starting %q", err, tt.want)
			}
		})
	}
}

func TestAuditQueryNone(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(strings.Replace(good, "interval: 2s", "audit: {query: none}", 1)))
	if err != nil || p.AuditQuery != policy.QueryNone {
		t.Fatalf("%v, %+v", err, p)
	}
}

func TestMetricsOff(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(strings.Replace(good, "interval: 2s", "metrics_addr: \"off\"", 1)))
	if err != nil || p.MetricsAddr != "" || p.Interval != policy.DefaultInterval {
		t.Fatalf("%+v %v", p, err)
	}
}

func TestInclude(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("fleet/a.yaml", "- name: db1\n  dsn: host=db1\n- name: db2\n  dsn: host=db2\n")
	write("fleet/b.yaml", "- name: db3\n  dsn: host=db3\n")
	pol := write("policy.yaml", strings.Replace(good, "  - name: main\n", "  - include: fleet/*.yaml\n  - name: main\n", 1))
	p, err := policy.Load(pol)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range p.Targets {
		names = append(names, tg.Name)
	}
	if strings.Join(names, ",") != "db1,db2,db3,main" {
		t.Fatalf("targets %v", names)
	}
	bad := write("fleet2/c.yaml", "- name: db9\n  dns: host=db9\n")
	pol2 := write("policy2.yaml", strings.Replace(good, "  - name: main\n", "  - include: fleet2/*.yaml\n  - name: main\n", 1))
	if _, err := policy.Load(pol2); err == nil || err.Error() != bad+":2: unknown key \"dns\" (known here: name, dsn, pgbouncer)" {
		t.Fatalf("err = %v", err)
	}
	pol3 := write("policy3.yaml", strings.Replace(good, "  - name: main\n", "  - include: nothing/*.yaml\n  - name: main\n", 1))
	if _, err := policy.Load(pol3); err == nil || !strings.Contains(err.Error(), "policy3.yaml:2: include \"nothing/*.yaml\": no file matches") {
		t.Fatalf("err = %v", err)
	}
	if _, err := policy.Load(filepath.Join(dir, "missing.yaml")); err == nil || err.Error() != filepath.Join(dir, "missing.yaml")+": no such file or directory" {
		t.Fatalf("err = %v", err)
	}
}

func TestNotes(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(strings.Replace(good, "interval: 2s", "interval: 10m", 1)))
	if err != nil {
		t.Fatal(err)
	}
	notes := p.Notes()
	if len(notes) != 1 || !strings.HasPrefix(notes[0], "rule runaway-reports: longer_than 5m0s is shorter than the interval 10m0s") {
		t.Fatalf("notes %q", notes)
	}
	var b strings.Builder
	p.Summary(&b)
	if !strings.Contains(b.String(), "\nnote: rule runaway-reports") {
		t.Fatalf("summary:\n%s", b.String())
	}
	if q, _ := policy.Parse("p.yaml", []byte(good)); len(q.Notes()) != 0 {
		t.Fatalf("notes %q", q.Notes())
	}
}

// max_actions caps a rule, and all the rules of each target; --check says
// both.
func TestBudget(t *testing.T) {
	text := strings.Replace(good, "    action: cancel\n", "    action: cancel\n    max_actions: {count: 20, per: 10m}\n", 1)
	text = strings.Replace(text, "interval: 2s", "interval: 2s\nmax_actions:\n  count: 50\n  per: 1h", 1)
	p, err := policy.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if b := p.Rules[0].MaxActions; b == nil || *b != (policy.Budget{Count: 20, Per: 10 * time.Minute}) || p.Rules[1].MaxActions != nil {
		t.Fatalf("rule budgets %+v, %+v", p.Rules[0].MaxActions, p.Rules[1].MaxActions)
	}
	if b := p.MaxActions; b == nil || *b != (policy.Budget{Count: 50, Per: time.Hour}) {
		t.Fatalf("global budget %+v", b)
	}
	var b strings.Builder
	p.Summary(&b)
	for _, want := range []string{
		"\nmax_actions: at most 50 per 1h0m0s on each target, all real rules together",
		"1. runaway-reports: cancel, at most 20 per 10m0s when ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
	if q, _ := policy.Parse("p.yaml", []byte(good)); q.MaxActions != nil || q.Rules[0].MaxActions != nil {
		t.Fatalf("budgets without max_actions: %+v", q)
	}
}

// Any input: no panic, and an error is one line naming the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("targets: [{name: a, dsn: x}]\nrules: [{name: r, match: {app: [x]}, action: cancel}]\n"))
	f.Add([]byte("targets: [{include: '*.yaml'}]\n"))
	f.Add([]byte("rules: [{match: {query: '('}}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := policy.Parse("p.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "p.yaml") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q", err)
			}
			return
		}
		if len(p.Targets) == 0 || len(p.Rules) == 0 {
			t.Fatalf("accepted a policy without targets or rules: %+v", p)
		}
	})
}

// A cancel rule's selection is narrowed to the sessions that run a query,
// whatever states its match names.
func TestCancelChoosesRunningQueries(t *testing.T) {
	tests := []struct {
		name, match string
		want        []string
	}{
		{"no state", "app: [x]", []string{"active", "fastpath function call"}},
		{"active", "state: [active]", []string{"active"}},
		{"every state", `state: ["*"]`, []string{"active", "fastpath function call"}},
		{"idle and fastpath", `state: [idle, "fastpath*"]`, []string{"fastpath function call"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte("targets: [{name: a, dsn: \"dbname=x\"}]\nrules: [{name: r, match: {"+tt.match+"}, action: cancel}]\n"))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Rules[0].Selector.State; strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("states %q, want %q", got, tt.want)
			}
		})
	}
}

// A policy (or a file it includes) anyone may write is refused: whoever
// writes it decides what the daemon ends and where its notifications go.
func TestWorldWritablePolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Load(path); err != nil {
		t.Fatalf("a policy of mode 0600: %v", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Load(path); err == nil || err.Error() != path+": writable by anyone (mode 0666): chmod o-w it" {
		t.Fatalf("a policy of mode 0666: %v", err)
	}
}
