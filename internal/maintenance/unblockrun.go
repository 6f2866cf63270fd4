package maintenance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/selector"
)

// ErrNoMatch: the selection matched no session.
var ErrNoMatch = errors.New("no sessions matched")

// UnblockOptions say which roots of lock waits Unblock ends, and how.
type UnblockOptions struct {
	// Action is Terminate or Cancel.
	Action action.Kind
	// LongerThan: the waits to release, those that waited that long.
	LongerThan time.Duration
	// Selector narrows the roots it may end (nil: any); its prepared
	// transactions by database and owner.
	Selector *selector.Selector
	// Timeout bounds how long Unblock goes on ending the sessions that
	// still hold up the waits it set out to release; Wait, how long it
	// waits for each round's sessions to end.
	Timeout, Wait time.Duration
	// Limit: no more than that many roots ended in the whole run (0: no
	// limit).
	Limit  int
	DryRun bool
	// IncludeReplication and IncludeAutovacuum allow walsenders and
	// autovacuum workers as roots.
	IncludeReplication, IncludeAutovacuum bool
	// RollbackPrepared rolls back the prepared transactions at roots,
	// connected to each one's database with ConnectDB; they are left
	// alone (Protected) otherwise.
	RollbackPrepared bool
	ConnectDB        func(ctx context.Context, database string) (*pgx.Conn, error)

	// Confirm, when set, is asked before each round acts (not in a dry
	// run): what says what the round would do; an error stops the run,
	// nothing done in that round.
	Confirm func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error
	// Show, when set, is given each round's tree before it acts.
	Show func(round int, snap *activity.Snapshot, tree *Tree, waits map[int32]time.Duration)
	// ShowReplay, when set, is given UnblockReplay's look before it acts:
	// the replay, and in its sessions the blockers the selectors keep.
	ShowReplay func(snap *activity.Snapshot)
	// Logger (nil: none) gets each round's choice at debug level.
	Logger *slog.Logger
}

// Unblocked is what Unblock did.
type Unblocked struct {
	// Plan is the last round's plan; nil when nothing was chosen.
	Plan *action.Plan
	// Results are every round's results, a session's later result
	// replacing its earlier one; Shown has after each root the waiters
	// queued behind it, as rows with no action and no outcome.
	Results, Shown []action.Result
	// Still names the waits still held up when the rounds ended, and by
	// whom: "1234 waits for 5678, prepared:px"; "" when all were
	// released (or the run was stopped: see its error).
	Still string
	// LimitHit: ending more would have passed Limit. After says when it
	// gave up: " after 10s" at Timeout, "" at once (held up by prepared
	// transactions left alone, which nothing will end).
	LimitHit bool
	After    string
	// Note says what the run could not see (unblock --replay by a role
	// that may not see the startup process); "" otherwise.
	Note string
}

