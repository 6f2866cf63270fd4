package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// UnblockOptions are the inputs of `pgreap unblock`.
type UnblockOptions struct {
	ActOptions

	LongerThan time.Duration
	Cancel     bool
	// Timeout bounds how long unblock goes on ending the sessions that
	// still hold up the waits it set out to release.
	Timeout time.Duration
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

Ending the roots does not always release their waiters: a row locked by
several transactions (SELECT ... FOR SHARE by two, a foreign key check)
makes the waiter wait for each in turn, and the server names one at a
time (pgreap names them all when it may read the table, connected to its
database). So unblock looks again: while the waits it set out to release
remain, it ends what now holds them up (asking again on a terminal), for
up to --timeout (default 10s). If they still wait then, it says who waits
for whom and exits 3.

The table shows the tree: each root, its waiters indented with how long
each has waited, then the roots' outcomes. JSON and CSV have one row per
root with its outcome, each followed by its waiters: rows with blocked_by
set and no action or outcome. A --dry-run -o json plan can be given to
'pgreap apply', which acts on the roots and skips the waiters.

The roots are listed and confirmed on a terminal; without one, --yes is
needed. Exit status: 0 all roots ended and their waiters released, 1 no
lock wait that long, 2 usage or connection error, 3 some root denied,
survived, changed or protected, or a wait still there at the timeout.`,
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
			if opts.LongerThan < 0 || opts.Wait < 0 || opts.Limit < 0 || opts.Timeout < 0 {
				return usageError(errors.New("--longer-than, --wait, --timeout and --limit must not be negative"))
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
	fs.DurationVar(&opts.Timeout, "timeout", 10*time.Second, "how long to go on ending what still holds up those waits (`D`)")
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
	var (
		plan           *action.Plan
		results, shown []action.Result
		acted          = map[int32]bool{}
		// waiters are the waits this run set out to release: those of the
		// first tree. Ending a root does not always release them: a row
		// held by several transactions (FOR SHARE) makes its waiter wait
		// for each in turn, and the server names one at a time.
		waiters  map[int32]bool
		deadline <-chan time.Time
		last     *unblockLook
	)
	poll := 10 * time.Millisecond
	for round := 1; ; round++ {
		look, err := lookUnblock(ctx, conn, sel, opts, waiters)
		if err != nil {
			return err
		}
		last = look
		if round == 1 {
			if len(look.tree.Roots) == 0 {
				return fmt.Errorf("%w: no lock wait longer than %s", ErrNoMatch, opts.LongerThan)
			}
			waiters = map[int32]bool{}
			for _, ws := range look.tree.Waiters {
				for _, w := range ws {
					waiters[w] = true
				}
			}
		}
		var roots []int32
		for _, r := range look.tree.Roots {
			if !acted[r] {
				roots = append(roots, r)
			}
		}
		if len(roots) == 0 {
			if len(look.tree.Waiters) == 0 {
				break // every wait it set out to release is released
			}
			select {
			case <-deadline:
			case <-ctx.Done():
			case <-time.After(poll):
				poll = min(poll*2, 200*time.Millisecond)
				continue
			}
			break
		}
		if opts.Format == output.Table {
			if round > 1 {
				fmt.Fprintln(opts.IO.Out, "Still waiting, behind other sessions:")
			}
			writeTree(opts.IO, look.snap, look.tree, look.waits)
		}
		// The roots, only while they still hold up a wait that long (after
		// the first round: while they still block someone), and as the
		// selectors allow: the signalling statement checks it again, and
		// so does apply with a plan of it.
		roundSel := *sel
		if opts.LongerThan > 0 && round == 1 {
			roundSel.BlockingLongerThan = opts.LongerThan
		} else {
			roundSel.Blocking = true
		}
		opts.PIDs = roots
		p, res, err := actRound(ctx, &opts.ActOptions, conn, &roundSel, true)
		if p == nil {
			if round == 1 {
				return err
			}
			break
		}
		plan = p
		results = mergeResults(results, res)
		shown = mergeResults(shown, withWaiters(res, look.snap, look.tree, look.waits))
		for _, r := range res {
			// A root that no longer matched may match in the next round
			// (the server names a row's holders one at a time).
			if r.Outcome != action.Changed {
				acted[r.PID] = true
			}
		}
		if err != nil || opts.DryRun {
			return finish(opts.IO, opts.Format, opts.Color, opts.Action, plan, results, unblockShown(opts, results, shown), err, opts.DryRun)
		}
		if deadline == nil {
			deadline = time.After(opts.Timeout)
		}
	}
	err = finish(opts.IO, opts.Format, opts.Color, opts.Action, plan, results, unblockShown(opts, results, shown), nil, false)
	if still := last.stillWaiting(); still != "" {
		// Ending the roots did not release every wait: say who still
		// blocks whom, whatever the roots' outcomes.
		return &exitError{ExitIncomplete, fmt.Errorf("still waiting after %s: %s", opts.Timeout, still)}
	}
	return err
}

// mergeResults appends a round's results, a session's later result
// replacing its earlier one.
func mergeResults(all, round []action.Result) []action.Result {
	at := map[int32]int{}
	for i := range all {
		if all[i].Action != "" {
			at[all[i].PID] = i
		}
	}
	for _, r := range round {
		if i, ok := at[r.PID]; ok && r.Action != "" {
			all[i] = r
			continue
		}
		all = append(all, r)
	}
	return all
}

// unblockShown: the table shows the tree as it goes and the outcomes at
// the end; JSON and CSV put each root's waiters after it.
func unblockShown(opts *UnblockOptions, results, shown []action.Result) []action.Result {
	if opts.Format == output.Table {
		return results
	}
	return shown
}

// unblockLook is one look at the lock waits.
type unblockLook struct {
	snap  *activity.Snapshot
	waits map[int32]time.Duration
	tree  *maintenance.Tree
}

// lookUnblock takes a snapshot and builds the tree of the waits longer
// than --longer-than, with the roots the selectors keep. With waiters (after
// a round), the tree is of those waits alone, however long each has waited
// for whom it waits for now.
func lookUnblock(ctx context.Context, conn *pgx.Conn, sel *selector.Selector, opts *UnblockOptions, waiters map[int32]bool) (*unblockLook, error) {
	snap, err := activity.Take(ctx, conn, activity.Filter{})
	if err != nil {
		return nil, err
	}
	waits, err := maintenance.Waits(ctx, conn)
	if err != nil {
		return nil, err
	}
	minWait := opts.LongerThan
	if waiters != nil {
		minWait = 0
		for pid := range waits {
			if !waiters[pid] {
				delete(waits, pid)
			}
		}
	}
	tree := maintenance.BlockingTree(snap.Sessions, waits, minWait)
	if opts.Selectors.Given() && len(tree.Roots) > 0 {
		// Only the roots the selectors keep.
		chosen, err := activity.Take(ctx, conn, sel.Filter())
		if err != nil {
			return nil, err
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
	return &unblockLook{snap: snap, waits: waits, tree: tree}, nil
}

// stillWaiting names the waits of the tree still there, and for whom
// each waits: "1234 waits for 5678, 5679".
func (l *unblockLook) stillWaiting() string {
	byPID := map[int32]*activity.Session{}
	for i := range l.snap.Sessions {
		byPID[l.snap.Sessions[i].PID] = &l.snap.Sessions[i]
	}
	var parts []string
	seen := map[int32]bool{}
	for _, root := range l.tree.Roots {
		for _, w := range l.tree.Waiters[root] {
			if s := byPID[w]; s != nil && !seen[w] && len(s.BlockedBy) > 0 {
				seen[w] = true
				by := make([]string, len(s.BlockedBy))
				for i, b := range s.BlockedBy {
					by[i] = strconv.Itoa(int(b))
				}
				parts = append(parts, fmt.Sprintf("%d waits for %s", w, strings.Join(by, ", ")))
			}
		}
	}
	return strings.Join(parts, "; ")
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
