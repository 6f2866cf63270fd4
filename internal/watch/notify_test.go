package watch_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// hook is a webhook server: it keeps what each path received.
type hook struct {
	*httptest.Server
	mu   sync.Mutex
	got  map[string][]posted
	code func(path string, n int) int // the status of the n-th POST to path (1-based); nil: 200
}

type posted struct {
	body   []byte
	header http.Header
}

func newHook(t *testing.T) *hook {
	h := &hook{got: map[string][]posted{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.got[r.URL.Path] = append(h.got[r.URL.Path], posted{b, r.Header.Clone()})
		n := len(h.got[r.URL.Path])
		code := h.code
		h.mu.Unlock()
		if code != nil {
			w.WriteHeader(code(r.URL.Path, n))
		}
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hook) posts(path string) []posted {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]posted(nil), h.got[path]...)
}

// wait waits for a POST to path whose body holds want, and returns it.
func (h *hook) wait(t *testing.T, path, want string) posted {
	t.Helper()
	var got posted
	pgtest.Eventually(t, "a POST to "+path+" with "+want, func() (bool, error) {
		for _, p := range h.posts(path) {
			if bytes.Contains(p.body, []byte(want)) {
				got = p
				return true, nil
			}
		}
		return false, nil
	})
	return got
}

// An action is sent to the webhooks as the audit line it wrote: in JSON,
// "event": "acted" and the audit line's fields, the same values; in
// Slack's format, one line of text. The lead taken is a leader event.
func TestNotifyActed(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	d := startDaemon(t, dsn(t), strings.ReplaceAll(`
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
notify:
  - {name: j, webhook: "HOOK/json", on: [acted, leader]}
  - {name: s, webhook: "HOOK/slack", format: slack, on: [acted]}
`, "HOOK", h.URL))
	leader := h.wait(t, "/json", `"event":"leader"`)
	var lead map[string]any
	if err := json.Unmarshal(leader.body, &lead); err != nil || lead["target"] != pgtest.Tag(t) || lead["message"] != "leading: this replica acts on the target" || lead["time"] == nil {
		t.Fatalf("leader event %s (%v)", leader.body, err)
	}
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	d.waitEntries(t, 1)
	raw, err := os.ReadFile(d.audit)
	if err != nil {
		t.Fatal(err)
	}
	var audit map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(raw), &audit); err != nil {
		t.Fatal(err)
	}
	got := h.wait(t, "/json", `"event":"acted"`)
	var sent map[string]any
	if err := json.Unmarshal(got.body, &sent); err != nil {
		t.Fatalf("%s: %v", got.body, err)
	}
	if got.header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", got.header.Get("Content-Type"))
	}
	delete(sent, "event")
	a, _ := json.Marshal(audit)
	s, _ := json.Marshal(sent)
	if !bytes.Equal(a, s) {
		t.Fatalf("the event's fields are not the audit line's:\nevent %s\naudit %s", s, a)
	}
	slack := h.wait(t, "/slack", "cancelled")
	var text map[string]string
	if err := json.Unmarshal(slack.body, &text); err != nil || len(text) != 1 {
		t.Fatalf("slack body %s (%v), want {\"text\": ...}", slack.body, err)
	}
	want := "pgreap " + pgtest.Tag(t) + ": rule slow: cancel pid "
	if !strings.HasPrefix(text["text"], want) || !strings.Contains(text["text"], "): cancelled") || strings.Contains(text["text"], "\n") {
		t.Fatalf("slack text %q, want %q... cancelled, one line", text["text"], want)
	}
	if n := len(h.posts("/slack")); n != 1 {
		t.Fatalf("%d POSTs to the slack sink (on: [acted]), want 1", n)
	}
}

// A webhook that never answers delays no action: a session that crosses
// its threshold while the sink hangs is cancelled at its threshold (with
// a blocking queue the daemon would wait on the sink for ever), and the
// events the full queue cannot take are dropped and counted, with one log
// line for the burst.
func TestNotifyHangingSink(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	release := make(chan struct{})
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	d := startDaemonOpts(t, dsn(t), strings.ReplaceAll(`
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: ["TAG-*"], state: [active], longer_than: 1s}
    action: cancel
notify:
  - {name: hangs, webhook: "HOOK/x", on: [acted]}
`, "HOOK", srv.URL), watch.Options{Notify: notify.Options{QueueSize: 1, Flush: 100 * time.Millisecond}})
	var first []*pgtest.Victim
	for _, app := range []string{"-1", "-2", "-3"} {
		v := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + app})
		v.Start("SELECT pg_catalog.pg_sleep(60)")
		first = append(first, v)
	}
	for _, v := range first {
		if code := pgtest.SQLState(v.Wait()); code != "57014" {
			t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
		}
	}
	d.waitEntries(t, 3)
	pgtest.Eventually(t, "the sink holding a request", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return requests >= 1, nil
	})
	// The sink hangs on the first event, the queue holds one: the third
	// is dropped.
	pgtest.Eventually(t, "a drop counted", func() (bool, error) {
		return testutil.ToFloat64(d.notify(t).Dropped.WithLabelValues("hangs")) >= 1, nil
	})
	last := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-4"})
	last.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(last.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	overshoot(t, last, time.Second)
	d.waitEntries(t, 4)
	if n := testutil.ToFloat64(d.notify(t).Dropped.WithLabelValues("hangs")); n < 2 {
		t.Fatalf("pgreap_notify_dropped_total %v, want 2 or more (4 events, one in flight, one queued)", n)
	}
	if n := strings.Count(d.logs.String(), "notification queue full"); n != 1 {
		t.Fatalf("%d log lines say the queue is full, want 1 for the burst:\n%s", n, d.logs.String())
	}
}

