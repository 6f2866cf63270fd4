package action

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
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
	for k, i := range idx {
		pids[k], starts[k] = p.Results[i].PID, p.Results[i].BackendStart
	}
	rows, err := conn.Query(ctx, waitSQL, pids, starts)
	if err != nil {
		return nil, fmt.Errorf("wait: %w", err)
	}
	defer rows.Close()
	var rest []int
	k := 0
	for rows.Next() {
		var (
			n          int64
			present    bool
			queryStart *time.Time
			state      *string
		)
		if err := rows.Scan(&n, &present, &queryStart, &state); err != nil {
			return nil, fmt.Errorf("wait: %w", err)
		}
		if k >= len(idx) {
			return nil, fmt.Errorf("wait: more rows than sessions")
		}
		r := &p.Results[idx[k]]
		k++
		switch {
		case !present && kind == Terminate:
			r.Outcome, r.Detail = Terminated, ""
		case !present:
			r.Outcome, r.Detail = Cancelled, "the connection ended too"
		case kind == Terminate:
			rest = append(rest, idx[k-1])
		case queryStart == nil || !queryStart.Equal(r.QueryStart) || state == nil ||
			(*state != "active" && *state != "fastpath function call"):
			r.Outcome, r.Detail = Cancelled, ""
		default:
			rest = append(rest, idx[k-1])
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("wait: %w", err)
	}
	return rest, nil
}
