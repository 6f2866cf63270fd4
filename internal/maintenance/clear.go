package maintenance

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/selector"
)

var (
	//go:embed sql/clear_table.sql
	clearTableSQL string
	//go:embed sql/clear_name.sql
	clearNameSQL string
)

// ClearOptions say which sessions Clear ends, and how.
type ClearOptions struct {
	// Tables are the tables as the user typed them: a name, resolved as
	// the server resolves it for ConnectUser's session, or an OID.
	Tables []string
	// ConnectUser opens a session with the user's own connection
	// settings and search_path, not pgreap's (conn.Params.UserSearchPath),
	// on which the names are resolved and nothing else is run, so that a
	// name without its schema is the table psql would find with the
	// same connection string. Nil: names resolve in pgreap's search_path
	// (pg_catalog, pg_temp), so only schema-qualified ones are found.
	ConnectUser func(ctx context.Context) (*pgx.Conn, error)
	// Mode is the lock mode to clear the way for, as pg_locks names it
	// (selector.LockModes); "" is AccessExclusiveLock.
	Mode string
	// Action is "" (cancel what runs a statement, terminate what is idle
	// in a transaction, and terminate a cancelled one that still holds
	// its locks: after a SAVEPOINT the abort is the subtransaction's),
	// Cancel (only cancel) or Terminate.
	Action action.Kind
	// Selector narrows the sessions (nil: any); the prepared transactions
	// by database and owner.
	Selector *selector.Selector
	// Timeout bounds how long Clear looks again at the sessions it acted
	// on; Wait, how long it waits for each signal to take effect.
	Timeout, Wait time.Duration
	// Limit: no more than that many sessions ended (0: no limit).
	Limit                                 int
	DryRun                                bool
	IncludeReplication, IncludeAutovacuum bool

	// Confirm, when set, is asked before anything is done (not in a dry
	// run); an error stops the run, nothing done.
	Confirm func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error
	// Show, when set, is given the tables as resolved (schema-qualified)
	// and the chosen sessions and prepared transactions as a tree (each
	// with the sessions queued behind it) before anything is done.
	Show func(tables []string, snap *activity.Snapshot, tree *Tree, waits map[int32]time.Duration)
}

// Cleared is what Clear did.
type Cleared struct {
	// Tables are the tables as resolved, schema-qualified.
	Tables []string
	// Plan is the first round's plan; nil when nothing was chosen.
	Plan *action.Plan
	// Results are every round's results, a session terminated after its
	// cancel listed twice; the prepared transactions holding a
	// conflicting lock are among them, protected. Shown has after each
	// the sessions queued behind it, as rows with no action and no
	// outcome.
	Results, Shown []action.Result
	// Still names the sessions chosen that still held a conflicting lock
	// at the end, "" when none did: "1234 (idle in transaction (aborted))".
	Still string
}

// UnknownTableError: a table named is not in the connected database, is
// not a table pgreap clears, or its name is not a name; nothing was done.
type UnknownTableError struct {
	Table  string
	Reason string
}

func (e *UnknownTableError) Error() string { return fmt.Sprintf("table %q: %s", e.Table, e.Reason) }

// systemSchemas hold the catalogs, which every session reads: clearing
// the way on them would end every session.
var systemSchemas = []string{"pg_catalog", "information_schema", "pg_toast"}