// notify is the daemon's notifier metrics.
func (d *daemon) notify(t *testing.T) *notify.Metrics {
	t.Helper()
	return d.NotifyMetrics()
}

// Headers from the environment (${NAME}) and from a headers_file reach
// the webhook and are in no log line; a POST answered 500 is retried; a
// reload with a bad notify block keeps the sinks in force (they are told
// it was rejected), a good one swaps them.
func TestNotifyHeadersRetryReload(t *testing.T) {
	t.Setenv("PGREAP_TEST_NOTIFY_TOKEN", "env-secret-1")
	h := newHook(t)
	h.code = func(path string, n int) int {
		if path == "/a" && n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	dir := t.TempDir()
	headers := filepath.Join(dir, "headers")
	if err := os.WriteFile(headers, []byte("# the webhook's key\nX-Api-Key: file-secret-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("HOOK", h.URL, "HEADERS", headers).Replace(`
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
notify:
  - webhook: "HOOK/a"
    headers: {Authorization: "Bearer ${PGREAP_TEST_NOTIFY_TOKEN}"}
    headers_file: HEADERS
    on: [leader, error]
`)
	d := startDaemonOpts(t, dsn(t), text, watch.Options{Notify: notify.Options{MinBackoff: 10 * time.Millisecond}})
	host := strings.TrimPrefix(h.URL, "http://")
	pgtest.Eventually(t, "the leader event sent after a 500", func() (bool, error) {
		return testutil.ToFloat64(d.notify(t).Sent.WithLabelValues(host)) == 1, nil
	})
	posts := h.posts("/a")
	if len(posts) != 2 || !bytes.Equal(posts[0].body, posts[1].body) || !bytes.Contains(posts[1].body, []byte(`"event":"leader"`)) {
		t.Fatalf("POSTs %q, want the leader event twice (a 500, then 200)", posts)
	}
	for _, p := range posts {
		if p.header.Get("Authorization") != "Bearer env-secret-1" || p.header.Get("X-Api-Key") != "file-secret-2" {
			t.Fatalf("headers %v", p.header)
		}
	}

	// A bad notify block: rejected, the sink in force is told.
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(d.path, []byte(policyText(t, dsn(t), d.audit, text)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Replace(text, "on: [leader, error]", "on: [leader, error]\n    format: xml", 1))
	d.Reload(pgtest.Context(t))
	rejected := h.wait(t, "/a", `"event":"error"`)
	if !bytes.Contains(rejected.body, []byte(`format \"xml\": not json or slack`)) || !bytes.Contains(rejected.body, []byte(`"target":null`)) {
		t.Fatalf("error event %s", rejected.body)
	}
	// A good one swaps the sinks: the next event goes to the new one only.
	write(strings.Replace(text, h.URL+"/a", h.URL+"/b", 1))
	d.Reload(pgtest.Context(t))
	write("not: [a policy")
	d.Reload(pgtest.Context(t))
	h.wait(t, "/b", `"event":"error"`)
	if n := len(h.posts("/a")); n != 3 {
		t.Fatalf("%d POSTs to the sink dropped by the reload, want 3", n)
	}
	for _, secret := range []string{"env-secret-1", "file-secret-2"} {
		if strings.Contains(d.logs.String(), secret) {
			t.Fatalf("the log holds %s:\n%s", secret, d.logs.String())
		}
	}
	if testutil.ToFloat64(d.notify(t).Failed.WithLabelValues(host)) != 0 {
		t.Fatal("an event counted failed")
	}
}

// A session a rule past its max_actions would have acted on is audited
// suppressed (budget.go), and that audit line reaches the sinks as a
// suppressed event, not an acted one.
func TestNotifySuppressed(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	tag := pgtest.Tag(t)
	vs := sleepers(t, tag, 2)
	for _, v := range vs {
		olderThan(t, v, time.Second)
	}
	d, clk := startFake(t, dsn(t), strings.ReplaceAll(`
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], query: "pg_sleep", longer_than: 1s}
    action: cancel
    max_actions: {count: 1, per: 10m}
notify:
  - {name: j, webhook: "HOOK/json", on: [suppressed]}
`, "HOOK", h.URL))
	clk.Step(t)
	clk.Waiting(t)
	var line watch.Entry
	for _, e := range d.entries(t) {
		if e.Outcome == "suppressed" {
			line = e
		}
	}
	if line.PID == 0 {
		t.Fatalf("no suppressed audit line: %+v", d.entries(t))
	}
	got := h.wait(t, "/json", `"event":"suppressed"`)
	var sent map[string]any
	if err := json.Unmarshal(got.body, &sent); err != nil {
		t.Fatalf("%s: %v", got.body, err)
	}
	if sent["outcome"] != "suppressed" || sent["rule"] != "slow" || sent["pid"] != float64(line.PID) {
		t.Fatalf("suppressed event %s, want the audit line of pid %d", got.body, line.PID)
	}
	for _, p := range h.posts("/json") {
		if bytes.Contains(p.body, []byte(`"event":"acted"`)) {
			t.Fatalf("an acted event reached a sink with on: [suppressed]: %s", p.body)
		}
	}
}
