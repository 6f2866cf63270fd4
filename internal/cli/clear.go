package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/selector"
)

// ClearOptions are the inputs of `pgreap clear`.
type ClearOptions struct {
	ActOptions

	Tables []string
	// Mode is the lock mode as given (LOCK TABLE's words or pg_locks'
	// name); mode is it as pg_locks names it.
	Mode      string
	mode      string
	Cancel    bool
	Terminate bool
	// Timeout bounds how long clear looks again at the sessions it acted
	// on.
	Timeout time.Duration
	// ConnectUser opens the session the table names are resolved on
	// (maintenance.ClearOptions.ConnectUser).
	ConnectUser func(context.Context) (*pgx.Conn, error)
}

// NewCmdClear builds `pgreap clear`; runF replaces the run in tests.
func NewCmdClear(f *Factory, runF func(context.Context, *ClearOptions) error) *cobra.Command {
	opts := &ClearOptions{ActOptions: ActOptions{IO: f.IO}}
	cmd := &cobra.Command{
		Use:   "clear TABLE... [--mode MODE] [SELECTORS] [--cancel | --terminate]",
		Short: "End the sessions whose locks on tables stand in the way of a lock mode",
		Long: `End the sessions that hold or await a lock on the tables that conflicts
with --mode (default ACCESS EXCLUSIVE, what ALTER TABLE, DROP and most DDL
take), so that the statement that needs it gets it at once, with no queue
behind it. Run it just before the DDL, or use 'pgreap exec', which does
both and retries.

clear works in one database, the one the connection string (-d
'dbname=NAME', a URL's path, a service) or PGDATABASE names: without one,
it refuses (exit 2) rather than guess.

TABLE is a name as the server resolves it in that database
(schema-qualified or not, quoted as in SQL: '"Orders"'), or an OID. A name
without its schema is the table psql with the same connection string
would find: it is resolved on a short session opened with that string and
no search_path of pgreap's, so the search_path is the one its options or
PGOPTIONS set (e.g. options=-csearch_path=app), else the role's, the
database's or the server's; the first line names each table as resolved,
schema-qualified. The locks looked at are
those on the table, every partition and inheritance child under it, and
all their indexes, TOAST tables and TOAST indexes. Only tables are taken
(ordinary, partitioned, foreign, materialized views): an index is refused
with its table to clear, and so are views (a query on one locks the tables
it reads: clear those), sequences and the system catalogs (pg_catalog,
information_schema, pg_toast: every session reads them). MODE is one of PostgreSQL's table lock modes,
spelled as in LOCK TABLE (ACCESS SHARE, ROW SHARE, ROW EXCLUSIVE, SHARE
UPDATE EXCLUSIVE, SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS
EXCLUSIVE; any case) or as pg_locks spells it (ShareRowExclusiveLock);
which modes conflict is PostgreSQL's table ("Conflicting Lock Modes").

By default a session running a statement is cancelled (its client gets
57014 and keeps its connection) and one idle in a transaction is
terminated (only the end of its transaction releases its locks). A
cancelled statement aborts its transaction, which releases its locks,
except after a SAVEPOINT: then only the subtransaction aborts, and the
session, idle in transaction (aborted), still holds the locks taken
before it. clear looks again (for up to --timeout) and terminates such a
session. --cancel only cancels: a session idle in a transaction is shown,
changed (nothing to cancel), and a cancelled one that still holds its
locks is named, exit 3 (use --terminate); --terminate terminates every
one.
Each session is signalled only if it still holds or awaits such a lock at
that instant (one that moved on is changed, left alone). Selectors narrow
the sessions (e.g. --app 'report*'). Autovacuum workers, walsenders and
parallel workers are protected as everywhere (a worker's locks count for
its leader).

A prepared transaction (PREPARE TRANSACTION) holding such a lock is shown
and never touched: outcome protected, exit 3; ROLLBACK PREPARED or COMMIT
PREPARED ends it.

The table shows the sessions as a tree, each with the sessions queued
behind it, then the outcomes. JSON and CSV have one row per session with
its outcome, each followed by the sessions queued behind it (rows with
blocked_by set and no action or outcome). A --dry-run -o json plan can be
given to 'pgreap apply', which checks the lock again for each session.

The sessions are listed and confirmed on a terminal; without one, --yes
is needed. Exit status: 0 every session ended, 1 no session holds or
awaits such a lock, 2 usage or connection error (an unknown or refused
table among them: nothing done), 3 some session denied, survived, changed, protected
(a prepared transaction) or still holding its lock.`,
		Example: `  pgreap clear -d 'dbname=shop' orders --dry-run
  pgreap clear -d 'dbname=shop' public.orders public.order_items --yes
  pgreap clear -d 'dbname=shop' orders --mode SHARE --yes      # before CREATE INDEX: writers stand in its way, readers do not
  pgreap clear orders -d 'dbname=shop options=-csearch_path=app' --dry-run   # app.orders, as psql with that string
  pgreap clear -d 'dbname=shop' orders --app 'report*' --cancel
  pgreap clear -d 'dbname=shop' 16403 --terminate --limit 5`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			f.conn.NeedDatabase = "clear"
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			if opts.Wait < 0 || opts.Limit < 0 || opts.Timeout < 0 {
				return usageError(errors.New("--wait, --timeout and --limit must not be negative"))
			}
			if opts.Cancel && opts.Terminate {
				return usageError(errors.New("--cancel and --terminate: give one of them (neither: cancel what runs, terminate what is idle in a transaction)"))
			}
			for _, t := range args {
				if strings.TrimSpace(t) == "" || strings.IndexByte(t, 0) >= 0 {
					return usageError(fmt.Errorf("table %q: not a table name", t))
				}
			}
			if opts.mode, err = selector.ParseLockMode(opts.Mode); err != nil {
				return usageError(fmt.Errorf("--mode %q: %w", opts.Mode, err))
			}
			opts.Tables = args
			switch {
			case opts.Cancel:
				opts.Action = action.Cancel
			case opts.Terminate:
				opts.Action = action.Terminate
			}
			opts.Color, opts.Connect, opts.ConnectUser, opts.Logger = f.Color(), f.Connect, f.ConnectUser, f.Logger()
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return clearRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	opts.Selectors = selector.AddFlags(fs)
	fs.StringVar(&opts.Mode, "mode", "ACCESS EXCLUSIVE", "the lock `MODE` to clear the way for, as in LOCK TABLE")
	fs.BoolVar(&opts.Cancel, "cancel", false, "only cancel the sessions' queries")
	fs.BoolVar(&opts.Terminate, "terminate", false, "terminate every session")
	fs.DurationVar(&opts.Timeout, "timeout", 10*time.Second, "how long to look again at the sessions acted on (`D`)")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "act on nothing: show the tree and the plan")
	fs.BoolVarP(&opts.Yes, "yes", "y", false, "do not ask: needed without a terminal")
	fs.IntVar(&opts.Limit, "limit", 0, "refuse to act on more than `N` sessions (0: no limit)")
	fs.DurationVar(&opts.Wait, "wait", 5*time.Second, "how long to wait for each signal to take effect (`D`)")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "allow walsenders")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "allow autovacuum workers (a VACUUM of the table holds SHARE UPDATE EXCLUSIVE)")
	return cmd
}

