// Package demo is `pgreap demo`: a throwaway PostgreSQL cluster with the
// workload of a small shop in trouble, and pgreap at work on it.
//
// It guarantees that the cluster it starts, and its directory, are gone
// when Run returns, whatever ends it (the tour's end, Ctrl-C, an error);
// only the server it started is stopped, through pg_ctl and its own data
// directory.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgreap/pgreap/internal/cluster"
)

// Options say how the demo runs.
type Options struct {
	Out io.Writer
	// BinDir holds the server binaries (cluster.Find).
	BinDir string
	// Script runs the tour and returns; otherwise Run prints what to try
	// and waits for ctx to end (Ctrl-C).
	Script bool
	// Pgreap runs one pgreap command in this process, its output (and
	// its diagnostics) on out, and returns its exit code.
	Pgreap func(ctx context.Context, args []string, out io.Writer) int
	// PgBouncer is the pgbouncer binary the shop's web application
	// (shop-web's pool, the checkouts) connects through; "": directly.
	PgBouncer string
	// NoPgBouncerHint: PgBouncer is "" because none was found, and Run
	// says how to get it.
	NoPgBouncerHint bool
}

// noPgBouncer is the line a demo without PgBouncer prints.
const noPgBouncer = "no PgBouncer on this machine: the shop's pool connects directly (to see pgreap with a pooler, install it: sudo apt-get install pgbouncer; dnf or brew install pgbouncer)"

// Run starts the cluster and the workload, then the tour or the wait;
// everything is stopped and removed before it returns.
func Run(ctx context.Context, opt Options) (err error) {
	if opt.NoPgBouncerHint {
		fmt.Fprintln(opt.Out, noPgBouncer)
	}
	fmt.Fprintf(opt.Out, "starting a throwaway PostgreSQL from %s ...\n", opt.BinDir)
	c, err := cluster.Start(ctx, cluster.Options{
		BinDir: opt.BinDir,
		Prefix: "pgreap-demo-",
		Settings: map[string]string{
			"max_parallel_workers_per_gather": "2",
			"log_min_messages":                "warning",
		},
	})
	if err != nil {
		return fmt.Errorf("demo cluster: %w", err)
	}
	defer func() {
		fmt.Fprintf(opt.Out, "stopping the cluster and removing %s\n", c.Dir)
		if stopErr := c.Stop(); stopErr != nil && err == nil {
			err = fmt.Errorf("stopping the demo cluster: %w", stopErr)
		}
	}()
	fmt.Fprintf(opt.Out, "PostgreSQL %d in %s\n", c.Major, c.Dir)
	// A drain of the demo's shop records its settings next to the
	// cluster, not in the user's state directory: they go when the
	// cluster goes. Not inside the cluster's directory: run as root, that
	// is the server user's, and pgreap trusts only records in a directory
	// of its own user. The tour's commands run in this process; the
	// guide's exports say it to the commands typed in another terminal.
	state, err := os.MkdirTemp("", "pgreap-demo-state-*")
	if err != nil {
		return fmt.Errorf("demo state directory: %w", err)
	}
	defer os.RemoveAll(state)
	if opt.Script {
		defer setenv("PGREAP_STATE_DIR", state)()
	}

	// PGREAP_PGBOUNCER as the user may have it must not reach the tour's
	// commands: they get the demo's pooler, or none.
	pooled := ""
	var pgb *cluster.PgBouncer
	if opt.PgBouncer != "" {
		// Stopped before the cluster (deferred after it), after the
		// workload's sessions (deferred before them).
		pgb, err = cluster.StartPgBouncer(ctx, c, cluster.PgBouncerOptions{
			Binary: opt.PgBouncer, Prefix: "pgreap-demo-pgbouncer-", PoolMode: "transaction",
		})
		if err != nil {
			return fmt.Errorf("demo PgBouncer (--no-pgbouncer runs the demo without it): %w", err)
		}
		defer func() {
			fmt.Fprintf(opt.Out, "stopping PgBouncer and removing %s\n", pgb.Dir)
			if stopErr := pgb.Stop(); stopErr != nil && err == nil {
				err = fmt.Errorf("stopping the demo's PgBouncer: %w", stopErr)
			}
		}()
		pooled = adminURL(pgb)
		fmt.Fprintf(opt.Out, "%s (transaction mode) on 127.0.0.1:%d, in %s\n", pgb.Version, pgb.Port, pgb.Dir)
	}
	if opt.Script {
		defer setenv("PGREAP_PGBOUNCER", pooled)()
	}

	w, err := startWorkload(ctx, c, pgb)
	defer w.stop()
	if err != nil {
		return err
	}
	if !opt.Script {
		printGuide(opt.Out, c, pgb, state)
		<-ctx.Done()
		fmt.Fprintln(opt.Out)
		return nil
	}
	return tour(ctx, opt, c, w)
}