// LockTables resolves tables as typed into the lock objects that a query on
// them locks (each table, the partitions and inheritance children under
// it, all their indexes, TOAST tables and TOAST indexes), in the connected
// database, and the tables schema-qualified. The names are resolved to
// OIDs on a session connectUser opens (see ClearOptions.ConnectUser; nil:
// on c), everything else on c by OID. Only tables are taken: ordinary,
// partitioned and foreign tables, materialized views, and no system
// catalog.
func LockTables(ctx context.Context, c *pgx.Conn, connectUser func(context.Context) (*pgx.Conn, error), tables []string) ([]selector.LockObject, []string, error) {
	oids, err := resolve(ctx, c, connectUser, tables)
	if err != nil {
		return nil, nil, err
	}
	db := c.Config().Database
	var objects []selector.LockObject
	var shown []string
	for i, t := range tables {
		var oid, database *uint32
		var name, schema, kind, of *string
		var rels []uint32
		if oids[i] == nil {
			return nil, nil, &UnknownTableError{t, "no such relation in database " + db}
		}
		err := c.QueryRow(ctx, clearTableSQL, *oids[i]).Scan(&oid, &name, &schema, &kind, &of, &database, &rels)
		switch {
		case err != nil:
			return nil, nil, fmt.Errorf("table %q: %w", t, err)
		case oid == nil && isOID(t):
			return nil, nil, &UnknownTableError{t, "no relation has this OID in database " + db}
		case oid == nil: // dropped since it was resolved
			return nil, nil, &UnknownTableError{t, "no such relation in database " + db}
		}
		if reason := notATable(*name, *schema, *kind, of); reason != "" {
			return nil, nil, &UnknownTableError{t, reason}
		}
		shown = append(shown, *name)
		for _, r := range rels {
			if o := selector.Relation(*database, r); !slices.ContainsFunc(objects, func(x selector.LockObject) bool { return *x.Relation == r && *x.Database == *database }) {
				objects = append(objects, o)
			}
		}
	}
	return objects, shown, nil
}

// isOID reports whether a table as typed is an OID.
func isOID(t string) bool {
	_, err := strconv.ParseUint(t, 10, 32)
	return err == nil
}

// resolve is the OID of each table as typed, nil for a name that names no
// relation: a number is one; names are looked up with to_regclass on a
// session connectUser opens for them alone, closed before returning.
func resolve(ctx context.Context, c *pgx.Conn, connectUser func(context.Context) (*pgx.Conn, error), tables []string) (_ []*uint32, err error) {
	oids := make([]*uint32, len(tables))
	on := c
	for i, t := range tables {
		if isOID(t) {
			n, _ := strconv.ParseUint(t, 10, 32)
			oid := uint32(n)
			oids[i] = &oid
			continue
		}
		if on == c && connectUser != nil {
			if on, err = connectUser(ctx); err != nil {
				return nil, err
			}
			defer on.Close(context.WithoutCancel(ctx))
		}
		err := on.QueryRow(ctx, clearNameSQL, t).Scan(&oids[i])
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "42") || pgErr.Code == "0A000" || pgErr.Code == "22P02" || pgErr.Code == "22023"):
			// to_regclass refuses what is not a name ("a.b.c.d", a
			// quote left open, another database's table).
			return nil, &UnknownTableError{t, pgErr.Message}
		case err != nil:
			return nil, fmt.Errorf("table %q: %w", t, err)
		}
	}
	return oids, nil
}

// notATable says why a relation is not one clear takes, "" when it is.
func notATable(name, schema, kind string, of *string) string {
	owner := ""
	if of != nil {
		owner = *of
	}
	system := func(n string) bool {
		return slices.ContainsFunc(systemSchemas, func(s string) bool { return strings.HasPrefix(n, s+".") })
	}
	switch {
	case (kind == "i" || kind == "I") && owner != "" && !system(owner):
		return fmt.Sprintf("%s is an index of %s: clear %s", name, owner, owner)
	case kind == "t" && owner != "" && !system(owner):
		return fmt.Sprintf("%s is the TOAST table of %s: clear %s", name, owner, owner)
	case slices.Contains(systemSchemas, schema) || system(owner):
		return fmt.Sprintf("%s is a system catalog: every session reads the catalogs, so clearing the way on one would end them all", name)
	case kind == "v":
		return fmt.Sprintf("%s is a view, not a table: a query on it locks the tables it reads, and DDL on those waits for them: clear those tables", name)
	case kind == "S":
		return fmt.Sprintf("%s is a sequence, not a table: clear the table that uses it", name)
	case kind == "c":
		return fmt.Sprintf("%s is a composite type, not a table", name)
	case kind != "r" && kind != "p" && kind != "f" && kind != "m":
		return fmt.Sprintf("%s is not a table (relkind %s)", name, kind)
	}
	return ""
}

