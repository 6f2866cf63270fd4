package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// RollbackPrepared rolls back the prepared transactions at roots,
	// connected to each one's database with ConnectDB.
	RollbackPrepared bool
	ConnectDB        func(ctx context.Context, database string) (*pgx.Conn, error)
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

The roots are listed and confirmed on a terminal; without one, --yes is
needed. Exit status: 0 all roots ended and their waiters released, 1 no
lock wait that long, 2 usage or connection error, 3 some root denied,
survived, changed or protected (a prepared transaction left alone), or a
wait still there at the timeout.`,
		Example: `  pgreap unblock
  pgreap unblock --longer-than 1m --db shop --yes
  pgreap unblock --cancel --dry-run
  pgreap unblock --rollback-prepared --db shop`,
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
			opts.Color, opts.Connect, opts.ConnectDB, opts.Logger = f.Color(), f.Connect, f.ConnectDB, f.Logger()
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
	look, err := lookUnblock(ctx, conn, sel, opts)
	if err != nil {
		return err
	}
	tree := look.firstTree(opts.LongerThan)
	if len(tree.Roots) == 0 {
		// The waits of unknown age behind roots the selectors keep.
		unknown := map[int32]bool{}
		all := look.firstTree(0)
		for _, r := range all.Roots {
			for _, w := range all.Waiters[r] {
				if look.waits[w] == maintenance.UnknownWait {
					unknown[w] = true
				}
			}
		}
		if n := len(unknown); n > 0 && opts.LongerThan > 0 {
			return fmt.Errorf("%w: no lock wait longer than %s that this role can time: %d wait%s of unknown age (before PostgreSQL 14 a wait is timed from its statement's start, which pg_read_all_stats shows of other roles' sessions)",
				ErrNoMatch, opts.LongerThan, n, plural(n))
		}
		return fmt.Errorf("%w: no lock wait longer than %s", ErrNoMatch, opts.LongerThan)
	}
	u := &unblocker{opts: opts, conn: conn, sel: sel, first: look,
		waiters: map[sessionID]bool{}, waiting: map[sessionID]bool{}, tried: map[sessionID]int{}}
	for _, r := range tree.Roots { // the roots the selectors kept
		for _, w := range tree.Waiters[r] {
			if s := look.byPID[w]; s != nil {
				u.waiters[idOf(s)] = true
			}
		}
	}
	for i := range look.snap.Sessions {
		if s := &look.snap.Sessions[i]; s.Waits() {
			u.waiting[idOf(s)] = true
		}
	}
	return u.run(ctx, look, tree)
}

// sessionID names a session: pids are reused.
type sessionID struct {
	pid   int32
	start int64
}

func idOf(s *activity.Session) sessionID { return sessionID{s.PID, s.BackendStart.UnixMicro()} }

// unblocker ends the roots of the first tree, then, while the waits of
// that tree remain, what still holds them up: ending a root does not
// always release its waiters. A row locked by several transactions (FOR
// SHARE by two, a foreign key check) makes its waiter wait for each in
// turn, and the server names one at a time.
type unblocker struct {
	opts  *UnblockOptions
	conn  *pgx.Conn
	sel   *selector.Selector
	first *unblockLook
	// waiters are the waits this run set out to release.
	waiters map[sessionID]bool
	// waiting are the sessions that waited on a lock at the first look,
	// those waits and younger ones: never touched (once granted, one
	// blocks those queued behind it: that is the queue moving).
	waiting map[sessionID]bool
	// tried counts the rounds each session was chosen in; maxTries once
	// it reached an outcome other than "no longer matches".
	tried map[sessionID]int

	plan           *action.Plan
	results, shown []action.Result
}

// maxTries bounds how often one session is chosen again: a session that
// no longer matched the check at its signal (the server had not named it
// yet as a row's holder) may match later; one that keeps not matching is
// left alone.
const maxTries = 3

func (u *unblocker) run(ctx context.Context, look *unblockLook, tree *maintenance.Tree) error {
	opts := u.opts
	var deadline time.Time
	poll := 10 * time.Millisecond
	limitHit, released := false, 0
	waited := " after " + opts.Timeout.String()
	for round := 1; ; round++ {
		if len(tree.Roots) > 0 {
			if opts.Limit > 0 && round > 1 && u.chosen()+len(tree.Roots) > opts.Limit {
				limitHit = true
				break
			}
			if opts.Format == output.Table {
				if round > 1 {
					fmt.Fprintln(opts.IO.Out, "Still waiting, behind other sessions:")
				}
				writeTree(opts.IO, look.snap, tree, look.waits)
			}
			// The first roots only while they still hold up a wait that
			// long, the others while they still block someone; and as the
			// selectors allow. The signalling statement checks it, and so
			// does apply with a plan of it.
			roundSel := *u.sel
			switch {
			case round > 1:
				roundSel.BlockingOf = u.stillWaitingPIDs(look)
			case opts.LongerThan > 0:
				roundSel.BlockingLongerThan = opts.LongerThan
			default:
				roundSel.Blocking = true
			}
			act := opts.ActOptions
			act.PIDs = tree.RootPIDs()
			if act.Limit > 0 {
				act.Limit -= u.chosen() // the limit is for the whole run
			}
			rb, err := u.preparedRoots(ctx, look, tree)
			if err != nil {
				return u.finish(err)
			}
			p, res, err := unblockRound(ctx, &act, u.conn, &roundSel, look.snap, rb)
			if p == nil {
				if round == 1 {
					return err
				}
				return u.finish(err)
			}
			u.plan = p
			u.results = mergeResults(u.results, res)
			u.shown = mergeResults(u.shown, withWaiters(res, look.snap, tree, look.waits))
			for i := range res {
				if r := &res[i]; r.Action != "" && !r.IsPrepared() {
					u.tried[idOf(&r.Session)]++
					if !r.NoMatch() {
						// Only a session that did not match the check yet
						// is chosen again.
						u.tried[idOf(&r.Session)] = maxTries
					}
				}
			}
			if err != nil || opts.DryRun {
				return u.finish(err)
			}
			if round == 1 {
				deadline = time.Now().Add(opts.Timeout)
			}
		}
		if !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return u.finish(errors.New("interrupted"))
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(poll*2, 200*time.Millisecond)
		var err error
		if look, err = lookUnblock(ctx, u.conn, u.sel, opts); err != nil {
			return u.finish(err)
		}
		still, onlyPrepared := look.stillWaiting(u.waiters, u.waiting)
		if still == "" {
			// Every wait it set out to release is released, twice in a
			// row: a waiter woken by a holder's end is not waiting for a
			// moment before it waits for the next holder of a row.
			if released++; released == 2 {
				break
			}
			tree = &maintenance.Tree{}
			continue
		}
		released = 0
		tree = look.nextTree(u)
		if len(tree.Roots) == 0 && onlyPrepared {
			// Held up by prepared transactions left alone: nothing will
			// end them, and waiting would only spend --timeout.
			waited = "" // at once
			break
		}
	}
	err := u.finish(nil)
	still, _ := look.stillWaiting(u.waiters, u.waiting)
	switch {
	case still != "" && limitHit:
		return incomplete(fmt.Errorf("still waiting, and ending more would pass --limit %d: %s", opts.Limit, still))
	case still != "":
		// Ending the roots did not release every wait: say who still
		// blocks whom, whatever the roots' outcomes.
		return incomplete(fmt.Errorf("still waiting%s: %s", waited, still))
	}
	return err
}

// unblockRound is actRound for a round of roots: the backends among them
// chosen and judged, the prepared transactions (rb) confirmed and rolled
// back with them. A round of prepared transactions alone chooses no
// session: an empty pid list would choose by the selection alone.
func unblockRound(ctx context.Context, opts *ActOptions, conn *pgx.Conn, sel *selector.Selector, snap *activity.Snapshot, rb *rollbacks) (*action.Plan, []action.Result, error) {
	if rb == nil || len(rb.rows) == 0 {
		return actRound(ctx, opts, conn, sel, true)
	}
	var plan *action.Plan
	if len(opts.PIDs) > 0 {
		var err error
		if plan, err = choose(ctx, opts, conn, sel); err != nil {
			return nil, nil, err
		}
	} else {
		plan = action.NewPlan(conn, snap, nil, action.Request{Action: opts.Action, Selector: sel})
	}
	results, err := carryOut(ctx, opts, conn, plan, true, rb)
	if results == nil {
		return nil, nil, err
	}
	return plan, results, err
}

// preparedRoots are the rows of the prepared transactions at the tree's
// roots: left alone (protected, which makes the run incomplete) unless
// --rollback-prepared; then planned, or denied as the rollback would be,
// and rolled back after the confirmation.
func (u *unblocker) preparedRoots(ctx context.Context, look *unblockLook, tree *maintenance.Tree) (*rollbacks, error) {
	rb := &rollbacks{do: u.rollback}
	for _, r := range tree.Roots {
		p := look.prepared[r.GID]
		if r.GID == "" || p == nil {
			continue
		}
		res := action.Result{Session: *p, Action: action.Rollback, Named: true, Outcome: action.Protected}
		if u.opts.RollbackPrepared {
			var err error
			if res.Outcome, res.Detail, err = maintenance.JudgePrepared(ctx, u.conn, p); err != nil {
				return nil, err
			}
		} else {
			res.Detail = fmt.Sprintf("prepared transaction '%s', prepared %s ago: end it with ROLLBACK PREPARED or COMMIT PREPARED, or --rollback-prepared",
				p.GID, output.Age(look.snap.Taken.Sub(p.XactStart)))
		}
		rb.rows = append(rb.rows, res)
	}
	return rb, nil
}

// rollback rolls back a prepared transaction, connected to its database:
// ROLLBACK PREPARED refuses one of another database.
func (u *unblocker) rollback(ctx context.Context, r *action.Result) {
	conn := u.conn
	if conn.Config().Database != r.Datname {
		c, err := u.opts.ConnectDB(ctx, r.Datname)
		if err != nil {
			r.Outcome, r.Detail = action.Denied, fmt.Sprintf("cannot connect to its database: %v", err)
			return
		}
		defer c.Close(context.WithoutCancel(ctx))
		conn = c
	}
	r.Outcome, r.Detail = maintenance.RollbackPrepared(ctx, conn, &r.Session)
}

// stillWaitingPIDs are the pids of the waits this run set out to release
// that are still there in look.
func (u *unblocker) stillWaitingPIDs(look *unblockLook) []int32 {
	var pids []int32
	for i := range look.snap.Sessions {
		if s := &look.snap.Sessions[i]; u.waiters[idOf(s)] {
			pids = append(pids, s.PID)
		}
	}
	return pids
}

// chosen is how many sessions the run has chosen to act on so far.
func (u *unblocker) chosen() int {
	n := 0
	for _, r := range u.results {
		if r.Action != "" && r.Outcome != action.Protected {
			n++
		}
	}
	return n
}

// finish prints every round's results; err stops the run (the rounds done
// are still reported).
func (u *unblocker) finish(err error) error {
	opts := u.opts
	if u.plan == nil {
		return err
	}
	shown := u.results
	if opts.Format != output.Table {
		shown = u.shown
	}
	return finish(opts.IO, opts.Format, opts.Color, opts.Action, u.plan, u.results, shown, err, opts.DryRun)
}

// mergeResults appends a round's results, a session's later result
// replacing its earlier one.
func mergeResults(all, round []action.Result) []action.Result {
	at := map[maintenance.Node]int{}
	for i := range all {
		if all[i].Action != "" {
			at[maintenance.NodeOf(&all[i].Session)] = i
		}
	}
	for _, r := range round {
		if i, ok := at[maintenance.NodeOf(&r.Session)]; ok && r.Action != "" {
			all[i] = r
			continue
		}
		all = append(all, r)
	}
	return all
}

// unblockLook is one look at the lock waits: every session, the prepared
// transactions they wait on, and how long each waiter has waited.
type unblockLook struct {
	snap     *activity.Snapshot
	graph    *maintenance.Graph
	waits    map[int32]time.Duration
	byPID    map[int32]*activity.Session
	prepared map[string]*activity.Session
	// keep: the sessions the selectors allow to be ended (nil: all).
	keep map[int32]bool
	sel  *selector.Selector
}

// lookUnblock takes a snapshot (with every holder of a row its waiters
// wait for, where pgreap may read the row) and the waits.
func lookUnblock(ctx context.Context, conn *pgx.Conn, sel *selector.Selector, opts *UnblockOptions) (*unblockLook, error) {
	snap, err := activity.Take(ctx, conn, activity.Filter{})
	if err != nil {
		return nil, err
	}
	if err := activity.RowLockHolders(ctx, conn, snap); err != nil {
		return nil, err
	}
	if opts.RollbackPrepared {
		// Every one: a wait may reach one only once a session ahead of
		// it is ended, and unblock rolls back only those there at the
		// first look.
		if snap.Prepared, err = activity.PreparedIn(ctx, conn, ""); err != nil {
			return nil, err
		}
	} else if err := activity.PreparedBlockers(ctx, conn, snap); err != nil {
		return nil, err
	}
	waits, err := maintenance.Waits(ctx, conn)
	if err != nil {
		return nil, err
	}
	l := &unblockLook{snap: snap, graph: maintenance.GraphOf(snap), waits: waits, byPID: map[int32]*activity.Session{}, prepared: map[string]*activity.Session{}}
	for i := range snap.Sessions {
		l.byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	for i := range snap.Prepared {
		l.prepared[snap.Prepared[i].GID] = &snap.Prepared[i]
	}
	if opts.Selectors.Given() {
		l.sel = sel
		chosen, err := activity.Take(ctx, conn, sel.Filter())
		if err != nil {
			return nil, err
		}
		l.keep = map[int32]bool{}
		for i := range chosen.Sessions {
			if sel.Keep(&chosen.Sessions[i]) {
				l.keep[chosen.Sessions[i].PID] = true
			}
		}
	}
	return l, nil
}

// firstTree is the tree of the waits longer than min, with the roots the
// selectors keep.
func (l *unblockLook) firstTree(min time.Duration) *maintenance.Tree {
	tree := l.graph.Tree(l.waits, min)
	roots := tree.Roots[:0]
	for _, r := range tree.Roots {
		if r.GID != "" {
			// A prepared transaction ended since the snapshot is not
			// shown; one is in the selection by database and owner.
			if p := l.prepared[r.GID]; p != nil && (l.sel == nil || l.sel.KeepPrepared(p)) {
				roots = append(roots, r)
			}
		} else if l.keep == nil || l.keep[r.PID] {
			roots = append(roots, r)
		}
	}
	tree.Roots = roots
	return tree
}

// nextTree is what still holds up the first tree's waits: up from each of
// those waiters still waiting, past the sessions it waits for, to the
// ones that wait for no one. Never a session that waited at the first look
// (once granted, one blocks those queued behind it: that is the queue
// moving); never a session or prepared transaction that was not there at
// the first look (it is not what was confirmed); never one chosen
// maxTries times (a prepared transaction: once); a prepared transaction
// only with --rollback-prepared; and as the selectors allow.
func (l *unblockLook) nextTree(u *unblocker) *maintenance.Tree {
	tree := &maintenance.Tree{Waiters: map[maintenance.Node][]int32{}}
	pass := func(n maintenance.Node) bool {
		if n.GID != "" {
			return true
		}
		s := l.byPID[n.PID]
		return s != nil && !u.waiting[idOf(s)]
	}
	for i := range l.snap.Sessions {
		w := &l.snap.Sessions[i]
		if !u.waiters[idOf(w)] || !w.Waits() {
			continue
		}
		for _, n := range l.graph.Tops(maintenance.NodeOf(w), pass) {
			if n.GID == "" {
				s, was := l.byPID[n.PID], u.first.byPID[n.PID]
				if was == nil || idOf(was) != idOf(s) || u.tried[idOf(s)] >= maxTries || (l.keep != nil && !l.keep[n.PID]) {
					continue
				}
			} else {
				p, was := l.prepared[n.GID], u.first.prepared[n.GID]
				if !u.opts.RollbackPrepared || p == nil || was == nil || !p.XactStart.Equal(was.XactStart) ||
					u.acted(n) || (l.sel != nil && !l.sel.KeepPrepared(p)) {
					continue
				}
			}
			tree.Add(n, w.PID)
		}
	}
	tree.SortRoots()
	return tree
}

// acted reports whether the run has a result for the node already.
func (u *unblocker) acted(n maintenance.Node) bool {
	return slices.ContainsFunc(u.results, func(r action.Result) bool {
		return r.Action != "" && maintenance.NodeOf(&r.Session) == n
	})
}

// stillWaiting names the waits among waiters that are still held up by a
// session that did not itself wait at the first look (waiting: one that
// did is the queue moving) or by a prepared transaction, and for whom each
// waits: "1234 waits for 5678, prepared:px"; "" when there is none.
// onlyPrepared: each of them waits for prepared transactions alone.
func (l *unblockLook) stillWaiting(waiters, waiting map[sessionID]bool) (still string, onlyPrepared bool) {
	var parts []string
	onlyPrepared = true
	for i := range l.snap.Sessions {
		w := &l.snap.Sessions[i]
		if !waiters[idOf(w)] {
			continue
		}
		var by []string
		for _, b := range w.BlockedBy {
			if s := l.byPID[b]; s == nil || !waiting[idOf(s)] {
				by = append(by, strconv.Itoa(int(b)))
			}
		}
		if len(by) > 0 {
			onlyPrepared = false
		}
		for _, g := range w.BlockedByPrepared {
			by = append(by, output.PreparedName(g))
		}
		if len(by) > 0 {
			parts = append(parts, fmt.Sprintf("%d waits for %s", w.PID, strings.Join(by, ", ")))
		}
	}
	return strings.Join(parts, "; "), onlyPrepared
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
		for _, w := range tree.Waiters[maintenance.NodeOf(&r.Session)] {
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
	prepared := map[string]*activity.Session{}
	for i := range snap.Prepared {
		prepared[snap.Prepared[i].GID] = &snap.Prepared[i]
	}
	describe := func(n maintenance.Node) string {
		if p := prepared[n.GID]; n.GID != "" && p != nil {
			return fmt.Sprintf("%s  %s  %s  %s, prepared %s ago", output.Cut(output.PreparedName(n.GID), 80), output.Clean(p.Datname),
				output.Clean(p.Usename), activity.BackendTypePrepared, output.Age(snap.Taken.Sub(p.XactStart)))
		}
		pid := n.PID
		s := byPID[pid]
		if s == nil {
			return strconv.Itoa(int(pid))
		}
		state := s.State
		if s.BackendType != "client backend" && s.BackendType != "" {
			state = strings.TrimSpace(s.BackendType + " " + state)
		}
		return fmt.Sprintf("%d  %s  %s  %s  %s  %s", pid, output.Clean(s.Datname), output.Clean(s.Usename),
			output.Clean(s.ApplicationName), output.Clean(state), output.Cut(output.Clean(s.Query), 80))
	}
	for _, root := range tree.Roots {
		fmt.Fprintf(io.Out, "%s\n", describe(root))
		for _, w := range tree.Waiters[root] {
			fmt.Fprintf(io.Out, "  └ waits %s: %s\n", output.Age(waits[w]), describe(maintenance.Node{PID: w}))
		}
	}
	fmt.Fprintln(io.Out)
}