// setenv sets the environment variable name to value ("": unsets it) and
// returns what puts it back.
func setenv(name, value string) (restore func()) {
	old, had := os.LookupEnv(name)
	if value == "" {
		os.Unsetenv(name)
	} else {
		os.Setenv(name, value)
	}
	return func() {
		if had {
			os.Setenv(name, old)
		} else {
			os.Unsetenv(name)
		}
	}
}

// adminURL names pgb's admin console as PGREAP_PGBOUNCER takes it: one
// word (the variable is a list separated by spaces) that a shell pastes
// as it is (no ?: zsh globs it), as the admin user, who needs no password
// (auth_type trust).
func adminURL(pgb *cluster.PgBouncer) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/pgbouncer", cluster.AdminUser, pgb.Port)
}

func printGuide(out io.Writer, c *cluster.Cluster, pgb *cluster.PgBouncer, state string) {
	env := append(c.Env(), "PGREAP_STATE_DIR="+state)
	pool, drain, dirs := "", "keep shop empty, then reopen it", c.Dir+" and "+state
	if pgb != nil {
		// The commands typed in the other terminal see the pooler too.
		env = append(env, "PGREAP_PGBOUNCER="+adminURL(pgb))
		pool = fmt.Sprintf("\nshop-web and the checkouts connect through PgBouncer on 127.0.0.1:%d (transaction mode).\n", pgb.Port)
		drain = "PgBouncer holds shop-web's requests meanwhile"
		dirs = c.Dir + ", " + pgb.Dir + " and " + state
	} else {
		// Nor a pooler of the user's own, named in their environment.
		env = append(env, "PGREAP_PGBOUNCER=")
	}
	fmt.Fprintf(out, `
The shop is busy, and in trouble:
  shop-web   a pool of %d sessions running short queries on database shop
  report     a runaway report (a parallel query, with its workers)
  batch      a transaction left open, holding a row lock; %d checkouts queue behind it
  etl        another transaction left open (idle in transaction)
%s
In another terminal, paste:

  export %s

and try:

  pgreap ls                                 every client session
  pgreap top                                the live view: b for the blocking tree, t to terminate
  pgreap unblock --longer-than 1s --dry-run  who blocks whom, and what unblock would end
  pgreap cancel --app report                cancel the runaway report (asks first)
  pgreap terminate --app etl --dry-run -o json > plan.json && pgreap apply plan.json
  pgreap kick --db shop                     end every session of shop (the pool comes back)
  pgreap drain shop; pgreap undrain shop    %s

Ctrl-C here stops everything and removes %s.
`, poolSize, queued, pool, strings.Join(env, " "), drain, dirs)
}