// Clear ends the sessions that hold or await a lock on the tables that
// conflicts with the mode, so that a statement that needs that lock gets
// it without a queue: by default it cancels the ones running a statement
// and terminates the ones idle in a transaction. A cancel aborts the
// transaction, which releases its locks, but after a SAVEPOINT only the
// subtransaction aborts and the locks taken before it stay: a cancelled
// session the next look finds still holding one is terminated (with
// Action "" only). Each session
// is signalled only if it still holds or awaits such a lock at that
// instant. Prepared transactions that hold one are reported (protected)
// and never touched. Later looks act only on the sessions of the first
// one. ErrNoMatch: nothing holds or awaits such a lock. An error stops it;
// what it did until then is in the Cleared returned with it.
func Clear(ctx context.Context, conn *pgx.Conn, opts ClearOptions) (*Cleared, error) {
	if opts.Mode == "" {
		opts.Mode = "AccessExclusiveLock"
	}
	objects, tables, err := LockTables(ctx, conn, opts.ConnectUser, opts.Tables)
	if err != nil {
		return &Cleared{}, err
	}
	out := &Cleared{Tables: tables}
	lc := &selector.LockConflict{Objects: objects, Mode: opts.Mode}
	var sel selector.Selector
	if opts.Selector != nil {
		sel = *opts.Selector
	}
	userSel := sel
	sel.LockConflict = lc
	// Every holder is chosen, as for a terminate: with Cancel too, so
	// that one idle in its transaction is shown, not left out unsaid.
	req := action.Request{Action: action.Terminate, Selector: &sel, IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum}
	plan, err := action.Choose(ctx, conn, req)
	if err != nil {
		return out, err
	}
	for i := range plan.Results {
		// What runs a statement is cancelled (its client gets an error
		// and keeps its connection); what holds a transaction open and
		// runs nothing has no statement to cancel.
		switch r := &plan.Results[i]; {
		case r.Outcome != action.Planned || opts.Action == action.Terminate:
		case slices.Contains(selector.Running, r.State):
			r.Action, r.Guard.Query = action.Cancel, true
		case opts.Action == action.Cancel:
			r.Action, r.Outcome, r.Detail = action.Cancel, action.Changed,
				fmt.Sprintf("no query running (%s): nothing to cancel; --terminate ends its transaction", r.State)
		}
	}
	prepared, err := preparedHolding(ctx, conn, lc, &userSel)
	if err != nil {
		return out, err
	}
	if len(plan.Results) == 0 && len(prepared) == 0 {
		return out, fmt.Errorf("%w: no session holds or awaits a lock on %s that conflicts with %s",
			ErrNoMatch, strings.Join(tables, ", "), selector.LockModeWords(opts.Mode))
	}
	out.Plan = plan
	planned := plan.Count(action.Planned)
	if opts.Limit > 0 && planned > opts.Limit {
		return out, &action.LimitError{Chosen: planned, Limit: opts.Limit}
	}
	look, tree, err := clearTree(ctx, conn, plan, prepared)
	if err != nil {
		return out, err
	}
	if opts.Show != nil {
		opts.Show(tables, look.snap, tree, look.waits)
	}
	first := append(slices.Clip(plan.Results), prepared...)
	if opts.Confirm != nil && !opts.DryRun && planned > 0 {
		if err := opts.Confirm(ctx, plan, first, clearWhat(plan, opts.Action)); err != nil {
			return out, err
		}
	}
	results, err := action.Execute(ctx, conn, plan, action.Options{DryRun: opts.DryRun, Wait: opts.Wait})
	out.Results = append(slices.Clip(results), prepared...)
	out.Shown = withWaiters(out.Results, look.snap, tree, look.waits)
	if err != nil || opts.DryRun {
		return out, err
	}
	err = clearAgain(ctx, conn, &opts, &sel, out)
	out.Shown = withWaiters(out.Results, look.snap, tree, look.waits)
	return out, err
}

