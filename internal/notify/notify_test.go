package notify

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A 429 is retried after its Retry-After (capped by MaxBackoff), a 400 is
// not retried, and what is queued at Close is sent within Flush.
func TestDelivery(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, string(b))
		n := len(got)
		mu.Unlock()
		switch {
		case n == 1:
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		case strings.Contains(string(b), "refused"):
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	n := New(slog.New(slog.NewJSONHandler(&logs, nil)), prometheus.NewRegistry(), Options{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	n.Set([]Sink{{Name: "s", URL: srv.URL + "/secret-path", Format: Slack, On: []Kind{Error}}})
	n.Send(Event{Kind: Error, Target: "main", Text: "first <!channel>"})
	n.Send(Event{Kind: Leader, Target: "main", Text: "not wanted"})
	n.Send(Event{Kind: Error, Target: "main", Text: "refused"})
	n.Send(Event{Kind: Error, Text: "last"})
	n.Close()
	m := n.Metrics()
	if s, f, d := testutil.ToFloat64(m.Sent.WithLabelValues("s")), testutil.ToFloat64(m.Failed.WithLabelValues("s")), testutil.ToFloat64(m.Dropped.WithLabelValues("s")); s != 2 || f != 1 || d != 0 {
		t.Fatalf("sent %v failed %v dropped %v, want 2 1 0", s, f, d)
	}
	want := []string{`{"text":"pgreap main: first \u0026lt;!channel\u0026gt;"}`, `{"text":"pgreap main: first \u0026lt;!channel\u0026gt;"}`, `{"text":"pgreap main: refused"}`, `{"text":"pgreap: last"}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("posted\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(logs.String(), "HTTP 400 Bad Request") || strings.Contains(logs.String(), "secret-path") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// Close gives a sink that does not answer Flush, then drops what it
// holds (counted) and returns.
func TestCloseBounded(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	n := New(slog.New(slog.NewJSONHandler(io.Discard, nil)), prometheus.NewRegistry(), Options{Flush: 50 * time.Millisecond, QueueSize: 10})
	n.Set([]Sink{{Name: "s", URL: srv.URL, Format: JSON, On: Kinds}})
	for range 5 {
		n.Send(Event{Kind: Acted, Fields: json.RawMessage(`{"rule":"r"}`)})
	}
	n.Close() // returns: the test would time out otherwise
	// The one in its POST when the time was up is dropped too: not failed.
	if d, f := testutil.ToFloat64(n.Metrics().Dropped.WithLabelValues("s")), testutil.ToFloat64(n.Metrics().Failed.WithLabelValues("s")); d != 5 || f != 0 {
		t.Fatalf("dropped %v, failed %v; want 5 and 0", d, f)
	}
}

// An event waiting for its retry when the daemon stops is dropped (what is
// left at the stop), not failed: said in the one log line of the drops.
func TestStopInBackoffDrops(t *testing.T) {
	tried := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		select {
		case tried <- struct{}{}:
		default:
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	n := New(slog.New(slog.NewJSONHandler(&logs, nil)), prometheus.NewRegistry(), Options{Flush: 50 * time.Millisecond, MinBackoff: time.Hour, MaxBackoff: time.Hour})
	n.Set([]Sink{{Name: "s", URL: srv.URL, Format: JSON, On: Kinds}})
	n.Send(Event{Kind: Error, Text: "down"})
	select {
	case <-tried:
	case <-time.After(time.Minute):
		t.Fatal("no attempt within a minute")
	}
	n.Close()
	m := n.Metrics()
	if s, f, d := testutil.ToFloat64(m.Sent.WithLabelValues("s")), testutil.ToFloat64(m.Failed.WithLabelValues("s")), testutil.ToFloat64(m.Dropped.WithLabelValues("s")); s != 0 || f != 0 || d != 1 {
		t.Fatalf("sent %v failed %v dropped %v, want 0 0 1", s, f, d)
	}
	if !strings.Contains(logs.String(), `"msg":"stopped before notifications were sent","sink":"s","dropped":1`) || strings.Contains(logs.String(), "not delivered") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

func TestRender(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		f    Format
		ev   Event
		want string
	}{
		{JSON, Event{Kind: Acted, Fields: json.RawMessage(`{"time":"x","rule":"r"}`), Text: "t"}, `{"event":"acted","time":"x","rule":"r"}`},
		{JSON, Event{Kind: Leader, Time: at, Target: "main", Text: "leading"}, `{"event":"leader","time":"2026-01-02T03:04:05Z","target":"main","message":"leading"}`},
		{Slack, Event{Kind: Acted, Target: "main", Text: "a & b\nc"}, `{"text":"pgreap main: a \u0026amp; b c"}`},
	} {
		b, err := Render(tt.f, tt.ev)
		if err != nil || string(b) != tt.want {
			t.Errorf("%s %v: %s (%v), want %s", tt.f, tt.ev.Kind, b, err, tt.want)
		}
	}
}
