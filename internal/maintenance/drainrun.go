package maintenance

import (
	"context"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/selector"
)

// DrainOptions say how Drain empties a database.
type DrainOptions struct {
	// Timeout: how long Drain goes on looking and ending.
	Timeout time.Duration
	// Escalate cancels running queries first, then terminates what still
	// runs after Grace.
	Escalate bool
	Grace    time.Duration
	// IncludeReplication and IncludeAutovacuum end walsenders and
	// autovacuum workers of the database too; left alone otherwise.
	IncludeReplication bool
	IncludeAutovacuum  bool
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Progress, when set, is told at each look how many sessions are
	// left and how long Drain has run.
	Progress func(left int, elapsed time.Duration)
}

// Drained is what Drain did.
type Drained struct {
	// Ended are the sessions ended (or gone by themselves once chosen),
	// by pid.
	Ended []action.Result
	// Last is the last look: at the timeout, each session still
	// connected, Survived ("still connected at the timeout"), or left
	// alone as the signal would have left it (Denied, Protected).
	Last *action.Plan
	// Autovacuum are the autovacuum workers left alone (AutovacuumIn):
	// not counted as left.
	Autovacuum []int32
	// Left is how many sessions were still connected at the timeout: 0
	// when the database was emptied.
	Left int
}

// DrainRequest is what each look of a drain chooses, a dry run's
// included: every client session of the database, under the protections.
func DrainRequest(db string, opt DrainOptions) action.Request {
	return action.Request{Action: action.Terminate, Selector: &selector.Selector{DB: []string{db}},
		IncludeReplication: opt.IncludeReplication, IncludeAutovacuum: opt.IncludeAutovacuum}
}

// Drain ends the sessions of database db, looking again until none is
// left or opt.Timeout passed; it does not keep new ones out (Block does:
// call it first, or the sessions come back). An error stops it; what it
// did until then is in the Drained returned with it.
func Drain(ctx context.Context, conn *pgx.Conn, db string, opt DrainOptions) (*Drained, error) {
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	deadline := start.Add(opt.Timeout)
	ended := map[int32]action.Result{}
	d := &Drained{}
	done := func() {
		d.Ended = make([]action.Result, 0, len(ended))
		for _, r := range ended {
			d.Ended = append(d.Ended, r)
		}
		sort.Slice(d.Ended, func(i, j int) bool { return d.Ended[i].PID < d.Ended[j].PID })
	}
	defer done()
	for round := 0; ; round++ {
		plan, err := action.Choose(ctx, conn, DrainRequest(db, opt))
		if err != nil {
			return d, err
		}
		d.Last = plan
		// Autovacuum workers are not kept out by ALLOW_CONNECTIONS false:
		// left alone (protected), they do not count as left.
		d.Autovacuum = AutovacuumIn(plan)
		d.Left = len(plan.Results) - len(d.Autovacuum)
		if opt.Progress != nil {
			opt.Progress(d.Left, now().Sub(start))
		}
		if d.Left == 0 {
			return d, nil
		}
		remaining := deadline.Sub(now())
		if remaining <= 0 {
			break
		}
		exec := action.Options{Wait: min(remaining, 5*time.Second)}
		if opt.Escalate && round == 0 {
			exec.Grace = min(opt.Grace, remaining)
		}
		results, err := action.Execute(ctx, conn, plan, exec)
		for _, r := range results {
			if r.Outcome == action.Terminated || r.Outcome == action.Cancelled || r.Outcome == action.Gone {
				ended[r.PID] = r
			}
		}
		if err != nil {
			return d, err
		}
		if !Signalled(results) {
			// Nothing could be ended this round (denied, protected):
			// look again shortly, the session may end on its own.
			select {
			case <-ctx.Done():
				return d, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// Say why each is left: judged now, as the signal would be.
	if _, err := action.Execute(ctx, conn, d.Last, action.Options{DryRun: true}); err != nil {
		return d, err
	}
	for i := range d.Last.Results {
		if r := &d.Last.Results[i]; r.Outcome == action.Planned {
			r.Outcome, r.Detail = action.Survived, "still connected at the timeout"
		}
	}
	return d, nil
}

// AutovacuumIn is the autovacuum workers a look found and left alone
// (without IncludeAutovacuum), and the processes with no role that
// pgreap's role may not see (without pg_read_all_stats an autovacuum worker
// shows neither its type nor its start): not clients either.
func AutovacuumIn(plan *action.Plan) []int32 {
	var pids []int32
	for _, r := range plan.Results {
		switch {
		case r.BackendType == "autovacuum worker" && r.Outcome == action.Protected,
			r.Outcome == action.Denied && r.BackendType == "" && r.Usename == "" && r.BackendStart.IsZero():
			pids = append(pids, r.PID)
		}
	}
	return pids
}

// Signalled reports whether some session was, or may have been,
// signalled.
func Signalled(results []action.Result) bool {
	for i := range results {
		switch results[i].Outcome {
		case action.Cancelled, action.Terminated, action.Survived, action.RolledBack:
			return true
		}
	}
	return false
}
