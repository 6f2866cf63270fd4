package maintenance

import (
	"context"
	"errors"
	"fmt"
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

// ErrReplayBlockersUnknown: WAL replay waits, and the server does not say
// for whom (a buffer pin), so there is no one to end.
var ErrReplayBlockersUnknown = errors.New("WAL replay is held up by sessions the server does not name")

// UnblockReplay ends the sessions that hold up WAL replay on a hot
// standby (those holding a lock the startup process waits for), as the
// selector allows: one round through the action guard, whose signalling
// statement checks again that each still blocks replay. Then it looks
// again, until Timeout, and says in Still whether replay is still held up
// and by whom: a cancel ends a query, not a transaction, so a session idle
// in its transaction keeps its lock. LongerThan: only when replay has
// waited longer (pg_locks.waitstart, 14+: the caller refuses it before).
// ErrNoMatch: not a standby, replay waits for no lock (that long), or
// none of its blockers is in the selection.
func UnblockReplay(ctx context.Context, conn *pgx.Conn, opts UnblockOptions) (*Unblocked, error) {
	sel := selector.Selector{}
	if opts.Selector != nil {
		sel = *opts.Selector
	}
	sel.BlockingReplay = true
	snap, err := sel.Take(ctx, conn)
	if err != nil {
		return &Unblocked{}, err
	}
	r := snap.Replay
	switch {
	case r == nil:
		return &Unblocked{}, fmt.Errorf("%w: the server is not a standby (pg_is_in_recovery() is false): nothing blocks WAL replay", ErrNoMatch)
	case !r.Waits() && r.Hidden:
		return &Unblocked{}, fmt.Errorf("%w: WAL replay does not wait for a lock (%s); whether it waits for anything else this role cannot see (pg_read_all_stats shows the startup process)",
			ErrNoMatch, output.ReplaySummary(r, snap.Taken))
	case !r.Waits():
		return &Unblocked{}, fmt.Errorf("%w: WAL replay waits for no session (%s)", ErrNoMatch, output.ReplaySummary(r, snap.Taken))
	case opts.LongerThan > 0 && r.WaitAge(snap.Taken) <= opts.LongerThan:
		return &Unblocked{}, fmt.Errorf("%w: WAL replay has waited %s, not longer than %s", ErrNoMatch, output.Age(r.WaitAge(snap.Taken)), opts.LongerThan)
	}
	if opts.ShowReplay != nil {
		opts.ShowReplay(snap)
	}
	if r.BlockersUnknown() {
		return &Unblocked{}, fmt.Errorf("%w: it waits for %s, and the server does not say which session; nothing was ended (max_standby_streaming_delay cancels them, unless it is -1)",
			ErrReplayBlockersUnknown, r.UnknownWhy())
	}
	if len(snap.Sessions) == 0 {
		return &Unblocked{}, fmt.Errorf("%w: WAL replay waits for %s, none of them in the selection", ErrNoMatch, pidList(r.Startup.BlockedBy))
	}
	plan := action.NewPlan(conn, snap, snap.Sessions, action.Request{Action: opts.Action, Selector: &sel,
		IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum})
	planned := plan.Count(action.Planned)
	if opts.Limit > 0 && planned > opts.Limit {
		return &Unblocked{}, &action.LimitError{Chosen: planned, Limit: opts.Limit}
	}
	if opts.Confirm != nil && !opts.DryRun && planned > 0 {
		if err := opts.Confirm(ctx, plan, plan.Results, fmt.Sprintf("%s %d session%s", opts.Action, planned, plural(planned))); err != nil {
			return &Unblocked{}, err
		}
	}
	results, err := action.Execute(ctx, conn, plan, action.Options{DryRun: opts.DryRun, Wait: opts.Wait})
	u := &Unblocked{Plan: plan, Results: results, Shown: results}
	if err != nil || opts.DryRun {
		return u, err
	}
	u.Still, u.After, err = replayStill(ctx, conn, &opts, r, results)
	if err == nil && u.Still == "" && r.Hidden {
		u.Note = "replay went past the lock it waited for; whether it now waits for anything else (a buffer pin, a snapshot conflict) this role cannot see (pg_read_all_stats shows the startup process)"
	}
	return u, err
}

// replayStill looks again until replay has gone past the record it waited
// on (its replay LSN moved, or it waits no more), or Timeout; it gives up
// at once when what holds replay up is no session it signalled that may
// still end, which no waiting will change. still says who holds it up; "" once replay went
// on.
func replayStill(ctx context.Context, conn *pgx.Conn, opts *UnblockOptions, first *activity.Replay, results []action.Result) (still, after string, err error) {
	signalled := map[sessionID]bool{}
	denied := map[int32]string{} // pid: why it was not signalled
	for i := range results {
		switch results[i].Outcome {
		case action.Cancelled, action.Terminated, action.Survived:
			signalled[idOf(&results[i].Session)] = true
		case action.Denied:
			denied[results[i].PID] = results[i].Detail
		}
	}
	deadline := time.Now().Add(opts.Timeout)
	poll := 10 * time.Millisecond
	for {
		snap, err := activity.Take(ctx, conn, activity.Filter{})
		if err != nil {
			return "", "", err
		}
		r := snap.Replay
		if r == nil || !r.Waits() {
			return "", "", nil // promoted, or replay goes on
		}
		// Replay may have gone past the record it waited on and wait again
		// on the next (DROP TABLE a, then DROP TABLE b): it is held up all
		// the same, and said so.
		again := r.ReplayLSN != first.ReplayLSN
		byPID := map[int32]*activity.Session{}
		for i := range snap.Sessions {
			byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
		}
		// Waiting helps while a session signalled may still end: one
		// terminated that is still there, one cancelled still running.
		// A cancelled one back in its transaction keeps the lock.
		ours := false
		for _, pid := range r.Startup.BlockedBy {
			if s := byPID[pid]; s != nil && signalled[idOf(s)] &&
				(opts.Action == action.Terminate || slices.Contains(selector.Running, s.State)) {
				ours = true
			}
		}
		late := !time.Now().Before(deadline)
		if late || (!ours && len(r.Startup.BlockedBy) > 0) {
			if late {
				after = " after " + opts.Timeout.String()
			}
			return replayHeldBy(r, byPID, denied, opts.Action, after, again), after, nil
		}
		select {
		case <-ctx.Done():
			return "", "", &Interrupted{ctx.Err()}
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(poll*2, 200*time.Millisecond)
	}
}

// replayHeldBy says who holds up replay: "WAL replay still waits for 1234
// (idle in transaction)", and why what was done did not free it: a
// signal denied, or a cancel, which does not end a transaction. again:
// replay went past the record it waited on, and waits on another.
func replayHeldBy(r *activity.Replay, byPID map[int32]*activity.Session, denied map[int32]string, kind action.Kind, after string, again bool) string {
	still := "WAL replay still waits" + after
	if again {
		still = "WAL replay went on, then waits again" + after
	}
	if len(r.Startup.BlockedBy) == 0 {
		return fmt.Sprintf("%s, for %s; the server does not say which session", still, r.UnknownWhy())
	}
	var who []string
	inXact, refused := false, ""
	for _, pid := range r.Startup.BlockedBy {
		s := byPID[pid]
		switch {
		case s == nil:
			who = append(who, strconv.Itoa(int(pid)))
		case s.IsParallelWorker() && byPID[s.LeaderPID] != nil:
			continue // its leader is named
		case s.State == "":
			who = append(who, strconv.Itoa(int(pid)))
		default:
			who = append(who, fmt.Sprintf("%d (%s)", pid, output.Clean(s.State)))
			inXact = inXact || strings.HasPrefix(s.State, "idle in transaction")
		}
		if d, ok := denied[pid]; ok && refused == "" {
			refused = d
		}
	}
	msg := still + " for " + strings.Join(who, ", ")
	switch {
	case refused != "":
		msg += ": not signalled, denied: " + output.Clean(refused)
	case again:
		msg += ": run unblock --replay again to end those"
	case kind == action.Cancel && inXact:
		msg += ": a cancel ends a query, not the transaction that holds the lock; use --terminate"
	}
	return msg
}

func pidList(pids []int32) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}
