package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/pooler"
)

// AppName is the application_name of the daemon's connections, unless a
// target's DSN names another.
const AppName = "pgreap-watch"

// Options configure a daemon.
type Options struct {
	// Path is the policy file; Reload reads it again.
	Path   string
	Logger *slog.Logger
	// AuditOut receives the audit lines when the policy names no
	// audit_log (standard output).
	AuditOut io.Writer
	// DryRun makes every rule a dry run (--dry-run).
	DryRun bool
	// ServerLimits bound the metrics server's connections; a zero field
	// takes the default (defaultServerLimits; tests shorten them).
	ServerLimits ServerLimits
	// Clock is the daemon's time (nil: RealClock); tests move a fake
	// one to prove the schedule without waiting.
	Clock Clock
	// Notify tunes the delivery to the policy's webhooks (zero: the
	// defaults; tests shorten them).
	Notify notify.Options
}

// ServerLimits bound what a peer of the metrics port holds: a connection
// that sends its request slowly, reads the answer slowly, or says nothing,
// is closed, so no peer keeps connections and goroutines open for ever.
type ServerLimits struct {
	// ReadHeader: to send the request line and headers; Read: the whole
	// request, its body included.
	ReadHeader, Read time.Duration
	// Write: from the end of the request's headers to the end of the
	// answer.
	Write time.Duration
	// Idle: a keep-alive connection between requests.
	Idle time.Duration
	// MaxHeaderBytes: the request line and headers; larger is answered
	// 431.
	MaxHeaderBytes int
}

// defaultServerLimits suit a Prometheus scrape: a request is a line and a
// few headers, the answer a few kilobytes; Idle outlasts the usual 15 s to
// 1 min scrape interval, so a scraper keeps its connection.
var defaultServerLimits = ServerLimits{
	ReadHeader:     5 * time.Second,
	Read:           10 * time.Second,
	Write:          10 * time.Second,
	Idle:           90 * time.Second,
	MaxHeaderBytes: 16 << 10,
}

func (l ServerLimits) orDefault() ServerLimits {
	def := defaultServerLimits
	pick := func(v, d time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return d
	}
	l.ReadHeader, l.Read = pick(l.ReadHeader, def.ReadHeader), pick(l.Read, def.Read)
	l.Write, l.Idle = pick(l.Write, def.Write), pick(l.Idle, def.Idle)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = def.MaxHeaderBytes
	}
	return l
}

// Daemon is a running `pgreap watch`.
type Daemon struct {
	opt     Options
	log     *slog.Logger
	metrics *Metrics
	audit   *Audit
	notify  *notify.Notifier
	pol     *policy.Policy
	server  *http.Server
	ln      net.Listener

	mu      sync.Mutex
	targets map[string]*running
	// stopping are the targets the policy dropped, or replaced (their DSN
	// changed), until they have stopped: a target of the same name starts
	// after.
	stopping map[string]*running
	wg       sync.WaitGroup
}

type running struct {
	t      *target
	dsn    string
	cancel context.CancelFunc
	done   chan struct{} // closed once it has stopped
}

// State is what /healthz says of a target.
type State string

// The states of a target. A target is healthy leading or standing by: then
// a pgreap watch acts on it, this replica or another.
const (
	// Connecting: no connection yet (the daemon starts, or the target's
	// DSN changed and the old connection is closing).
	Connecting State = "connecting"
	// Down: not connected (the last attempt failed, or the connection was
	// lost); reconnecting with backoff.
	Down State = "down"
	// Leading: connected, holds the target's election lock, acts.
	Leading State = "leading"
	// Standby: connected, another replica holds the election lock and
	// acts; this one takes over if it goes.
	Standby State = "standby"
	// Conflict: connected, and the election lock is held by a session
	// that is not a pgreap watch (any role may take an advisory lock):
	// no replica acts on the target.
	Conflict State = "conflict"
	// PoolerDown: leading, but a PgBouncer of the target (pgbouncer:)
	// cannot be asked: no snapshot is taken, so no new session is
	// judged (the rules would judge the pooler's clients by its address).
	PoolerDown State = "pooler down"
)

// Health is the body of /healthz.
type Health struct {
	// Status is "ok" when every target is leading or standby, else
	// "unavailable".
	Status  string           `json:"status"`
	Targets map[string]State `json:"targets"`
}