// Unblock ends the sessions at the root of the lock waits older than
// LongerThan (those that block others and wait for no one), and, while
// those waits remain, what still holds them up, until Timeout. It never
// ends a session that waited itself at the first look (once granted, it
// blocks those queued behind it: that is the queue moving), nor one that
// was not there at the first look. ErrNoMatch: no such wait, or none
// whose root the selector keeps. An error stops it; what it did until
// then is in the Unblocked returned with it.
func Unblock(ctx context.Context, conn *pgx.Conn, opts UnblockOptions) (*Unblocked, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	look, err := lookUnblock(ctx, conn, &opts)
	if err != nil {
		return &Unblocked{}, err
	}
	tree := look.firstTree(opts.LongerThan)
	if len(tree.Roots) == 0 {
		// The waits of unknown age behind roots the selectors keep.
		unknown := map[int32]bool{}
		all := look.firstTree(0)
		for _, r := range all.Roots {
			for _, w := range all.Waiters[r] {
				if look.waits[w] == UnknownWait {
					unknown[w] = true
				}
			}
		}
		if n := len(unknown); n > 0 && opts.LongerThan > 0 {
			return &Unblocked{}, fmt.Errorf("%w: no lock wait longer than %s that this role can time: %d wait%s of unknown age (before PostgreSQL 14 a wait is timed from its statement's start, which pg_read_all_stats shows of other roles' sessions)",
				ErrNoMatch, opts.LongerThan, n, plural(n))
		}
		return &Unblocked{}, fmt.Errorf("%w: no lock wait longer than %s", ErrNoMatch, opts.LongerThan)
	}
	sel := opts.Selector
	if sel == nil {
		sel = &selector.Selector{}
	}
	u := &unblocker{opts: &opts, conn: conn, sel: sel, first: look,
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
	err = u.run(ctx, look, tree)
	return &Unblocked{Plan: u.plan, Results: u.results, Shown: u.shown, Still: u.still, LimitHit: u.limitHit, After: u.after}, err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func (u *unblocker) run(ctx context.Context, look *Look, tree *Tree) error {
	opts := u.opts
	var deadline time.Time
	poll := 10 * time.Millisecond
	released := 0
	u.after = " after " + opts.Timeout.String()
	for round := 1; ; round++ {
		if len(tree.Roots) > 0 {
			if opts.Limit > 0 && round > 1 && u.chosen()+len(tree.Roots) > opts.Limit {
				u.limitHit = true
				break
			}
			if opts.Show != nil {
				opts.Show(round, look.snap, tree, look.waits)
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
			limit := opts.Limit
			if limit > 0 {
				limit -= u.chosen() // the limit is for the whole run
			}
			rb, err := u.preparedRoots(ctx, look, tree)
			if err != nil {
				return err
			}
			p, res, err := u.round(ctx, tree.RootPIDs(), limit, &roundSel, look.snap, rb)
			if p == nil {
				return err
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
				return err
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
			return &Interrupted{ctx.Err()}
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(poll*2, 200*time.Millisecond)
		var err error
		if look, err = lookUnblock(ctx, u.conn, opts); err != nil {
			return err
		}
		still, onlyPrepared := look.stillWaiting(u.waiters, u.waiting)
		if still == "" {
			// Every wait it set out to release is released, twice in a
			// row: a waiter woken by a holder's end is not waiting for a
			// moment before it waits for the next holder of a row.
			if released++; released == 2 {
				break
			}
			tree = &Tree{}
			continue
		}
		released = 0
		tree = look.nextTree(u)
		if len(tree.Roots) == 0 && onlyPrepared {
			// Held up by prepared transactions left alone: nothing will
			// end them, and waiting would only spend Timeout.
			u.after = "" // at once
			break
		}
	}
	u.still, _ = look.stillWaiting(u.waiters, u.waiting)
	return nil
}

// round chooses the backends among a round's roots (pids) and judges
// them, confirms them with the prepared transactions at roots (rb), ends
// them, then rolls back rb's planned ones. A round of prepared
// transactions alone chooses no session: an empty pid list would choose
// by the selection alone. A nil plan: nothing was done (the error says
// why).
func (u *unblocker) round(ctx context.Context, pids []int32, limit int, sel *selector.Selector, snap *activity.Snapshot, rb []action.Result) (*action.Plan, []action.Result, error) {
	opts := u.opts
	var plan *action.Plan
	if len(rb) == 0 || len(pids) > 0 {
		var err error
		plan, err = action.Choose(ctx, u.conn, action.Request{Action: opts.Action, PIDs: pids, Selector: sel,
			IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum})
		if err != nil {
			return nil, nil, err
		}
		opts.Logger.Debug("chosen", "sessions", len(plan.Results), "planned", plan.Count(action.Planned))
		if len(rb) == 0 && len(plan.Results) == 0 {
			return nil, nil, ErrNoMatch
		}
	} else {
		plan = action.NewPlan(u.conn, snap, nil, action.Request{Action: opts.Action, Selector: sel})
	}
	planned, rolls := plan.Count(action.Planned), 0
	for i := range rb {
		if rb[i].Outcome == action.Planned {
			rolls++
		}
	}
	if limit > 0 && planned+rolls > limit {
		return nil, nil, &action.LimitError{Chosen: planned + rolls, Limit: limit}
	}
	if opts.Confirm != nil && !opts.DryRun && planned+rolls > 0 {
		var what []string
		if planned > 0 {
			what = append(what, fmt.Sprintf("%s %d session%s", opts.Action, planned, plural(planned)))
		}
		if rolls > 0 {
			what = append(what, fmt.Sprintf("roll back %d prepared transaction%s", rolls, plural(rolls)))
		}
		if err := opts.Confirm(ctx, plan, append(slices.Clip(plan.Results), rb...), strings.Join(what, " and ")); err != nil {
			return nil, nil, err
		}
	}
	results, err := action.Execute(ctx, u.conn, plan, action.Options{DryRun: opts.DryRun, Wait: opts.Wait})
	if len(rb) > 0 {
		results = slices.Clip(results)
		for i := range rb {
			if r := &rb[i]; r.Outcome == action.Planned && !opts.DryRun && err == nil {
				u.rollback(ctx, r)
			}
		}
		results = append(results, rb...)
	}
	if results == nil {
		return nil, nil, err
	}
	for i := range results {
		// Behind a pooler the backend is not the culprit's own: say
		// whose transaction it holds.
		if r := &results[i]; r.Pooler != nil {
			r.Detail = strings.TrimPrefix(r.Detail+"; "+r.Pooler.Describe(), "; ")
		}
	}
	return plan, results, err
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
	first *Look
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
	still, after   string
	limitHit       bool
}

// maxTries bounds how often one session is chosen again: a session that
// no longer matched the check at its signal (the server had not named it
// yet as a row's holder) may match later; one that keeps not matching is
// left alone.
const maxTries = 3

// preparedRoots are the rows of the prepared transactions at the tree's
// roots: left alone (protected, which makes the run incomplete) unless
// RollbackPrepared; then planned, or denied as the rollback would be,
// and rolled back after the confirmation.
func (u *unblocker) preparedRoots(ctx context.Context, look *Look, tree *Tree) ([]action.Result, error) {
	var rb []action.Result
	for _, r := range tree.Roots {
		p := look.prepared[r.GID]
		if r.GID == "" || p == nil {
			continue
		}
		res := action.Result{Session: *p, Action: action.Rollback, Named: true, Outcome: action.Protected}
		if u.opts.RollbackPrepared {
			var err error
			if res.Outcome, res.Detail, err = JudgePrepared(ctx, u.conn, p); err != nil {
				return nil, err
			}
		} else {
			res.Detail = fmt.Sprintf("prepared transaction '%s', prepared %s ago: end it with ROLLBACK PREPARED or COMMIT PREPARED, or --rollback-prepared",
				p.GID, output.Age(look.snap.Taken.Sub(p.XactStart)))
		}
		rb = append(rb, res)
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
	r.Outcome, r.Detail = RollbackPrepared(ctx, conn, &r.Session)
}

// stillWaitingPIDs are the pids of the waits this run set out to release
// that are still there in look.
func (u *unblocker) stillWaitingPIDs(look *Look) []int32 {
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

// mergeResults appends a round's results, a session's later result
// replacing its earlier one.
func mergeResults(all, round []action.Result) []action.Result {
	at := map[Node]int{}
	for i := range all {
		if all[i].Action != "" {
			at[NodeOf(&all[i].Session)] = i
		}
	}
	for _, r := range round {
		if i, ok := at[NodeOf(&r.Session)]; ok && r.Action != "" {
			all[i] = r
			continue
		}
		all = append(all, r)
	}
	return all
}

// Look is one look at the lock waits: every session, the prepared
// transactions they wait on, and how long each waiter has waited.
type Look struct {
	snap  *activity.Snapshot
	graph *Graph
	waits map[int32]time.Duration
	// rowWaiting: inside a wait for a row (RowWaiting).
	rowWaiting map[int32]bool
	byPID      map[int32]*activity.Session
	prepared   map[string]*activity.Session
	// keep: the sessions the selectors allow to be ended (nil: all).
	keep map[int32]bool
	sel  *selector.Selector
}

// lookUnblock takes a snapshot (with every holder of a row its waiters
// wait for, where pgreap may read the row) and the waits.
func lookUnblock(ctx context.Context, conn *pgx.Conn, opts *UnblockOptions) (*Look, error) {
	snap, err := activity.Take(ctx, conn, activity.Filter{})
	if err != nil {
		return nil, err
	}
	opts.Selector.Pooled().Attach(snap) // the tree names pooled clients
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
	waits, err := Waits(ctx, conn)
	if err != nil {
		return nil, err
	}
	rowWaiting, err := RowWaiting(ctx, conn)
	if err != nil {
		return nil, err
	}
	l := &Look{snap: snap, graph: GraphOf(snap), waits: waits, rowWaiting: rowWaiting, byPID: map[int32]*activity.Session{}, prepared: map[string]*activity.Session{}}
	for i := range snap.Sessions {
		l.byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	for i := range snap.Prepared {
		l.prepared[snap.Prepared[i].GID] = &snap.Prepared[i]
	}
	if sel := opts.Selector; sel != nil {
		l.sel = sel
		chosen, err := sel.Take(ctx, conn)
		if err != nil {
			return nil, err
		}
		l.keep = map[int32]bool{}
		for i := range chosen.Sessions {
			l.keep[chosen.Sessions[i].PID] = true
		}
	}
	return l, nil
}

// firstTree is the tree of the waits longer than min, with the roots the
// selectors keep.
func (l *Look) firstTree(min time.Duration) *Tree {
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
func (l *Look) nextTree(u *unblocker) *Tree {
	tree := &Tree{Waiters: map[Node][]int32{}}
	pass := func(n Node) bool {
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
		for _, n := range l.graph.Tops(NodeOf(w), pass) {
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
func (u *unblocker) acted(n Node) bool {
	return slices.ContainsFunc(u.results, func(r action.Result) bool {
		return r.Action != "" && NodeOf(&r.Session) == n
	})
}

// stillWaiting names the waits among waiters that are still held up by a
// session that did not itself wait at the first look (waiting: one that
// did is the queue moving) or by a prepared transaction, and for whom each
// waits: "1234 waits for 5678, prepared:px"; "" when there is none.
// onlyPrepared: each of them waits for prepared transactions alone.
func (l *Look) stillWaiting(waiters, waiting map[sessionID]bool) (still string, onlyPrepared bool) {
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
		if len(w.BlockedBy) == 0 && len(w.BlockedByPrepared) == 0 && l.rowWaiting[w.PID] {
			// Between two of a row's lockers: it waits for the next.
			by = append(by, "a row's next locker")
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
func withWaiters(results []action.Result, snap *activity.Snapshot, tree *Tree, waits map[int32]time.Duration) []action.Result {
	byPID := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	shown := make([]action.Result, 0, len(results))
	seen := map[int32]bool{}
	for _, r := range results {
		shown = append(shown, r)
		for _, w := range tree.Waiters[NodeOf(&r.Session)] {
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

// Interrupted: the run was stopped by its context (Unwrap gives why).
type Interrupted struct{ Cause error }

func (e *Interrupted) Error() string { return "interrupted" }
func (e *Interrupted) Unwrap() error { return e.Cause }
