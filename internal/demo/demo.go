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
}

// Run starts the cluster and the workload, then the tour or the wait;
// everything is stopped and removed before it returns.
func Run(ctx context.Context, opt Options) (err error) {
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
		old, had := os.LookupEnv("PGREAP_STATE_DIR")
		os.Setenv("PGREAP_STATE_DIR", state)
		defer func() {
			if had {
				os.Setenv("PGREAP_STATE_DIR", old)
			} else {
				os.Unsetenv("PGREAP_STATE_DIR")
			}
		}()
	}

	w, err := startWorkload(ctx, c)
	defer w.stop()
	if err != nil {
		return err
	}
	if !opt.Script {
		printGuide(opt.Out, c, state)
		<-ctx.Done()
		fmt.Fprintln(opt.Out)
		return nil
	}
	return tour(ctx, opt, c, w)
}

func printGuide(out io.Writer, c *cluster.Cluster, state string) {
	fmt.Fprintf(out, `
The shop is busy, and in trouble:
  shop-web   a pool of %d sessions running short queries on database shop
  report     a runaway report (a parallel query, with its workers)
  batch      a transaction left open, holding a row lock; %d checkouts queue behind it
  etl        another transaction left open (idle in transaction)

In another terminal, paste:

  export %s

and try:

  pgreap ls                                 every client session
  pgreap top                                the live view: b for the blocking tree, t to terminate
  pgreap unblock --longer-than 1s --dry-run  who blocks whom, and what unblock would end
  pgreap cancel --app report                cancel the runaway report (asks first)
  pgreap terminate --app etl --dry-run -o json > plan.json && pgreap apply plan.json
  pgreap kick --db shop                     end every session of shop (the pool comes back)
  pgreap drain shop; pgreap undrain shop    keep shop empty, then reopen it

Ctrl-C here stops everything and removes %s and %s.
`, poolSize, queued, strings.Join(append(c.Env(), "PGREAP_STATE_DIR="+state), " "), c.Dir, state)
}

// tour runs the commands of the tour, each printed before its output.
func tour(ctx context.Context, opt Options, c *cluster.Cluster, w *workload) error {
	fmt.Fprintf(opt.Out, "\nThe shop is in trouble: a runaway report, a forgotten transaction with %d checkouts queued behind it, another one idle in transaction, and a pool of %d sessions.\n", queued, poolSize)
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
	plan := filepath.Join(c.Dir, "plan.json")
	policy := filepath.Join(c.Dir, "policy.yaml")
	steps := []func() error{
		func() error { return step("every session of database shop", 0, "ls", "--db", "shop") },
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
			return step("end every session of shop (its pool connects again)", 0, "kick", "--db", "shop", "--yes")
		},
		func() error {
			if err := w.waitPool(ctx); err != nil {
				return err
			}
			return step("the pool is back: new connections, new pids", 0, "ls", "--db", "shop")
		},
		func() error {
			return step("what a drain would record, block and end; nothing is changed", 0, "drain", "shop", "--dry-run")
		},
		func() error {
			return step("maintenance: keep shop empty (new connections refused), until undrain", 0, "drain", "shop", "--timeout", "20s")
		},
		func() error {
			return step("nobody in shop now: the pool's new connections are refused", 1, "ls", "--db", "shop")
		},
		func() error {
			if err := step("let them back: the settings shop had, restored", 0, "undrain", "shop"); err != nil {
				return err
			}
			// What "let them back" says: the pool is back before the tour
			// goes on.
			return w.waitPool(ctx)
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

const policyText = `# pgreap watch: cancel any report query that runs longer than 2s
targets:
  - name: demo
    dsn: %q
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
	text := fmt.Sprintf(policyText, c.DSN("postgres", cluster.Superuser))
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
	code := opt.Pgreap(wctx, []string{"watch", "-c", policy, "--log-format", "text"}, out)
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