func clearRun(ctx context.Context, opts *ClearOptions) error {
	sel, err := opts.Selectors.Selector()
	if err != nil {
		return usageError(err)
	}
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	mopts := maintenance.ClearOptions{
		Tables: opts.Tables, ConnectUser: opts.ConnectUser, Mode: opts.mode, Action: opts.Action, Timeout: opts.Timeout, Wait: opts.Wait, Limit: opts.Limit,
		DryRun: opts.DryRun, IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum,
	}
	if opts.Selectors.Given() {
		mopts.Selector = sel
	}
	if !opts.Yes {
		mopts.Confirm = func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error {
			return confirm(ctx, &opts.ActOptions, plan, rows, what)
		}
	}
	if opts.Format == output.Table {
		mopts.Show = func(tables []string, snap *activity.Snapshot, tree *maintenance.Tree, waits map[int32]time.Duration) {
			fmt.Fprintf(opts.IO.Out, "sessions holding or awaiting a lock on %s that conflicts with %s:\n", strings.Join(tables, ", "), selector.LockModeWords(opts.mode))
			writeTree(opts.IO, snap, tree, waits)
		}
	}
	c, err := maintenance.Clear(ctx, conn, mopts)
	var unknown *maintenance.UnknownTableError
	if errors.As(err, &unknown) {
		return usageError(err)
	}
	if c.Plan == nil {
		return err
	}
	shown := c.Results
	if opts.Format != output.Table {
		shown = c.Shown
	}
	kind := opts.Action
	if kind == "" {
		kind = fellShort(c.Results)
	}
	ferr := finish(opts.IO, opts.Format, opts.Color, kind, c.Plan, c.Results, shown, err, opts.DryRun)
	if err != nil || c.Still == "" {
		return ferr
	}
	hint := ""
	if opts.Action == action.Cancel {
		hint = " (a cancel does not release a transaction's locks: --terminate ends them)"
	}
	return incomplete(fmt.Errorf("still holding a lock on %s that conflicts with %s: %s%s",
		strings.Join(c.Tables, ", "), selector.LockModeWords(opts.mode), c.Still, hint))
}

// fellShort is the action the sessions that fell short of it were given,
// for the summary to name: cancel when each was to be cancelled (by
// default what runs a statement is), else terminate.
func fellShort(results []action.Result) action.Kind {
	kind := action.Kind("")
	for i := range results {
		if r := &results[i]; r.Incomplete() && !r.IsPrepared() {
			if r.Action != action.Cancel {
				return action.Terminate
			}
			kind = action.Cancel
		}
	}
	if kind == "" {
		return action.Terminate
	}
	return kind
}
