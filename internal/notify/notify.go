package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Event is one thing to tell the sinks.
type Event struct {
	Kind   Kind
	Time   time.Time
	Target string // "" when the event is the daemon's (a reload rejected)
	// Fields is a JSON object (an audit line) that the JSON format sends
	// after "event"; nil: the JSON format sends time, target and Text as
	// message.
	Fields json.RawMessage
	// Text is one line for people: the Slack format's text.
	Text string
}

// Options tune the delivery; a zero field takes its default.
type Options struct {
	// QueueSize bounds the events waiting per sink (1000).
	QueueSize int
	// Timeout bounds one POST, the answer's body included (10s).
	Timeout time.Duration
	// Attempts is how many POSTs an event gets at most (5).
	Attempts int
	// MinBackoff is the wait after the first failed attempt (1s),
	// doubling up to MaxBackoff (30s), with jitter; a Retry-After is
	// honoured up to MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Flush bounds how long Close (SIGTERM) and a reload that drops a
	// sink let it send what is queued (1s: a stop stays prompt).
	Flush time.Duration
}

func (o Options) orDefault() Options {
	pick := func(v, d time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return d
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1000
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	o.Timeout = pick(o.Timeout, 10*time.Second)
	o.MinBackoff = pick(o.MinBackoff, time.Second)
	o.MaxBackoff = pick(o.MaxBackoff, 30*time.Second)
	o.Flush = pick(o.Flush, time.Second)
	return o
}

// Metrics count what each sink did with its events.
type Metrics struct {
	Sent, Failed, Dropped *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgreap_notify_sent_total", Help: "Events a webhook accepted (2xx).",
		}, []string{"sink"}),
		Failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgreap_notify_failed_total", Help: "Events given up after their last attempt, or refused by the webhook (a 4xx other than 429).",
		}, []string{"sink"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgreap_notify_dropped_total", Help: "Events never delivered: the sink's queue was full, or the daemon stopped before their turn or while they were retried.",
		}, []string{"sink"}),
	}
	reg.MustRegister(m.Sent, m.Failed, m.Dropped)
	return m
}

// Notifier sends events to the sinks in force.
type Notifier struct {
	log     *slog.Logger
	opt     Options
	metrics *Metrics
	client  *http.Client

	mu    sync.Mutex
	sinks []*sink
	wg    sync.WaitGroup
}