// clearWhat is what the confirmation asks.
func clearWhat(plan *action.Plan, kind action.Kind) string {
	n := map[action.Kind]int{}
	for _, r := range plan.Results {
		if r.Outcome == action.Planned {
			n[r.Action]++
		}
	}
	var what []string
	for _, k := range []action.Kind{action.Cancel, action.Terminate} {
		if n[k] > 0 {
			what = append(what, fmt.Sprintf("%s %d session%s", k, n[k], plural(n[k])))
		}
	}
	s := strings.Join(what, " and ")
	if kind == "" && n[action.Cancel] > 0 {
		s += " (and terminate a cancelled one that still holds its locks in a transaction)"
	}
	return s
}

// clearAgain looks again, until Timeout, at the sessions of the first
// round that the signals did not end: one cancelled after a SAVEPOINT is
// idle in its transaction (aborted) and keeps the locks taken before it:
// with Action "" it is terminated; a cancel or terminate still taking
// effect is waited for.
// What still holds a conflicting lock at the end is out.Still.
func clearAgain(ctx context.Context, conn *pgx.Conn, opts *ClearOptions, sel *selector.Selector, out *Cleared) error {
	chosen := map[sessionID]bool{}
	for i := range out.Results {
		if r := &out.Results[i]; !r.IsPrepared() && r.Outcome != action.Gone && r.Outcome != action.Changed {
			chosen[idOf(&r.Session)] = true
		}
	}
	terminated := map[sessionID]bool{}
	deadline := time.Now().Add(opts.Timeout)
	poll := 10 * time.Millisecond
	for {
		snap, err := sel.Take(ctx, conn)
		if err != nil {
			return err
		}
		var still, idle []activity.Session
		for _, s := range snap.Sessions {
			if chosen[idOf(&s)] {
				still = append(still, s)
				if opts.Action == "" && !terminated[idOf(&s)] && !slices.Contains(selector.Running, s.State) && wasCancelled(out.Results, &s) {
					idle = append(idle, s)
				}
			}
		}
		if len(idle) > 0 {
			p := action.NewPlan(conn, snap, idle, action.Request{Action: action.Terminate, Selector: sel,
				IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum})
			res, err := action.Execute(ctx, conn, p, action.Options{Wait: opts.Wait})
			for i := range res {
				terminated[idOf(&res[i].Session)] = true
				res[i].Detail = strings.TrimPrefix(res[i].Detail+"; still held its locks after the cancel, in its transaction", "; ")
			}
			out.Results = append(out.Results, res...)
			if err != nil {
				return err
			}
			continue
		}
		// Nothing left to act on: only what a signal has yet to end may
		// change (a session idle in a transaction after --cancel will not).
		waiting := slices.ContainsFunc(still, func(s activity.Session) bool {
			return terminated[idOf(&s)] || (slices.Contains(selector.Running, s.State) && signalled(out.Results, &s))
		})
		if len(still) == 0 || !waiting || !time.Now().Before(deadline) {
			var parts []string
			for i := range still {
				parts = append(parts, fmt.Sprintf("%d (%s)", still[i].PID, stateOf(&still[i])))
			}
			out.Still = strings.Join(parts, ", ")
			return nil
		}
		select {
		case <-ctx.Done():
			return &Interrupted{ctx.Err()}
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(poll*2, 200*time.Millisecond)
	}
}

// signalled reports whether the results have the session signalled.
func signalled(results []action.Result, s *activity.Session) bool {
	return slices.ContainsFunc(results, func(r action.Result) bool {
		return (r.Outcome == action.Cancelled || r.Outcome == action.Terminated || r.Outcome == action.Survived) && idOf(&r.Session) == idOf(s)
	})
}

// wasCancelled reports whether the results have the session cancelled.
func wasCancelled(results []action.Result, s *activity.Session) bool {
	return slices.ContainsFunc(results, func(r action.Result) bool {
		return r.Action == action.Cancel && r.Outcome == action.Cancelled && idOf(&r.Session) == idOf(s)
	})
}

// preparedHolding are the prepared transactions that hold a lock of lc, as
// results: protected, never touched, with how to end them.
func preparedHolding(ctx context.Context, conn *pgx.Conn, lc *selector.LockConflict, sel *selector.Selector) ([]action.Result, error) {
	q, args := lc.PreparedSQL(1)
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("prepared transactions: %w", err)
	}
	gids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(gids) == 0 {
		return nil, err
	}
	all, err := activity.PreparedIn(ctx, conn, "")
	if err != nil {
		return nil, err
	}
	var out []action.Result
	for _, p := range all {
		if slices.Contains(gids, p.GID) && sel.KeepPrepared(&p) {
			out = append(out, action.Result{Session: p, Action: action.Rollback, Named: true, Outcome: action.Protected,
				Detail: fmt.Sprintf("a prepared transaction: ROLLBACK PREPARED '%s' ends it (pgreap clear never does)", strings.ReplaceAll(p.GID, "'", "''"))})
		}
	}
	return out, nil
}

