package watch

import (
	"context"
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
	"github.com/pgreap/pgreap/internal/policy"
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
}

// Daemon is a running `pgreap watch`.
type Daemon struct {
	opt     Options
	log     *slog.Logger
	metrics *Metrics
	audit   *Audit
	pol     *policy.Policy
	server  *http.Server
	ln      net.Listener

	mu      sync.Mutex
	targets map[string]*running
	wg      sync.WaitGroup
}

type running struct {
	t      *target
	dsn    string
	cancel context.CancelFunc
}

// New checks the policy and opens what the daemon needs before it starts:
// the audit log and the metrics listener. Its errors are bad input.
func New(pol *policy.Policy, opt Options) (*Daemon, error) {
	d := &Daemon{opt: opt, log: opt.Logger, metrics: NewMetrics(), pol: pol, targets: map[string]*running{}}
	audit, err := OpenAudit(pol.AuditLog, opt.AuditOut)
	if err != nil {
		return nil, err
	}
	d.audit = audit
	if pol.MetricsAddr != "" {
		ln, err := net.Listen("tcp", pol.MetricsAddr)
		if err != nil {
			audit.Close()
			return nil, fmt.Errorf("metrics_addr %s: %w", pol.MetricsAddr, unwrapOp(err))
		}
		d.ln = ln
		d.server = &http.Server{Handler: d.metrics.Handler(), ReadHeaderTimeout: 5 * time.Second}
	}
	for _, t := range pol.Targets {
		if _, err := targetConfig(t); err != nil {
			audit.Close()
			if d.ln != nil {
				d.ln.Close()
			}
			return nil, err
		}
	}
	d.metrics.ReloadSuccess.Set(1)
	d.metrics.ReloadLastTime.SetToCurrentTime()
	return d, nil
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
			if _, err = targetConfig(t); err != nil {
				break
			}
		}
	}
	if err != nil {
		d.metrics.ReloadSuccess.Set(0)
		d.log.Error("policy rejected, keeping the one in force", "err", err.Error())
		if rerr := d.audit.Reopen(); rerr != nil {
			d.log.Error("cannot reopen the audit log", "err", rerr.Error())
		}
		return
	}
	// The audit log reopened, or switched to the file the policy names
	// now: on error, the policy is rejected and the file in use stays.
	if err := d.audit.Switch(pol.AuditLog); err != nil {
		d.metrics.ReloadSuccess.Set(0)
		d.log.Error("policy rejected, keeping the one in force", "err", err.Error())
		return
	}
	if pol.MetricsAddr != d.pol.MetricsAddr {
		d.log.Warn("metrics_addr changed: it takes effect at the next start", "in_force", d.pol.MetricsAddr)
	}
	d.pol = pol
	d.apply(ctx, pol)
	d.metrics.ReloadSuccess.Set(1)
	d.metrics.ReloadLastTime.SetToCurrentTime()
	d.log.Info("policy reloaded", "targets", len(pol.Targets), "rules", len(pol.Rules))
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
		if t, ok := want[name]; !ok || t.DSN != r.dsn {
			r.cancel()
			delete(d.targets, name)
			d.metrics.forget(name)
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
		cfg, _ := targetConfig(t) // checked before
		tctx, cancel := context.WithCancel(ctx)
		tg := &target{
			name: t.Name, cfg: cfg, log: d.log.With("target", t.Name), metrics: d.metrics, audit: d.audit,
			dryRun: d.opt.DryRun, now: time.Now, policies: make(chan *policy.Policy, 1), acted: map[identity]bool{},
		}
		d.targets[t.Name] = &running{t: tg, dsn: t.DSN, cancel: cancel}
		d.metrics.TargetUp.WithLabelValues(t.Name).Set(0)
		d.metrics.Leader.WithLabelValues(t.Name).Set(0)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			tg.run(tctx, pol)
		}()
	}
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
	d.audit.Close()
	d.log.Info("stopped")
}

// targetConfig is the connection of a target: its DSN as for -d, PG*
// variables filling the rest, pgreap's session settings, and the daemon's
// application_name.
func targetConfig(t policy.Target) (*pgx.ConnConfig, error) {
	dsn := t.DSN
	cfg, err := conn.Config(conn.Params{DSN: dsn})
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", t.Name, err)
	}
	if cfg.RuntimeParams["application_name"] == "pgreap" && !strings.Contains(dsn, "application_name") {
		cfg.RuntimeParams["application_name"] = AppName
	}
	return cfg, nil
}

func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}
