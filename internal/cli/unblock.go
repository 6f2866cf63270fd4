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
	// Replay ends the sessions that hold up WAL replay on a hot standby;
	// Terminate terminates them instead of cancelling their queries.
	Replay    bool
	Terminate bool
	// Timeout bounds how long unblock goes on ending the sessions that
	// still hold up the waits it set out to release.
	Timeout time.Duration
	// RollbackPrepared rolls back the prepared transactions at roots,
	// connected to each one's database with ConnectDB.
	RollbackPrepared bool
	ConnectDB        func(ctx context.Context, database string) (*pgx.Conn, error)
}

// NewCmdUnblock builds `pgreap unblock`; runF replaces the run in tests.
func NewCmdUnblock(f *Factory, runF func(context.Context, *UnblockOptions) error) *cobra.Command {
	opts := &UnblockOptions{ActOptions: ActOptions{IO: f.IO, Action: action.Terminate}}
	cmd := &cobra.Command{
		Use:   "unblock [--longer-than D] [--replay] [SELECTORS]",
		Short: "End the sessions at the root of lock waits",
		Long: `Find the sessions that have waited on a lock longer than --longer-than
(default 10s; since pg_locks.waitstart on 14+, the statement's age before),
follow pg_blocking_pids up to the roots (sessions that block others and
wait for no one), show the tree, and end the roots.

Roots are terminated by default: cancelling a statement inside a
transaction block does not release the locks the transaction holds.
--cancel only cancels. Waiters are never touched. A root is pinned by its
identity and its query, and is signalled only if it still holds up a wait
that long at that instant. Protected roots (autovacuum workers, walsenders) are
reported and left alone unless included. Selectors narrow which roots may
be ended (e.g. --db shop).

A prepared transaction (PREPARE TRANSACTION) holds its locks with no
backend: pg_blocking_pids says 0 for it. unblock shows it as a root of its
own (no pid, backend_type "prepared transaction", its GID, database,
owner, and when it was prepared as xact_start) with its waiters under it,
and leaves it alone: outcome protected, exit 3. --rollback-prepared rolls
it back with ROLLBACK PREPARED, connected to its database, guarded by its
GID and prepared time (a new transaction that took the GID is changed);
outcome "rolled back"; in a later round also one that a wait reaches
once a session ahead of it is ended, if it was there at the first look.
Left alone, it holds its waiters: unblock does not spend --timeout on
waits that only prepared transactions hold up. It is never the default: a prepared transaction is
one side of a two-phase commit, and rolling it back can break the
atomicity another system counts on (its coordinator may have committed
the other sides). Only its owner or a superuser may roll it back. Selectors
choose prepared roots by --db, --user and --backend-type; a selection on
anything only a backend has (--app, --state, --query, ...) leaves them out.

Ending the roots does not always release their waiters: a row locked by
several transactions (SELECT ... FOR SHARE by two, a foreign key check)
makes the waiter wait for each in turn, and the server names one at a
time (pgreap names them all where it may read the row safely, connected
to its database: docs/safety.md). So unblock looks again: while the waits
it set out to release are held up by a session that was there at the
start and did not wait then (never a waiter: once granted, a waiter blocks
those queued behind it, which is the queue moving), it ends that one too,
checked at its signal to still block one of those waits, asking again on
a terminal, for up to --timeout (default 10s); --limit counts the whole
run. If they are still held up then, it says
who waits for whom and exits 3.

The table shows the tree: each root, its waiters indented with how long
each has waited, then the roots' outcomes. JSON and CSV have one row per
root with its outcome, each followed by its waiters: rows with blocked_by
set and no action or outcome. A --dry-run -o json plan can be given to
'pgreap apply', which acts on the roots and skips the waiters (and never
rolls back a prepared transaction: it refuses a plan that would).

On a hot standby, --replay ends the sessions that hold up WAL replay
instead: the startup process waits for a lock (replaying DROP TABLE,
TRUNCATE or a vacuum's truncation) that read-only queries hold, until
max_standby_streaming_delay cancels them, or forever with -1. Selectors
narrow which blockers may be ended (e.g. --db, --app); each is signalled
only if it still blocks replay at that instant. They are cancelled by
default (a cancel ends a read-only query and releases its snapshot and
locks); --terminate terminates them. A cancel does not end a transaction:
a blocker idle in its transaction keeps its lock. So unblock looks again,
for up to --timeout: while replay is still held up, it says by whom (use
--terminate) and exits 3; also when replay went past that record and
waits again for another (DROP TABLE a, then DROP TABLE b: run it
again). --longer-than is then how long replay has
waited (default 0: now), which the server says on 14+ only
(pg_locks.waitstart): on 12 and 13 a --longer-than with --replay is
refused. The table shows the replay (its wait, lag and WAL to replay)
with its blockers under it, then their outcomes; JSON and CSV have the
blockers' rows, and a --dry-run -o json plan records blocking_replay,
which 'pgreap apply' checks again. Not a standby, or replay not waiting:
exit 1. Replay waiting for a buffer pin, or for queries whose snapshot
or tablespace conflicts with it (shown from 13 on), names no one:
nothing ended, exit 3. A role without pg_read_all_stats cannot see the
startup process: it still sees a lock wait and its holders (pg_locks),
not the other waits.

The roots are listed and confirmed on a terminal; without one, --yes is
needed. Exit status: 0 all roots ended and their waiters released, 1 no
lock wait that long, 2 usage or connection error, 3 some root denied,
survived, changed or protected (a prepared transaction left alone), or a
wait still there at the timeout.`,
		Example: `  pgreap unblock
  pgreap unblock --longer-than 1m --db shop --yes
  pgreap unblock --cancel --dry-run
  pgreap unblock --rollback-prepared --db shop
  pgreap unblock --replay --dry-run            # on a standby: what holds up WAL replay
  pgreap unblock --replay --terminate --yes`,
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
			if opts.Cancel && opts.Terminate {
				return usageError(errors.New("--cancel and --terminate: give one of them"))
			}
			if opts.Replay {
				if opts.RollbackPrepared {
					return usageError(errors.New("--replay and --rollback-prepared: WAL replay waits for sessions, never for a prepared transaction"))
				}
				if !cmd.Flags().Changed("longer-than") {
					opts.LongerThan = 0 // replay waits already: act now
				}
				// A cancel ends a read-only query and its snapshot and
				// locks; the run says so when a transaction holds on.
				opts.Action = action.Cancel
			}
			if opts.Cancel {
				opts.Action = action.Cancel
			}
			if opts.Terminate {
				opts.Action = action.Terminate
			}
			if opts.Poolers, err = f.Poolers(); err != nil {
				return err
			}
			opts.Color, opts.Connect, opts.ConnectDB, opts.Logger = f.Color(), f.Connect, f.ConnectDB, f.Logger()
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return unblockRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	opts.Selectors = selector.AddFlags(fs, "longer-than")
	fs.DurationVar(&opts.LongerThan, "longer-than", 10*time.Second, "lock waits longer than `D` (with --replay: replay's wait, default 0)")
	fs.BoolVar(&opts.Cancel, "cancel", false, "cancel the roots' queries instead of terminating them")
	fs.BoolVar(&opts.Replay, "replay", false, "on a hot standby, end the sessions that hold up WAL replay (cancel by default)")
	fs.BoolVar(&opts.Terminate, "terminate", false, "terminate instead of cancelling (the default without --replay)")
	fs.DurationVar(&opts.Timeout, "timeout", 10*time.Second, "how long to go on ending what still holds up those waits (`D`)")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "act on nothing: show the tree and the plan")
	fs.BoolVarP(&opts.Yes, "yes", "y", false, "do not ask: needed without a terminal")
	fs.IntVar(&opts.Limit, "limit", 0, "refuse to act on more than `N` roots (0: no limit)")
	fs.DurationVar(&opts.Wait, "wait", 5*time.Second, "how long to wait for the roots to end (`D`)")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "allow walsenders as roots")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "allow autovacuum workers as roots")
	fs.BoolVar(&opts.RollbackPrepared, "rollback-prepared", false, "roll back the prepared transactions at roots (ROLLBACK PREPARED; see --help)")
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
	mopts := maintenance.UnblockOptions{
		Action: opts.Action, LongerThan: opts.LongerThan, Timeout: opts.Timeout, Wait: opts.Wait, Limit: opts.Limit,
		DryRun: opts.DryRun, IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum,
		RollbackPrepared: opts.RollbackPrepared, ConnectDB: opts.ConnectDB, Logger: opts.Logger,
	}
	if opts.Selectors.Given() {
		mopts.Selector = sel
	}
	if opts.Replay && opts.LongerThan > 0 {
		version, err := activity.ServerVersion(ctx, conn)
		if err != nil {
			return err
		}
		if version < 140000 {
			return usageError(fmt.Errorf("--longer-than %s with --replay needs PostgreSQL 14 or later: before 14 the server does not say when replay began to wait (pg_locks.waitstart); leave it out to act now", opts.LongerThan))
		}
	}
	pooled, err := lookPooled(ctx, conn, opts.Poolers)
	if err != nil {
		return err
	}
	if pooled != nil {
		// Roots behind a pooler are named by their pooled clients, and
		// chosen by them.
		if mopts.Selector == nil {
			mopts.Selector = &selector.Selector{}
		}
		mopts.Selector = mopts.Selector.WithPooled(pooled)
	}
	if !opts.Yes {
		mopts.Confirm = func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error {
			return confirm(ctx, &opts.ActOptions, plan, rows, what)
		}
	}
	if opts.Replay {
		return unblockReplay(ctx, opts, conn, mopts)
	}
	if opts.Format == output.Table {
		mopts.Show = func(round int, snap *activity.Snapshot, tree *maintenance.Tree, waits map[int32]time.Duration) {
			if round > 1 {
				fmt.Fprintln(opts.IO.Out, "Still waiting, behind other sessions:")
			}
			writeTree(opts.IO, snap, tree, waits)
		}
	}
	u, err := maintenance.Unblock(ctx, conn, mopts)
	if u.Plan == nil {
		return err
	}
	shown := u.Results
	if opts.Format != output.Table {
		shown = u.Shown
	}
	ferr := finish(opts.IO, opts.Format, opts.Color, opts.Action, u.Plan, u.Results, shown, err, opts.DryRun)
	switch {
	case err != nil || u.Still == "":
		return ferr
	case u.LimitHit:
		return incomplete(fmt.Errorf("still waiting, and ending more would pass --limit %d: %s", opts.Limit, u.Still))
	}
	// Ending the roots did not release every wait: say who still blocks
	// whom, whatever the roots' outcomes.
	return incomplete(fmt.Errorf("still waiting%s: %s", u.After, u.Still))
}