// tour runs the commands of the tour, each printed before its output.
func tour(ctx context.Context, opt Options, c *cluster.Cluster, w *workload) error {
	pooled := w.pgb != nil
	// say is the tour's text for a step, directly or with the pooler.
	say := func(direct, withPgBouncer string) string {
		if pooled {
			return withPgBouncer
		}
		return direct
	}
	fmt.Fprintf(opt.Out, "\nThe shop is in trouble: a runaway report, a forgotten transaction with %d checkouts queued behind it, another one idle in transaction, and a pool of %d sessions.\n%s",
		queued, poolSize, say("", "The pool and the checkouts connect through PgBouncer; PGREAP_PGBOUNCER names its admin console to pgreap.\n"))
	dsn := c.DSN("postgres", cluster.Superuser)
	// run runs pgreap with the demo's server (-d) and checks its exit.
	run := func(out io.Writer, want int, args ...string) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		code := opt.Pgreap(ctx, append(append([]string(nil), args...), "-d", dsn), out)
		if code != want {
			return fmt.Errorf("pgreap %s: exit %d, want %d", shellJoin(args), code, want)
		}
		return nil
	}
	step := func(say string, want int, args ...string) error {
		fmt.Fprintf(opt.Out, "\n# %s\n$ pgreap %s\n", say, shellJoin(args))
		return run(opt.Out, want, args...)
	}
	var before webStats // shop-web's requests when the drain began
	plan := filepath.Join(c.Dir, "plan.json")
	policy := filepath.Join(c.Dir, "policy.yaml")
	steps := []func() error{
		func() error {
			return step(say("every session of database shop",
				"every session of database shop; PgBouncer's show the client each serves (ADDR via PGBOUNCER), pooled, idle, or ? when it ran again since PgBouncer was asked"),
				0, "ls", "--db", "shop")
		},
		func() error {
			return step("the lock pile-up: who blocks whom, and what unblock would end", 0, "unblock", "--longer-than", "1s", "--dry-run")
		},
		func() error {
			return step("end the forgotten transaction at its root: the checkouts go on", 0, "unblock", "--longer-than", "1s", "--yes")
		},
		func() error {
			return step("cancel the runaway report; its parallel workers end with it", 0, "cancel", "--app", "report", "--yes")
		},
		func() error {
			// A plan to review, then carried out exactly, or not at all
			// for a session that changed in between.
			fmt.Fprintf(opt.Out, "\n# a plan to review before acting: the other forgotten transaction\n$ pgreap terminate --app etl --dry-run -o json > plan.json\n")
			var b bytes.Buffer
			if err := run(&b, 0, "terminate", "--app", "etl", "--dry-run", "-o", "json"); err != nil {
				return err
			}
			if err := os.WriteFile(plan, b.Bytes(), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(opt.Out, "$ cat plan.json\n%s", b.String())
			fmt.Fprintf(opt.Out, "\n# carry it out\n$ pgreap apply plan.json\n")
			return run(opt.Out, 0, "apply", plan)
		},
		func() error {
			return step(say("end every session of shop (its pool connects again)",
				"end every session of shop, and its clients in PgBouncer (KILL, then RESUME): the pool connects again"),
				0, "kick", "--db", "shop", "--yes")
		},
		func() error {
			if err := w.waitPool(ctx); err != nil {
				return err
			}
			return step(say("the pool is back: new connections, new pids",
				"the pool is back: PgBouncer's new server connections, new pids"), 0, "ls", "--db", "shop")
		},
		func() error {
			return step("what a drain would record, block and end; nothing is changed", 0, "drain", "shop", "--dry-run")
		},
		func() error {
			before = w.web.stats()
			w.web.mark()
			return step(say("maintenance: keep shop empty (new connections refused), until undrain",
				"maintenance: PgBouncer pauses shop (it closes its server connections, the pool's requests wait in it), then shop is kept empty until undrain"),
				0, "drain", "shop", "--timeout", "20s")
		},
		func() error {
			return step(say("nobody in shop now: the pool's new connections are refused",
				"nobody in shop now: PgBouncer holds the pool's requests"), 1, "ls", "--db", "shop")
		},
		func() error { return heldStep(ctx, opt.Out, w, before) },
		func() error {
			if err := step(say("let them back: the settings shop had, restored",
				"let them back: the settings shop had, restored, and PgBouncer resumed"), 0, "undrain", "shop"); err != nil {
				return err
			}
			// What "let them back" says: the pool is back before the tour
			// goes on.
			if err := w.waitPool(ctx); err != nil {
				return err
			}
			return afterStep(opt.Out, w, before)
		},
		func() error { return watchStep(ctx, opt, c, w, policy, run) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	fmt.Fprintf(opt.Out, "\nThe tour is over. To look around yourself: pgreap demo (without --script).\n")
	return nil
}

// heldStep says what shop-web's requests see while shop is drained: with
// PgBouncer they wait in it, directly they fail. It waits until the
// application has seen the drain (a request has waited a second, or one
// has failed), 15s at most.
func heldStep(ctx context.Context, out io.Writer, w *workload, before webStats) error {
	fmt.Fprintf(out, "\n# meanwhile, shop-web's requests as the application counts them\n")
	now := w.web.stats()
	for began := time.Now(); now.Oldest < time.Second && now.Failed == before.Failed && time.Since(began) < 15*time.Second; now = w.web.stats() {
		pause(ctx, 20*time.Millisecond) // polling the counts
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	fmt.Fprintf(out, "shop-web: %s waiting", requestCount(now.Waiting))
	if now.Waiting > 0 {
		fmt.Fprintf(out, " (the oldest for %s)", round(now.Oldest))
	}
	fmt.Fprintf(out, ", %s since the drain began\n", failed(now, before))
	return nil
}

// afterStep says how shop-web's requests came through the drain.
func afterStep(out io.Writer, w *workload, before webStats) error {
	now := w.web.stats()
	fmt.Fprintf(out, "\n# shop-web's requests through the drain, as the application counts them\n")
	fmt.Fprintf(out, "shop-web: %s done, the longest took %s; %s during the drain\n",
		requestCount(now.OK-before.OK), round(now.Longest), failed(now, before))
	if w.pgb == nil {
		fmt.Fprintf(out, "(without a pooler the application sees the drain; through PgBouncer its requests would wait instead)\n")
	}
	return nil
}

// requestCount is "1 request", "2 requests".
func requestCount(n int) string {
	if n == 1 {
		return "1 request"
	}
	return fmt.Sprintf("%d requests", n)
}

// round rounds d for people: to the millisecond under a second, else to
// a tenth of a second.
func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// failed says how many of shop-web's requests failed since before, and
// with which SQLSTATEs.
func failed(now, before webStats) string {
	n := now.Failed - before.Failed
	if n == 0 {
		return "0 failed"
	}
	var codes []string
	for code, k := range now.Codes {
		if k > before.Codes[code] {
			codes = append(codes, code)
		}
	}
	sort.Strings(codes)
	return fmt.Sprintf("%d failed (%s)", n, strings.Join(codes, ", "))
}

const policyText = `# pgreap watch: cancel any report query that runs longer than 2s
targets:
  - name: demo
    dsn: %q%s
interval: 500ms
metrics_addr: "off"
rules:
  - name: runaway-reports
    match: {db: [shop], app: ["report*"], state: [active], longer_than: 2s}
    action: cancel
`

// watchStep runs the daemon with one rule until it has cancelled a new
// runaway report (20s at most), its audit lines on the output.
func watchStep(ctx context.Context, opt Options, c *cluster.Cluster, w *workload, policy string, run func(io.Writer, int, ...string) error) error {
	pgbouncer := "" // the rules match a pooled client's facts, not the server connection's
	if w.pgb != nil {
		pgbouncer = fmt.Sprintf("\n    pgbouncer: [%q]", adminURL(w.pgb))
	}
	text := fmt.Sprintf(policyText, c.DSN("postgres", cluster.Superuser), pgbouncer)
	if err := os.WriteFile(policy, []byte(text), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(opt.Out, "\n# the daemon: a rule for runaway reports, and a new report that runs away\n$ cat policy.yaml\n%s", text)
	if err := w.startReport(ctx); err != nil {
		return err
	}
	fmt.Fprintf(opt.Out, "$ pgreap watch -c policy.yaml    # stopped once it has acted\n")
	wctx, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	out := &watchOutput{w: opt.Out, acted: stop}
	// watch reads its poolers from the policy only (pgbouncer: above).
	restore := setenv("PGREAP_PGBOUNCER", "")
	code := opt.Pgreap(wctx, []string{"watch", "-c", policy, "--log-format", "text"}, out)
	restore()
	if !out.sawCancel() {
		return fmt.Errorf("pgreap watch (exit %d) did not cancel the report within 20s", code)
	}
	return nil
}

// watchOutput passes the daemon's output on, and stops the daemon when an
// audit line says the report was cancelled.
type watchOutput struct {
	w     io.Writer
	acted context.CancelFunc
	mu    sync.Mutex
	done  bool
}

func (o *watchOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if bytes.Contains(p, []byte(`"outcome":"cancelled"`)) {
		o.done = true
		o.acted()
	}
	return o.w.Write(p)
}

func (o *watchOutput) sawCancel() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done
}

// shellJoin quotes arguments as a shell would need them.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.ContainsAny(a, " '\"*?$&;|<>()") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