// clearTree is the chosen sessions and prepared transactions as the roots
// of a tree, each with the sessions queued behind it, directly or not.
func clearTree(ctx context.Context, conn *pgx.Conn, plan *action.Plan, prepared []action.Result) (*Look, *Tree, error) {
	snap, err := activity.Take(ctx, conn, activity.Filter{})
	if err != nil {
		return nil, nil, err
	}
	if err := activity.PreparedBlockers(ctx, conn, snap); err != nil {
		return nil, nil, err
	}
	// PreparedBlockers has those a session waits on; a holder nobody
	// queues behind yet is a root too, named by its row.
	for i := range prepared {
		if p := prepared[i].Session; !slices.ContainsFunc(snap.Prepared, func(s activity.Session) bool { return s.GID == p.GID }) {
			snap.Prepared = append(snap.Prepared, p)
		}
	}
	waits, err := Waits(ctx, conn)
	if err != nil {
		return nil, nil, err
	}
	look := &Look{snap: snap, waits: waits}
	g := GraphOf(snap)
	tree := &Tree{Waiters: map[Node][]int32{}}
	roots := make([]Node, 0, len(plan.Results)+len(prepared))
	for i := range plan.Results {
		roots = append(roots, NodeOf(&plan.Results[i].Session))
	}
	for i := range prepared {
		roots = append(roots, NodeOf(&prepared[i].Session))
	}
	for _, root := range roots {
		tree.Roots = append(tree.Roots, root)
		tree.Waiters[root] = nil
		seen := map[Node]bool{root: true}
		queue := slices.Clone(g.Waiters(root))
		for len(queue) > 0 {
			w := queue[0]
			queue = queue[1:]
			if seen[w] || w.GID != "" {
				continue
			}
			seen[w] = true
			tree.Waiters[root] = append(tree.Waiters[root], w.PID)
			queue = append(queue, g.Waiters(w)...)
		}
		slices.Sort(tree.Waiters[root])
	}
	return look, tree, nil
}

// stateOf is a session's state for a message. A process with no state,
// which is no client backend (a standby's startup process, seen by a
// superuser), is named by its backend_type; a state and backend_type both
// NULL are another role's session, seen without pg_read_all_stats.
func stateOf(s *activity.Session) string {
	if state := output.Clean(strings.TrimSpace(s.State)); state != "" {
		return state
	}
	if s.BackendType != "" && s.BackendType != "client backend" {
		return output.Clean(s.BackendType)
	}
	return "state hidden: pg_read_all_stats"
}