// writeTree prints the roots with the waiters queued behind each, and how
// long each has waited.
func writeTree(io *IOStreams, snap *activity.Snapshot, tree *maintenance.Tree, waits map[int32]time.Duration) {
	byPID := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	prepared := map[string]*activity.Session{}
	for i := range snap.Prepared {
		prepared[snap.Prepared[i].GID] = &snap.Prepared[i]
	}
	describe := func(n maintenance.Node) string {
		if p := prepared[n.GID]; n.GID != "" && p != nil {
			return fmt.Sprintf("%s  %s  %s  %s, prepared %s ago", output.Cut(output.PreparedName(n.GID), 80), output.Clean(p.Datname),
				output.Clean(p.Usename), activity.BackendTypePrepared, output.Age(snap.Taken.Sub(p.XactStart)))
		}
		return describeSession(n.PID, byPID[n.PID])
	}
	for _, root := range tree.Roots {
		fmt.Fprintf(io.Out, "%s\n", describe(root))
		for _, w := range tree.Waiters[root] {
			fmt.Fprintf(io.Out, "  └ waits %s: %s\n", output.Age(waits[w]), describe(maintenance.Node{PID: w}))
		}
	}
	fmt.Fprintln(io.Out)
}

// describeSession is a session's line in a tree of unblock: pid,
// database, user, application, state and query; the pid alone when it is
// not in the snapshot.
func describeSession(pid int32, s *activity.Session) string {
	if s == nil {
		return strconv.Itoa(int(pid))
	}
	state := s.State
	if s.BackendType != "client backend" && s.BackendType != "" {
		state = strings.TrimSpace(s.BackendType + " " + state)
	}
	user, app, client := output.Who(s)
	if s.Pooler != nil {
		state = client + "  " + state // behind a pooler: whose transaction it is
	}
	return fmt.Sprintf("%d  %s  %s  %s  %s  %s", pid, output.Clean(s.Datname), output.Clean(user),
		output.Clean(app), output.Clean(state), output.Cut(output.Clean(s.Query), 80))
}

