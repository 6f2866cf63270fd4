package action

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/selector"
)

// The polls of a wait start short, because a terminated backend is usually
// gone within milliseconds, and back off so a long wait costs the server
// little.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 100 * time.Millisecond
)

// wait polls, one statement per poll for the whole set, until every
// signalled session at idx is done or the wait is over: a terminated one
// is done when its (pid, backend_start) is gone, a cancelled one when the
// query it ran has ended (query_start or state changed, or it is gone).
// Sessions not done by then are Survived.
func (p *Plan) wait(ctx context.Context, conn *pgx.Conn, idx []int, kind Kind, d time.Duration, opt *Options) error {
	if len(idx) == 0 {
		return nil
	}
	pending := append([]int(nil), idx...)
	deadline := opt.after(d)
	poll := firstPoll
	for {
		var err error
		if pending, err = p.poll(ctx, conn, pending, kind); err != nil {
			return err
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			p.survived(pending, kind, "the wait was interrupted")
			return ctx.Err()
		case <-deadline:
			// One last look: the deadline may have passed while a
			// backend was on its way out.
			if pending, err = p.poll(ctx, conn, pending, kind); err != nil {
				return err
			}
			p.survived(pending, kind, fmt.Sprintf("after %s", d))
			return nil
		case <-opt.after(poll):
		}
		poll = min(poll*3/2, maxPoll)
	}
}

func (p *Plan) survived(idx []int, kind Kind, when string) {
	for _, i := range idx {
		r := &p.Results[i]
		r.Outcome = Survived
		if kind == Cancel {
			r.Detail = "still running the same query " + when
		} else {
			r.Detail = "the backend is still there " + when
		}
	}
}

