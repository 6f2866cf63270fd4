package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/demo"
)

// DemoOptions are the inputs of `pgreap demo`.
type DemoOptions struct {
	IO *IOStreams
	// Getenv reads PGREAP_PGBIN; Globs are where server binaries are
	// looked for after PATH (cluster.SystemGlobs), Cache last
	// (cluster.CacheDir).
	Getenv func(string) string
	Globs  []string
	Cache  string
	// FindPgBouncer finds the pgbouncer binary (cluster.FindPgBouncer).
	FindPgBouncer func() (string, error)

	Script      bool
	PGBin       string
	NoPgBouncer bool
}

// NewCmdDemo builds `pgreap demo`; runF replaces the run in tests.
func NewCmdDemo(f *Factory, runF func(context.Context, *DemoOptions) error) *cobra.Command {
	opts := newDemoOptions(f.IO)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show pgreap at work on a throwaway PostgreSQL",
		Long: `Start a throwaway PostgreSQL cluster (in a temporary directory named
pgreap-demo-*, as an unprivileged user when run as root), with the
workload of a shop in trouble: a pool of application sessions running short
queries on database shop, a runaway report (a parallel query), a
transaction left open that holds a lock with checkouts queued behind it,
and another one idle in transaction.

Where PgBouncer is installed (pgbouncer on PATH, or in /usr/sbin), the
shop's web application (its pool and the checkouts) connects through a
PgBouncer the demo starts in front of the cluster (transaction mode, in a
temporary directory named pgreap-demo-pgbouncer-*), and every command of
the tour sees it (PGREAP_PGBOUNCER names its admin console): ls shows the
client each server connection serves, kick ends the pooled clients too, and
during the drain the pool's requests wait in PgBouncer instead of failing.
Without it (or with --no-pgbouncer) the pool connects directly; the demo
says how to install PgBouncer (Debian/Ubuntu: apt-get install pgbouncer).

Without --script, print what to paste in a second terminal and the
commands to try, and wait for Ctrl-C. With --script, run the tour
unattended: ls, unblock, cancel, terminate with a plan and apply, kick
(and ls: the shop's pool connects again), drain (first --dry-run), the
pool's requests while it holds (waiting, failed: as the application counts
them) and undrain, and watch with one rule, each command printed before
its output; then stop.

The cluster, its PgBouncer and their directories are removed on every
exit, Ctrl-C included.
It needs PostgreSQL's server binaries (initdb, pg_ctl, postgres): from
--pg-bin, $PGREAP_PGBIN, initdb on PATH, pg_config --bindir, where
packages put them (/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, Homebrew),
or the cache scripts/pg-fetch fills for pgreap's tests ($PGREAP_PG_CACHE,
else /var/cache/pgreap/pg for root, else
${XDG_CACHE_HOME:-~/.cache}/pgreap/pg), newest major first;
'make demo' in a clone of pgreap fetches them there when none is found.`,
		Example: `  pgreap demo
  pgreap demo --script
  pgreap demo --pg-bin /usr/lib/postgresql/17/bin
  pgreap demo --script --no-pgbouncer    # the pool directly: the drain fails its requests`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return demoRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Script, "script", false, "run the tour unattended, then stop")
	cmd.Flags().StringVar(&opts.PGBin, "pg-bin", "", "the directory of PostgreSQL's server binaries")
	cmd.Flags().BoolVar(&opts.NoPgBouncer, "no-pgbouncer", false, "connect the shop's pool directly, even where PgBouncer is installed")
	return cmd
}

func newDemoOptions(io *IOStreams) *DemoOptions {
	return &DemoOptions{IO: io, Getenv: os.Getenv, Globs: cluster.SystemGlobs, Cache: cluster.CacheDir(), FindPgBouncer: cluster.FindPgBouncer}
}

// binDir finds the server binaries the demo runs.
func (opts *DemoOptions) binDir() (string, error) {
	env := opts.Getenv("PGREAP_PGBIN")
	bin, err := cluster.Find(cluster.Search{Dir: opts.PGBin, Env: env, Path: true, Globs: opts.Globs, Cache: opts.Cache})
	switch {
	case err != nil && opts.PGBin != "":
		return "", errors.New("--pg-bin " + err.Error())
	case err != nil && env != "":
		return "", errors.New("PGREAP_PGBIN=" + err.Error())
	}
	return bin, err
}

// DemoBinDir is the directory of server binaries `pgreap demo` (without
// --pg-bin) would run, or "" when it would find none, as it finds them on
// this machine: `make demo` fetches them when there are none.
func DemoBinDir() (string, error) {
	return newDemoOptions(nil).foundBinDir()
}

func (opts *DemoOptions) foundBinDir() (string, error) {
	bin, err := opts.binDir()
	if errors.Is(err, cluster.ErrNoBinaries) {
		return "", nil
	}
	return bin, err
}

func demoRun(ctx context.Context, opts *DemoOptions) error {
	bin, err := opts.binDir()
	if err != nil {
		return usageError(err)
	}
	// Main stops on SIGINT, SIGTERM and SIGQUIT; a closed terminal
	// (SIGHUP) must stop the demo's server too, not leave it running.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stop()
	var pgbouncer string
	if !opts.NoPgBouncer {
		// None found: the demo runs without it and says how to get it.
		pgbouncer, _ = opts.FindPgBouncer()
	}
	err = demo.Run(ctx, demo.Options{
		Out:             opts.IO.Out,
		BinDir:          bin,
		Script:          opts.Script,
		PgBouncer:       pgbouncer,
		NoPgBouncerHint: pgbouncer == "" && !opts.NoPgBouncer,
		Pgreap: func(ctx context.Context, args []string, out io.Writer) int {
			// The commands print as they would in a pipe: no questions
			// (the tour says --yes), no colour, the terminal's width.
			streams := &IOStreams{In: eofReader{}, Out: out, ErrOut: out, Width: opts.IO.Width}
			return Run(ctx, args, streams)
		},
	})
	if err != nil && ctx.Err() != nil && !opts.Script {
		return nil // Ctrl-C: the way to stop the demo
	}
	return err
}

// eofReader is an empty standard input.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