// New checks the policy and opens what the daemon needs before it starts:
// the audit log and the metrics listener. Its errors are bad input.
func New(pol *policy.Policy, opt Options) (*Daemon, error) {
	if opt.Clock == nil {
		opt.Clock = RealClock{}
	}
	d := &Daemon{opt: opt, log: opt.Logger, metrics: NewMetrics(), pol: pol, targets: map[string]*running{}, stopping: map[string]*running{}}
	audit, err := OpenAudit(pol.AuditLog, opt.AuditOut)
	if err != nil {
		return nil, err
	}
	d.audit = audit
	audit.SetQuery(pol.AuditQuery)
	d.notify = notify.New(opt.Logger, d.metrics.Registry, opt.Notify)
	audit.events = d.notify
	if pol.MetricsAddr != "" {
		ln, err := net.Listen("tcp", pol.MetricsAddr)
		if err != nil {
			audit.Close()
			return nil, fmt.Errorf("metrics_addr %s: %w", pol.MetricsAddr, unwrapOp(err))
		}
		d.ln = ln
		l := opt.ServerLimits.orDefault()
		d.server = &http.Server{
			Handler:           d.handler(),
			ReadHeaderTimeout: l.ReadHeader,
			ReadTimeout:       l.Read,
			WriteTimeout:      l.Write,
			IdleTimeout:       l.Idle,
			MaxHeaderBytes:    l.MaxHeaderBytes,
		}
	}
	for _, t := range pol.Targets {
		if _, err := targetConfig(t, pol.Interval); err != nil {
			audit.Close()
			if d.ln != nil {
				d.ln.Close()
			}
			return nil, err
		}
	}
	d.notify.Set(pol.Notify)
	d.reloaded()
	return d, nil
}

// reloaded records when the policy in force was read.
func (d *Daemon) reloaded() {
	d.metrics.ReloadSuccess.Set(1)
	d.metrics.ReloadLastTime.Set(float64(d.opt.Clock.Now().UnixNano()) / 1e9)
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// Metrics are the daemon's series (tests read them).
func (d *Daemon) Metrics() *Metrics { return d.metrics }

// Addr is where the metrics server listens ("" without one).
func (d *Daemon) Addr() string {
	if d.ln == nil {
		return ""
	}
	return d.ln.Addr().String()
}

// Run watches the targets until ctx ends, reloading on every value of
// reload (SIGHUP). It returns once every target has stopped.
func (d *Daemon) Run(ctx context.Context, reload <-chan struct{}) error {
	if d.server != nil {
		go func() {
			if err := d.server.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics server stopped", "err", err)
			}
		}()
		d.log.Info("metrics", "addr", d.Addr())
	}
	for _, n := range d.pol.Notes() {
		d.log.Warn(n)
	}
	d.apply(ctx, d.pol)
	d.log.Info("watching", "targets", len(d.pol.Targets), "rules", len(d.pol.Rules), "interval", d.pol.Interval.String(), "dry_run", d.opt.DryRun)
	for {
		select {
		case <-ctx.Done():
			d.shutdown()
			return nil
		case <-reload:
			d.Reload(ctx)
		}
	}
}

// Reload reopens the audit log (logrotate) and reads the policy again; a
// bad policy is rejected with one log line and the old one kept.
func (d *Daemon) Reload(ctx context.Context) {
	pol, err := policy.Load(d.opt.Path)
	if err == nil {
		for _, t := range pol.Targets {
			if _, err = targetConfig(t, pol.Interval); err != nil {
				break
			}
		}
	}
	if err != nil {
		d.rejected(err)
		if rerr := d.audit.Reopen(); rerr != nil {
			d.log.Error("cannot reopen the audit log", "err", rerr.Error())
		}
		return
	}
	// The audit log reopened, or switched to the file the policy names
	// now: on error, the policy is rejected and the file in use stays.
	if err := d.audit.Switch(pol.AuditLog); err != nil {
		d.rejected(err)
		return
	}
	if pol.MetricsAddr != d.pol.MetricsAddr {
		d.log.Warn("metrics_addr changed: it takes effect at the next start", "in_force", d.pol.MetricsAddr)
	}
	d.audit.SetQuery(pol.AuditQuery)
	d.notify.Set(pol.Notify)
	d.pol = pol
	d.apply(ctx, pol)
	d.reloaded()
	d.log.Info("policy reloaded", "targets", len(pol.Targets), "rules", len(pol.Rules))
}

// rejected: a reloaded policy cannot be used; the one in force stays.
func (d *Daemon) rejected(err error) {
	d.metrics.ReloadSuccess.Set(0)
	d.log.Error("policy rejected, keeping the one in force", "err", err.Error())
	d.notify.Send(notify.Event{Kind: notify.Error, Time: d.opt.Clock.Now(), Text: "policy rejected, keeping the one in force: " + oneLine(err)})
}