// unblockReplay is `unblock --replay`: the replay, its blockers under it,
// then their outcomes.
func unblockReplay(ctx context.Context, opts *UnblockOptions, conn *pgx.Conn, mopts maintenance.UnblockOptions) error {
	if opts.Format == output.Table {
		mopts.ShowReplay = func(snap *activity.Snapshot) { writeReplayTree(opts.IO, snap) }
	}
	u, err := maintenance.UnblockReplay(ctx, conn, mopts)
	if errors.Is(err, maintenance.ErrReplayBlockersUnknown) {
		return incomplete(err)
	}
	if u.Plan == nil {
		return err
	}
	ferr := finish(opts.IO, opts.Format, opts.Color, opts.Action, u.Plan, u.Results, u.Shown, err, opts.DryRun)
	if u.Note != "" {
		fmt.Fprintln(opts.IO.ErrOut, "pgreap: note: "+u.Note)
	}
	if err != nil || u.Still == "" {
		return ferr
	}
	// Never a success while replay is still held up: say by whom.
	return incomplete(errors.New(u.Still))
}

// writeReplayTree prints the replay (how long it has waited, on what, how
// far behind it is) and, under it, the sessions that hold it up.
func writeReplayTree(io *IOStreams, snap *activity.Snapshot) {
	r := snap.Replay
	waits := "waits"
	if d := r.WaitAge(snap.Taken); d > 0 {
		waits += " " + output.Age(d)
	}
	pid, on := "?", r.WaitKind() // hidden from this role (pg_read_all_stats)
	if r.Startup.PID != 0 {
		pid = strconv.Itoa(int(r.Startup.PID))
	}
	if r.Startup.WaitEventType != "" {
		on = output.Clean(r.Startup.WaitEventType)
		if r.Startup.WaitEvent != "" {
			on += ":" + output.Clean(r.Startup.WaitEvent)
		}
	}
	fmt.Fprintf(io.Out, "%s  WAL replay  %s on %s  %s\n", pid, waits, on, output.ReplaySummary(r, snap.Taken))
	byPID := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	if r.BlockersUnknown() {
		fmt.Fprintf(io.Out, "  └ held up by: ? (%s)\n", r.UnknownWhy())
	}
	for _, pid := range r.Startup.BlockedBy {
		line := describeSession(pid, byPID[pid])
		if byPID[pid] == nil {
			line += " (not in the selection)"
		}
		fmt.Fprintf(io.Out, "  └ held up by: %s\n", line)
	}
	fmt.Fprintln(io.Out)
}