// poll looks once at the pending sessions, settles those that are done,
// and returns the rest.
func (p *Plan) poll(ctx context.Context, conn *pgx.Conn, idx []int, kind Kind) ([]int, error) {
	pids := make([]int32, len(idx))
	starts := make([]time.Time, len(idx))
	xids := make([]*string, len(idx))
	for k, i := range idx {
		r := &p.Results[i]
		pids[k], starts[k] = r.PID, r.BackendStart
		if r.at.xid != "" {
			xids[k] = &r.at.xid
		}
	}
	rows, err := conn.Query(ctx, waitSQL, pids, starts, xids)
	if err != nil {
		return nil, fmt.Errorf("wait: %w", err)
	}
	defer rows.Close()
	var rest []int
	k := 0
	for rows.Next() {
		var (
			n    int64
			seen look
		)
		if err := rows.Scan(&n, &seen.present, &seen.queryStart, &seen.state, &seen.xactStart,
			&seen.stateChange, &seen.xidStatus); err != nil {
			return nil, fmt.Errorf("wait: %w", err)
		}
		if k >= len(idx) {
			return nil, fmt.Errorf("wait: more rows than sessions")
		}
		r := &p.Results[idx[k]]
		k++
		var done bool
		if kind == Terminate {
			if done = !seen.present; done {
				r.Outcome, r.Detail = Terminated, r.at.note
				if committed, ok := r.committed(&seen); ok && committed {
					// Its COMMIT ran before the signal reached it: the
					// transaction is not what ended.
					r.Detail = "its transaction committed before the signal reached it"
				}
			}
		} else {
			done = r.settleCancel(&seen)
		}
		if !done {
			rest = append(rest, idx[k-1])
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("wait: %w", err)
	}
	return rest, nil
}

// look is a signalled session as one poll of the wait saw it.
type look struct {
	present                            bool
	queryStart, xactStart, stateChange *time.Time
	state                              *string
	xidStatus                          *string // committed, aborted, in progress: of the xid it had at the signal
}

// settleCancel decides, from one look, whether a cancelled query ended,
// and whether it ended because of the cancel: a query that completed
// instead is changed, never cancelled. It reports whether the result is
// settled.
//
// What tells them apart: a cancel aborts the transaction, so inside a
// transaction block the state becomes "idle in transaction (aborted)"
// where a completed query leaves "idle in transaction"; a write's
// transaction id says committed or aborted. A read-only statement outside a
// block leaves no trace either way: it is cancelled when it ended after the
// signal was sent.
func (r *Result) settleCancel(l *look) bool {
	same := func(t *time.Time, u time.Time) bool { return t != nil && t.Equal(u) }
	state := deref(l.state)
	running := slices.Contains(selector.Running, state)
	sameQuery := l.present && same(l.queryStart, r.QueryStart)
	if sameQuery && (state == "fastpath function call" || r.at.state == "fastpath function call") {
		// A fastpath function call leaves query_start as it was: a call
		// is told from the next by when its state began.
		sameQuery = same(l.stateChange, r.StateChange)
	}
	if sameQuery && running {
		return false
	}
	// The statement's own transaction ended with it: it ran outside a
	// transaction block, or it was the block's COMMIT.
	ownXact := sameQuery && state == "idle"
	if committed, ok := r.committed(l); ok {
		switch {
		case !committed:
			r.Outcome, r.Detail = Cancelled, "its transaction rolled back"
		case r.at.waitEvent == "IPC:SyncRep":
			r.Outcome, r.Detail = Cancelled, syncRepDetail
		case ownXact:
			r.Outcome, r.Detail = Changed, completedDetail+" (its transaction committed)"
		default:
			// Inside a block, a statement the cancel ended can be rolled
			// back to a savepoint and the rest committed.
			r.Outcome, r.Detail = Changed, "its transaction committed: the query completed, or the cancel may have ended it inside a savepoint its client rolled back to"
		}
		return true
	}
	if !l.present {
		r.Outcome, r.Detail = Cancelled, "the connection ended too"
		return true
	}
	sameXact := !r.at.xactStart.IsZero() && same(l.xactStart, r.at.xactStart)
	switch {
	case state == "idle in transaction (aborted)" && (sameQuery || sameXact):
		r.Outcome, r.Detail = Cancelled, ""
	case sameQuery && state == "idle in transaction":
		// A cancelled statement leaves its transaction aborted, until the
		// client's next statement.
		r.Outcome, r.Detail = Changed, completedDetail+" (its transaction goes on)"
	case sameXact && (running || state == "idle in transaction"):
		// The transaction went on with another statement, not aborted:
		// the query completed, or the client rolled back to a savepoint
		// (psql's ON_ERROR_ROLLBACK, JDBC's autosave) after the cancel.
		r.Outcome, r.Detail = Changed, "its transaction went on with another statement: the query completed, or the cancel may have ended it and its client rolled back to a savepoint"
	case sameQuery && l.stateChange != nil && !r.at.sent.IsZero() && l.stateChange.Before(r.at.sent):
		r.Outcome, r.Detail = Changed, fmt.Sprintf("its query ended (%s) before the cancel was sent", state)
	default:
		r.Outcome, r.Detail = Cancelled, ""
	}
	if r.at.waitEvent != "" && commitWaits[r.at.waitEvent] && r.Outcome == Cancelled {
		r.Detail = fmt.Sprintf("it was committing (%s) when cancelled: it may have committed", r.at.waitEvent)
	}
	return true
}

// syncRepDetail: a COMMIT waiting for a synchronous standby has committed
// locally; a cancel can end only the wait (the client gets a warning and
// success).
const syncRepDetail = "committed locally: the cancel can only end its wait for the standby"

// committed tells, from the transaction id the session had at the signal,
// whether that transaction committed; ok is false when there was none or
// it still runs.
func (r *Result) committed(l *look) (committed, ok bool) {
	switch deref(l.xidStatus) {
	case "committed":
		return true, true
	case "aborted":
		return false, true
	}
	return false, false
}

// commitWaits are the wait events of a statement in its commit: a cancel
// there may come after the commit record is written.
var commitWaits = map[string]bool{
	"IPC:SyncRep":         true,
	"IO:WALSync":          true,
	"IO:WALWrite":         true,
	"LWLock:WALWrite":     true,
	"LWLock:WALInsert":    true,
	"Timeout:CommitDelay": true,
}
