package action

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The asynchronous form of Execute, for a caller that must not block while
// signalled sessions end (the watch daemon, which has other deadlines to
// keep on the same connection): Send signals, Settle looks once, Escalate
// ends a grace, Expire gives up. Between the calls the signalled results
// are Pending; the connection is free for other statements.

// Pending reports whether the session was signalled and its end is not yet
// verified.
func (r *Result) Pending() bool { return r.isSent() }

// Send signals the planned sessions in one statement that re-checks each,
// and returns without waiting. With grace, a terminate cancels the
// sessions running a query instead (their results become Cancel) and
// terminates the others; Escalate finishes it after the grace.
func Send(ctx context.Context, conn *pgx.Conn, p *Plan, grace bool) (err error) {
	defer func() { p.unverified(err) }()
	if err := checkIdle(conn); err != nil {
		return err
	}
	var todo []int
	actions := map[int]Kind{}
	for i := range p.Results {
		if r := &p.Results[i]; r.Outcome == Planned {
			todo = append(todo, i)
			if grace && r.Action == Terminate {
				actions[i] = graceKind
			}
		}
	}
	return p.act(ctx, conn, todo, actions, true)
}

// Settle looks once, in one statement per kind of signal, at the pending
// sessions, settles those that are done (terminated: gone; cancelled: the
// query ended), and returns how many are still pending.
func Settle(ctx context.Context, conn *pgx.Conn, p *Plan) (pending int, err error) {
	defer func() { p.unverified(err) }()
	byKind := p.sentByKind(nil)
	for _, k := range []Kind{Terminate, Cancel} {
		if len(byKind[k]) == 0 {
			continue
		}
		left, err := p.poll(ctx, conn, byKind[k], k)
		if err != nil {
			return 0, err
		}
		pending += len(left)
	}
	return pending, nil
}

// Escalate ends a grace: the sessions whose query was cancelled by Send
// and that still run it are terminated, the query pinned.
func Escalate(ctx context.Context, conn *pgx.Conn, p *Plan) (err error) {
	defer func() { p.unverified(err) }()
	var cancelled []int
	for i := range p.Results {
		if r := &p.Results[i]; r.isSent() && r.Action == Cancel {
			cancelled = append(cancelled, i)
		}
	}
	if len(cancelled) == 0 {
		return nil
	}
	// One last look: a query that ended just now is cancelled, not
	// escalated.
	if _, err := p.poll(ctx, conn, cancelled, Cancel); err != nil {
		return err
	}
	return p.escalate(ctx, conn, cancelled)
}

// Expire reports the sessions still pending as survived, after waiting d.
func Expire(p *Plan, d time.Duration) {
	for k, idx := range p.sentByKind(nil) {
		p.survived(idx, k, fmt.Sprintf("after %s", d))
	}
}

// Abandon reports the sessions still pending as survived, not verified
// because of err (the connection was lost between the calls).
func Abandon(p *Plan, err error) { p.unverified(err) }