// apply starts the targets new to the policy, stops those gone from it (or
// whose DSN changed), and hands the policy to the others.
func (d *Daemon) apply(ctx context.Context, pol *policy.Policy) {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[string]policy.Target{}
	for _, t := range pol.Targets {
		want[t.Name] = t
	}
	for name, r := range d.targets {
		if t, ok := want[name]; !ok || targetKey(t) != r.dsn {
			r.cancel()
			delete(d.targets, name)
			d.stopping[name] = r
		}
	}
	for _, t := range pol.Targets {
		if r, ok := d.targets[t.Name]; ok {
			select { // latest wins
			case <-r.t.policies:
			default:
			}
			r.t.policies <- pol
			continue
		}
		poolers, _ := pooler.ParseAll(t.PgBouncer) // checked before
		tctx, cancel := context.WithCancel(ctx)
		tg := &target{
			name: t.Name, spec: t, poolers: poolers, log: d.log.With("target", t.Name), metrics: d.metrics, audit: d.audit, notify: d.notify,
			dryRun: d.opt.DryRun, clock: d.opt.Clock, now: d.opt.Clock.Now, policies: make(chan *policy.Policy, 1), done: map[key]bool{},
		}
		tg.state.Store(Connecting)
		r := &running{t: tg, dsn: targetKey(t), cancel: cancel, done: make(chan struct{})}
		d.targets[t.Name] = r
		prev := d.stopping[t.Name]
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer close(r.done)
			if prev != nil {
				// The old connection goes first: until it closes it may
				// still act, it holds the election lock (the new one would
				// stand by behind it), and its last report (down) would
				// overwrite the new one's.
				<-prev.done
				tg.done, tg.stale, tg.budgets = prev.t.done, prev.t.stale, prev.t.budgets
			}
			if tctx.Err() != nil {
				d.stopped(r)
				return
			}
			d.metrics.TargetUp.WithLabelValues(t.Name).Set(0)
			d.metrics.Leader.WithLabelValues(t.Name).Set(0)
			tg.run(tctx, pol)
			tg.log.Info("stopped watching the target")
			d.stopped(r)
		}()
	}
}

// stopped: the target r has stopped; if the policy dropped it, its series
// go. A target replaced (its DSN changed) keeps them: its counters go on
// under the same name, and a scrape must not lose what it counted while it
// stopped.
func (d *Daemon) stopped(r *running) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping[r.t.name] == r {
		delete(d.stopping, r.t.name)
	}
	if _, kept := d.targets[r.t.name]; !kept {
		d.metrics.forget(r.t.name)
	}
}

// health is the state of every target of the policy in force.
func (d *Daemon) health() Health {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := Health{Status: "ok", Targets: make(map[string]State, len(d.targets))}
	for name, r := range d.targets {
		st := r.t.state.Load().(State)
		h.Targets[name] = st
		if st != Leading && st != Standby {
			h.Status = "unavailable"
		}
	}
	return h
}

// handler serves /metrics; /healthz, 200 when a pgreap watch acts on
// every target (this replica or another), else 503, with the state of each
// target in JSON (for readiness and alerts); /livez, 200 while the process
// answers (for a liveness probe: a database that is down is no reason to
// restart the daemon).
func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := d.health()
		b, _ := json.Marshal(h)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if h.Status != "ok" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write(append(b, '\n'))
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// shutdown stops the targets (each finishes what is in flight, bounded)
// and the metrics server.
func (d *Daemon) shutdown() {
	d.mu.Lock()
	for _, r := range d.targets {
		r.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
	if d.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_ = d.server.Shutdown(ctx)
	}
	// After the targets: their last events (the lead given up) are queued.
	d.notify.Close()
	d.audit.Close()
	d.log.Info("stopped")
}

// targetKey is what names a target's connections: a target whose key
// changes is replaced.
func targetKey(t policy.Target) string {
	return t.DSN + "\x00" + strings.Join(t.PgBouncer, "\x00")
}

// targetConfig is the connection of a target: its DSN as for -d, PG*
// variables filling the rest, pgreap's session settings, the daemon's
// application_name, and keepalives that bound, by the policy's interval,
// how long the server keeps a leader the network lost (lease).
func targetConfig(t policy.Target, interval time.Duration) (*pgx.ConnConfig, error) {
	dsn := t.DSN
	cfg, err := conn.Config(conn.Params{DSN: dsn, Lease: lease(interval)})
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", t.Name, err)
	}
	if cfg.RuntimeParams["application_name"] == "pgreap" && !strings.Contains(dsn, "application_name") {
		cfg.RuntimeParams["application_name"] = AppName
	}
	return cfg, nil
}

// lease is how long, by the policy's interval, the server keeps the
// backend of a daemon the network lost (a partition: no close reaches the
// server), and with it the election lock: the interval, at least 5 s (a
// shorter one would end a leader on a blip), at most 15 s. A standby then
// leads within the lease, a fifth of it more (the keepalives' last probe)
// and one interval (its next try): at most 3 intervals + 15 s. The
// daemon's own side gives the connection up sooner (at 3/5 of the lease),
// so the cut-off leader stops before a standby leads.
func lease(interval time.Duration) time.Duration {
	return min(max(interval, 5*time.Second), 15*time.Second)
}

func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// NotifyMetrics are the series of the notifications (tests read them).
func (d *Daemon) NotifyMetrics() *notify.Metrics { return d.notify.Metrics() }