// New is a Notifier without sinks; its metrics are registered on reg.
func New(log *slog.Logger, reg prometheus.Registerer, opt Options) *Notifier {
	return &Notifier{
		log: log, opt: opt.orDefault(), metrics: newMetrics(reg),
		client: &http.Client{
			// A redirect would carry the headers elsewhere: the URL
			// configured is the one posted to.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Metrics are the notifier's series (tests read them).
func (n *Notifier) Metrics() *Metrics { return n.metrics }

// sink is a Sink with its queue and worker.
type sink struct {
	Sink
	q      chan Event
	ctx    context.Context // ends when the flush time is up
	cancel context.CancelFunc
	// dropped counts the drops of the current burst (under Notifier.mu).
	dropped int
}

// Set makes sinks the sinks in force (a reload): a sink unchanged keeps
// its queue; one gone sends what it has queued, for Options.Flush at most.
func (n *Notifier) Set(sinks []Sink) {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.sinks
	n.sinks = nil
	for _, cfg := range sinks {
		kept := false
		for i, o := range old {
			if o != nil && reflect.DeepEqual(o.Sink, cfg) {
				n.sinks, old[i], kept = append(n.sinks, o), nil, true
				break
			}
		}
		if !kept {
			n.sinks = append(n.sinks, n.start(cfg))
		}
	}
	for _, o := range old {
		if o != nil {
			n.retire(o)
		}
	}
}

func (n *Notifier) start(cfg Sink) *sink {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sink{Sink: cfg, q: make(chan Event, n.opt.QueueSize), ctx: ctx, cancel: cancel}
	// The series exist from the start, at 0: an alert on a rate sees the
	// first drop.
	n.metrics.Sent.WithLabelValues(s.Name)
	n.metrics.Failed.WithLabelValues(s.Name)
	n.metrics.Dropped.WithLabelValues(s.Name)
	n.wg.Add(1)
	go n.work(s)
	return s
}

// retire closes the queue (under n.mu, so that no Send follows) and ends
// the sink's last attempts once the flush time is up.
func (n *Notifier) retire(s *sink) {
	close(s.q)
	time.AfterFunc(n.opt.Flush, s.cancel)
}

// Send queues ev for every sink that wants it. It never blocks: an event
// a full queue cannot take is dropped, counted, and logged once per burst.
func (n *Notifier) Send(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.sinks {
		if !s.Wants(ev.Kind) {
			continue
		}
		select {
		case s.q <- ev:
			if s.dropped > 0 {
				n.log.Warn("notification queue takes events again", "sink", s.Name, "dropped", s.dropped)
				s.dropped = 0
			}
		default:
			n.metrics.Dropped.WithLabelValues(s.Name).Inc()
			if s.dropped == 0 {
				n.log.Error("notification queue full: dropping events until it drains (pgreap_notify_dropped_total counts them)",
					"sink", s.Name, "queue", cap(s.q), "event", string(ev.Kind))
			}
			s.dropped++
		}
	}
}

// Close stops taking events and lets each sink send what it has queued,
// for Options.Flush at most; the rest is dropped (counted).
func (n *Notifier) Close() {
	n.mu.Lock()
	for _, s := range n.sinks {
		n.retire(s)
	}
	n.sinks = nil
	n.mu.Unlock()
	n.wg.Wait()
}

// work posts the sink's events in order until its queue is closed and
// drained, or its flush time is up.
func (n *Notifier) work(s *sink) {
	defer n.wg.Done()
	defer s.cancel()
	lost := 0
	for ev := range s.q {
		if s.ctx.Err() != nil || !n.deliver(s, ev) {
			lost++
		}
	}
	if lost > 0 {
		n.metrics.Dropped.WithLabelValues(s.Name).Add(float64(lost))
		n.log.Warn("stopped before notifications were sent", "sink", s.Name, "dropped", lost)
	}
}

// deliver posts one event, retrying what may succeed later. It is false
// when the stop (the flush time up) ended it before the event was sent or
// given up: the caller counts it dropped, as what is left in the queue.
func (n *Notifier) deliver(s *sink, ev Event) bool {
	body, err := Render(s.Format, ev)
	if err != nil {
		n.metrics.Failed.WithLabelValues(s.Name).Inc()
		n.log.Error("notification not sent", "sink", s.Name, "event", string(ev.Kind), "err", err.Error())
		return true
	}
	for attempt := 1; ; attempt++ {
		retry, wait, err := n.post(s, body)
		if err == nil {
			n.metrics.Sent.WithLabelValues(s.Name).Inc()
			return true
		}
		if retry && s.ctx.Err() != nil {
			// Cut short by the stop, in its POST or its backoff: it would
			// have been tried again, not failed.
			return false
		}
		if !retry || attempt >= n.opt.Attempts {
			n.metrics.Failed.WithLabelValues(s.Name).Inc()
			n.log.Error("notification not delivered", "sink", s.Name, "event", string(ev.Kind), "attempts", attempt, "err", err.Error())
			return true
		}
		if wait <= 0 {
			d := min(n.opt.MinBackoff<<(attempt-1), n.opt.MaxBackoff)
			wait = d/2 + rand.N(d/2+1)
		}
		n.log.Debug("notification failed, retrying", "sink", s.Name, "event", string(ev.Kind), "attempt", attempt, "retry_in", wait.String(), "err", err.Error())
		t := time.NewTimer(wait)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// post makes one attempt: nil on 2xx; else whether to retry, and after how
// long the server asked (Retry-After, capped; 0: the backoff decides).
// Its errors never hold the URL.
func (n *Notifier) post(s *sink, body []byte) (retry bool, wait time.Duration, err error) {
	ctx, cancel := context.WithTimeout(s.ctx, n.opt.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return false, 0, errors.New("cannot make the request") // checked by the policy: not reached
	}
	for k, v := range s.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "pgreap")
	}
	resp, err := n.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s", n.opt.Timeout)
		}
		return true, 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return false, 0, nil
	case c == http.StatusTooManyRequests || c >= 500:
		return true, min(retryAfter(resp.Header.Get("Retry-After"), time.Now()), n.opt.MaxBackoff), fmt.Errorf("HTTP %s", resp.Status)
	default:
		return false, 0, fmt.Errorf("HTTP %s", resp.Status)
	}
}

// retryAfter reads a Retry-After header (seconds or an HTTP date); 0 when
// absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// Render is the POST body of ev in format f.
func Render(f Format, ev Event) ([]byte, error) {
	if f == Slack {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{slackEscape(Line(ev))})
	}
	if len(ev.Fields) > 0 {
		fields := bytes.TrimSpace(ev.Fields)
		if len(fields) < 2 || fields[0] != '{' {
			return nil, errors.New("the event's fields are not a JSON object")
		}
		head, _ := json.Marshal(map[string]Kind{"event": ev.Kind})
		out := append(head[:len(head)-1:len(head)-1], ',')
		if string(fields) == "{}" {
			return head, nil
		}
		return append(out, fields[1:]...), nil
	}
	return json.Marshal(struct {
		Event   Kind      `json:"event"`
		Time    time.Time `json:"time"`
		Target  *string   `json:"target"`
		Message string    `json:"message"`
	}{ev.Kind, ev.Time.UTC(), nullable(ev.Target), ev.Text})
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Line is the event as one line for people.
func Line(ev Event) string {
	where := "pgreap"
	if ev.Target != "" {
		where += " " + ev.Target
	}
	return where + ": " + strings.Join(strings.Fields(ev.Text), " ")
}

// slackEscape escapes what Slack reads as markup: <!channel> and links.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
