package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/selector"
)

// UnblockOptions are the inputs of `pgreap unblock`.
type UnblockOptions struct {
	ActOptions

	LongerThan time.Duration
	Cancel     bool
}

// NewCmdUnblock builds `pgreap unblock`; runF replaces the run in tests.
func NewCmdUnblock(f *Factory, runF func(context.Context, *UnblockOptions) error) *cobra.Command {
	opts := &UnblockOptions{ActOptions: ActOptions{IO: f.IO, Action: action.Terminate}}
	cmd := &cobra.Command{
		Use:   "unblock [--longer-than D] [SELECTORS]",
		Short: "End the sessions at the root of lock waits",
		Long: `Find the sessions that have waited on a lock longer than --longer-than
(default 10s; since pg_locks.waitstart on 14+, the statement's age before),
follow pg_blocking_pids up to the roots (sessions that block others and
wait for no one), show the tree, and end the roots.

Roots are terminated by default: cancelling a statement inside a
transaction block does not release the locks the transaction holds.
--cancel only cancels. Waiters are never touched. A root is pinned by its
identity and its query, and is signalled only if it still blocks someone
at that instant. Protected roots (autovacuum workers, walsenders) are
reported and left alone unless included. Selectors narrow which roots may
be ended (e.g. --db shop).

The table shows the tree: each root, its waiters indented with how long
each has waited, then the roots' outcomes. JSON and CSV have one row per
root with its outcome, each followed by its waiters: rows with blocked_by
set and no action or outcome. A --dry-run -o json plan can be given to
'pgreap apply', which acts on the roots and skips the waiters.

The roots are listed and confirmed on a terminal; without one, --yes is
needed. Exit status: 0 all roots ended, 1 no lock wait that long, 2 usage
or connection error, 3 some root denied, survived, changed or protected.`,
		Example: `  pgreap unblock
  pgreap unblock --longer-than 1m --db shop --yes
  pgreap unblock --cancel --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			if opts.LongerThan < 0 || opts.Wait < 0 || opts.Limit < 0 {
				return usageError(errors.New("--longer-than, --wait and --limit must not be negative"))
			}
			if opts.Cancel {
				opts.Action = action.Cancel
			}
			opts.Color, opts.Connect, opts.Logger = f.Color(), f.Connect, f.Logger()
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return unblockRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	opts.Selectors = selector.AddFlags(fs, "longer-than")
	fs.DurationVar(&opts.LongerThan, "longer-than", 10*time.Second, "lock waits longer than `D`")
	fs.BoolVar(&opts.Cancel, "cancel", false, "cancel the roots' queries instead of terminating them")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "act on nothing: show the tree and the plan")
	fs.BoolVarP(&opts.Yes, "yes", "y", false, "do not ask: needed without a terminal")
	fs.IntVar(&opts.Limit, "limit", 0, "refuse to act on more than `N` roots (0: no limit)")
	fs.DurationVar(&opts.Wait, "wait", 5*time.Second, "how long to wait for the roots to end (`D`)")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "allow walsenders as roots")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "allow autovacuum workers as roots")
	return cmd
}

func unblockRun(ctx context.Context, opts *UnblockOptions) error {
	sel, err := opts.Selectors.Selector()
	if err != nil {
		return usageError(err)
	}
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	snap, err := activity.Take(ctx, conn, activity.Filter{})
	if err != nil {
		return err
	}
	waits, err := maintenance.Waits(ctx, conn)
	if err != nil {
		return err
	}
	tree := maintenance.BlockingTree(snap.Sessions, waits, opts.LongerThan)
	if opts.Selectors.Given() && len(tree.Roots) > 0 {
		// Only the roots the selectors keep.
		chosen, err := activity.Take(ctx, conn, sel.Filter())
		if err != nil {
			return err
		}
		keep := map[int32]bool{}
		for i := range chosen.Sessions {
			if sel.Keep(&chosen.Sessions[i]) {
				keep[chosen.Sessions[i].PID] = true
			}
		}
		roots := tree.Roots[:0]
		for _, r := range tree.Roots {
			if keep[r] {
				roots = append(roots, r)
			}
		}
		tree.Roots = roots
	}
	if len(tree.Roots) == 0 {
		return fmt.Errorf("%w: no lock wait longer than %s", ErrNoMatch, opts.LongerThan)
	}
	if opts.Format == output.Table {
		writeTree(opts.IO, snap, tree, waits)
	} else {
		opts.show = func(results []action.Result) []action.Result { return withWaiters(results, snap, tree, waits) }
	}
	// The roots, only while they still block someone, and as the
	// selectors allow.
	sel.Blocking = true
	opts.PIDs = tree.Roots
	return actOn(ctx, &opts.ActOptions, conn, sel, true)
}

// withWaiters puts after each root's result the waiters queued behind it,
// as rows with no action and no outcome: their blocked_by draws the tree
// for a program, as the indented table does for a person.
func withWaiters(results []action.Result, snap *activity.Snapshot, tree *maintenance.Tree, waits map[int32]time.Duration) []action.Result {
	byPID := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	shown := make([]action.Result, 0, len(results))
	seen := map[int32]bool{}
	for _, r := range results {
		shown = append(shown, r)
		for _, w := range tree.Waiters[r.PID] {
			if s := byPID[w]; s != nil && !seen[w] {
				seen[w] = true
				detail := "waiting on a lock"
				if age := output.Age(waits[w]); age != "" {
					detail += " for " + age
				}
				shown = append(shown, action.Result{Session: *s, Detail: detail})
			}
		}
	}
	return shown
}

// writeTree prints the roots with the waiters queued behind each, and how
// long each has waited.
func writeTree(io *IOStreams, snap *activity.Snapshot, tree *maintenance.Tree, waits map[int32]time.Duration) {
	byPID := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	describe := func(pid int32) string {
		s := byPID[pid]
		if s == nil {
			return strconv.Itoa(int(pid))
		}
		state := s.State
		if s.BackendType != "client backend" && s.BackendType != "" {
			state = strings.TrimSpace(s.BackendType + " " + state)
		}
		return fmt.Sprintf("%d  %s  %s  %s  %s  %s", pid, output.Clean(s.Datname), output.Clean(s.Usename),
			output.Clean(s.ApplicationName), output.Clean(state), cut(output.Clean(s.Query), 80))
	}
	for _, root := range tree.Roots {
		fmt.Fprintf(io.Out, "%s\n", describe(root))
		for _, w := range tree.Waiters[root] {
			fmt.Fprintf(io.Out, "  └ waits %s: %s\n", output.Age(waits[w]), describe(w))
		}
	}
	fmt.Fprintln(io.Out)
}

func cut(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
