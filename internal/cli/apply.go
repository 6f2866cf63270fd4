package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
)

// ApplyOptions are the inputs of `pgreap apply`.
type ApplyOptions struct {
	IO      *IOStreams
	Connect func(context.Context) (*pgx.Conn, error)
	Logger  *slog.Logger

	Format             output.Format
	Color              bool
	File               string
	Wait               time.Duration
	Grace              time.Duration
	IncludeReplication bool
	IncludeAutovacuum  bool
	// Poolers (--pgbouncer): a plan made behind them is judged again by
	// the clients their server connections serve now.
	Poolers []*pooler.Pooler
}

// NewCmdApply builds `pgreap apply`; runF replaces the run in tests.
func NewCmdApply(f *Factory, runF func(context.Context, *ApplyOptions) error) *cobra.Command {
	opts := &ApplyOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "apply PLAN.json",
		Short: "Carry out exactly the plan a --dry-run printed",
		Long: `Carry out exactly the plan that 'pgreap cancel|terminate --dry-run -o json'
printed ('-' reads it from standard input): the sessions whose outcome was
planned, each with its action, and nothing else.

Each session is pinned as the plan saw it: (pid, backend_start), and
query_start and state_change where the plan's guard says so, and it must
still be as the plan describes it (datname, usename, application_name,
client_addr). The one statement that sends the signals re-checks all of
it, and the plan's selection, so a session that moved on since the plan,
or is not the one the plan describes (an edited plan), is reported changed
and left alone.

A plan names its server by system_identifier and pg_postmaster_start_time():
a plan made on another server, or before the server restarted (a failover
among them), is refused as a whole, nothing done; the statement checks it
again in every row. A standby has its primary's system_identifier but a
postmaster of its own: a plan made on the primary is refused on its
standbys, and the other way round; make the plan on the server it is for. Plans of an older pgreap (plan version 2) are refused:
make them again.

Everything printed of a session is what the signalling statement read on
the server, never what the file says. The file is read strictly: unknown,
missing or repeated fields are errors. A plan names its sessions one by
one, so apply does not ask.

A plan made behind PgBouncer (--pgbouncer) is applied with the poolers:
apply asks them again and judges each planned session by the client it
serves now. A plan whose selection is by user, application or client is
refused without them.

Exit status: 0 all reached the planned action's outcome, 1 nothing planned,
2 bad plan, another server, usage or connection error, 3 some denied,
survived, changed or protected.`,
		Example: `  pgreap terminate --db shop --dry-run -o json > plan.json
  less plan.json
  pgreap apply plan.json
  pgreap cancel --app 'report*' --dry-run -o json | pgreap apply -
  pgreap apply plan.json --pgbouncer 'host=pgb1 port=6432 user=stats'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(errors.New("apply takes one plan file (or - for standard input)"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			opts.File = args[0]
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			if opts.Wait < 0 || opts.Grace < 0 {
				return usageError(errors.New("--wait and --grace must not be negative"))
			}
			opts.Color = f.Color()
			opts.Connect = f.Connect
			if opts.Poolers, err = f.Poolers(); err != nil {
				return err
			}
			opts.Logger = f.Logger()
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return applyRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&opts.Wait, "wait", 5*time.Second, "how long to wait for the signalled sessions to end (`D`)")
	fs.DurationVar(&opts.Grace, "grace", 0, "terminate: cancel first; terminate only what still runs the same query after `D`")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "allow walsenders (replication connections)")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "allow autovacuum workers")
	return cmd
}

func applyRun(ctx context.Context, opts *ApplyOptions) error {
	plan, err := readPlan(opts.IO, opts.File)
	if err != nil {
		return usageError(fmt.Errorf("%s: %w", opts.File, err))
	}
	if len(plan.Results) == 0 {
		return fmt.Errorf("%w: the plan has no planned session", ErrNoMatch)
	}
	if err := plan.NeedsPoolers(len(opts.Poolers) > 0); err != nil {
		return usageError(fmt.Errorf("%s: %w", opts.File, err))
	}
	plan.IncludeReplication, plan.IncludeAutovacuum = opts.IncludeReplication, opts.IncludeAutovacuum
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pooled, err := lookPooled(ctx, conn, opts.Poolers)
	if err != nil {
		return err
	}
	plan.WithPooled(pooled)
	// The server version (which columns the statement reads) is Execute's
	// to learn, and an error reading it stops the command there.
	plan.Taken = time.Now()
	kind := plan.Results[0].Action
	results, err := action.Execute(ctx, conn, plan, action.Options{Wait: opts.Wait, Grace: opts.Grace})
	if errors.Is(err, action.ErrOtherServer) {
		return usageError(err)
	}
	return finish(opts.IO, opts.Format, opts.Color, kind, plan, results, results, err, false)
}

func readPlan(streams *IOStreams, name string) (*action.Plan, error) {
	var r io.Reader = streams.In
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, errors.Unwrap(err) // the path is said once, by the caller
		}
		defer f.Close()
		r = f
	}
	return action.ReadPlan(r)
}
