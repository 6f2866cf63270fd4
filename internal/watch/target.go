package watch

import (
	"context"
	_ "embed"
	"errors"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// lockClass is the first key of the advisory lock that elects, per target,
// the replica that acts ("pgrp"); the second is a hash of the target's
// name, so replicas of one policy contend and another policy watching the
// same server under another name does not.
const lockClass int32 = 0x70677270

// Timing of the daemon.
const (
	// margin is added to a deadline: the signalling statement's predicate
	// is strict (older than the threshold), by the server's clock.
	margin = 2 * time.Millisecond
	// retryNoMatch: a session the statement found not yet past its
	// threshold (the clocks' offset was misjudged: a snapshot slow to
	// reach a loaded server) is tried again this much later, then twice
	// as late each time, up to maxRetries times (about 0.3 s in all); then
	// the next snapshot judges it again, up to an interval late.
	retryNoMatch = 5 * time.Millisecond
	maxRetries   = 6
	// maxBatch: a signalling statement re-checks each session at its own
	// signal, about 0.5 ms each for a pile-up rule (200 pile-ups on 2
	// cores). The backlog a snapshot finds already past its threshold,
	// 60 sessions there, went out in one statement of 35-70 ms, and a
	// deadline due meanwhile waited for all of it: when a deadline is
	// armed behind it, a backlog goes out maxBatch at a time.
	maxBatch = 16
	// offsetLooks is how many snapshots' measures of the clocks' offset
	// the deadlines are computed from (offset).
	offsetLooks = 8
	// verifyFor is how long a signalled session gets to end before it is
	// reported survived (after the grace, for cancel-then-terminate).
	verifyFor = 5 * time.Second
	firstPoll = 5 * time.Millisecond
	maxPoll   = 100 * time.Millisecond
	// Reconnection backoff: from minBackoff doubling to maxBackoff, with
	// jitter (a fleet of daemons does not return in step).
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// identity names a session, and for a rule that acts on a query also the
// query: (pid, backend_start), and query_start or 0.
type identity struct {
	pid                     int32
	backendStart, queryFrom int64
}

func identityOf(s *activity.Session) identity {
	from := s.QueryStart
	if s.State == "fastpath function call" {
		// A fastpath function call (libpq's PQfn, large objects) leaves
		// query_start at the last statement's: each call is told by when
		// its state began.
		from = s.StateChange
	}
	return identity{s.PID, s.BackendStart.UnixMicro(), from.UnixMicro()}
}

// key names what one rule did to one session. A rule that ends a query
// (cancel, cancel-then-terminate) is keyed by the query: it acts again on
// the session's next query. A terminate is keyed by the session.
type key struct {
	rule string
	identity
}

// keyOf is the key of the rule and the session.
func (r *rule) keyOf(s *activity.Session) key {
	id := identityOf(s)
	if r.Action == policy.Terminate {
		id.queryFrom = 0
	}
	return key{r.Name, id}
}

// rule is a policy rule ready for the server: its full selector (with the
// protections) for the signalling statement, its untimed predicate for the
// snapshot's marks.
type rule struct {
	policy.Rule
	guarded *selector.Selector
}

// armed is a session that a rule will match at due (local clock).
type armed struct {
	session activity.Session
	rule    int
	due     time.Time
	retries int
}

// inflight is a plan that was sent and is being verified.
type inflight struct {
	plan       *action.Plan
	rule       rule
	sent       time.Time
	escalateAt time.Time // zero: no grace pending
	expireAt   time.Time
	nextPoll   time.Time
	step       time.Duration
	logged     []bool
	// behind are, for a rule on lock pile-ups (blocking_longer_than), the
	// sessions that waited behind each root signalled, by its pid: its
	// audit line names those it released.
	behind map[int32][]*activity.Session
}

// target watches one server.
type target struct {
	name string
	spec policy.Target
	// poolers are the PgBouncers in front of the server: each snapshot
	// judges their server connections by the client each serves.
	poolers []*pooler.Pooler
	log     *slog.Logger
	metrics *Metrics
	audit   *Audit
	notify  *notify.Notifier
	dryRun  bool
	// clock is the daemon's time (its timers); now is clock.Now.
	clock Clock
	now   func() time.Time
	// policies brings a reloaded policy to the loop (latest wins).
	policies chan *policy.Policy
	// done is, per rule and session (or query), whether the rule acted
	// (true) or only audited it planned (false: a dry run, which takes the
	// session from no other rule, and from no reload that makes the rule
	// real). It survives reconnections, so a rule never acts twice on one
	// session (or query); it forgets a session once the snapshot shows it
	// gone or on another query.
	done map[key]bool
	// waits are the lock waits of the last look: a session that waited
	// and now blocks counts as blocking from when it stopped waiting.
	waits waits
	// budgets are the max_actions in force and what they counted.
	budgets *budgets
	// state is what /healthz says of the target.
	state atomic.Value // State
	// stale are the backends of connections the daemon abandoned: when
	// only the network lost one, the server keeps it (and the advisory
	// lock that elects the leader) until its TCP keepalive gives up, hours
	// by default. The next connection ends them.
	stale []backend
}

// backend names a server process exactly: pid and backend_start.
type backend struct {
	pid   int32
	start time.Time
}

// run connects, leads or stands by, and reconnects with backoff until ctx
// ends.
func (t *target) run(ctx context.Context, pol *policy.Policy) {
	attempt := 0
	for {
		// Built at each connection: its keepalives follow the interval in
		// force (a reload), and the DSN was checked before.
		cfg, _ := targetConfig(t.spec, pol.Interval)
		cn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.metrics.TargetUp.WithLabelValues(t.name).Set(0)
			if t.state.Swap(Down) != Down {
				t.event(notify.Error, "cannot connect: "+oneLine(err))
			}
			wait := backoff(attempt)
			attempt++
			t.log.Warn("cannot connect", "err", oneLine(err), "retry_in", wait.Round(time.Millisecond).String())
			if pol = t.sleep(ctx, wait, pol); ctx.Err() != nil {
				return
			}
			continue
		}
		attempt = 0
		t.metrics.TargetUp.WithLabelValues(t.name).Set(1)
		t.log.Info("connected", "pid", cn.PgConn().PID())
		s := t.newSession(cn, pol)
		own, err := t.endStale(ctx, cn)
		if err == nil {
			err = s.loop(ctx)
		}
		pol = s.pol
		s.closeAdmins()
		if own != nil {
			t.stale = append(t.stale, *own)
			if len(t.stale) > 8 {
				t.stale = t.stale[len(t.stale)-8:]
			}
		}
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 300*time.Millisecond)
		cn.Close(closeCtx)
		cancel()
		t.metrics.Leader.WithLabelValues(t.name).Set(0)
		t.metrics.TargetUp.WithLabelValues(t.name).Set(0)
		t.state.Store(Down)
		if ctx.Err() != nil {
			if s.leader {
				t.event(notify.Leader, "no longer leading: this replica stops")
			}
			return
		}
		if s.leader {
			t.event(notify.Leader, "no longer leading: connection lost")
		}
		t.event(notify.Error, "connection lost: "+oneLine(err))
		wait := backoff(0)
		t.log.Warn("connection lost", "err", oneLine(err), "retry_in", wait.Round(time.Millisecond).String())
		if pol = t.sleep(ctx, wait, pol); ctx.Err() != nil {
			return
		}
	}
}

// endStale learns the identity of the new connection's backend, and ends
// the backends of abandoned connections the server still has (same pid
// and backend_start, so never another session).
func (t *target) endStale(ctx context.Context, cn *pgx.Conn) (*backend, error) {
	own := &backend{pid: int32(cn.PgConn().PID())}
	// NULL when the role acts as another one (ALTER ROLE ... SET role) that
	// may not see its login role's sessions: own.start stays zero, and
	// this connection, if abandoned, is not found again to be ended.
	var start pgtype.Timestamptz
	if err := cn.QueryRow(ctx, ownStartSQL).Scan(&start); err != nil {
		return nil, err
	}
	own.start = start.Time
	for len(t.stale) > 0 {
		b := t.stale[0]
		var signalled bool
		err := cn.QueryRow(ctx, endStaleSQL, b.pid, b.start).Scan(&signalled)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// Gone, as it should be.
		case err != nil && isStatementError(err):
			t.log.Warn("cannot end an abandoned session of this daemon", "pid", b.pid, "err", oneLine(err))
		case err != nil:
			return own, err
		default:
			t.log.Warn("ended an abandoned session of this daemon that the server still had (the network lost it)",
				"pid", b.pid, "signalled", signalled)
		}
		t.stale = t.stale[1:]
	}
	return own, nil
}

// sleep waits d, taking any reloaded policy.
func (t *target) sleep(ctx context.Context, d time.Duration, pol *policy.Policy) *policy.Policy {
	timer := t.clock.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return pol
		case p := <-t.policies:
			pol = p
		case <-timer.C():
			return pol
		}
	}
}

// backoff is the wait before the attempt-th reconnection: exponential,
// capped, with jitter in [50%, 100%].
func backoff(attempt int) time.Duration {
	d := maxBackoff
	if attempt < 10 {
		d = min(minBackoff<<attempt, maxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// session is one connection's life: the connection, the rules, what is
// armed and in flight.
type session struct {
	t      *target
	cn     *pgx.Conn
	pol    *policy.Policy
	rules  []rule
	marks  []string
	args   []any
	leader bool
	key    int32
	// holder is who held the election lock at the last look, while
	// standing by (nil: no one yet): said once, not at every interval.
	holder *holderID
	snap   *activity.Snapshot
	// behind are the sessions waiting behind each root of the snapshot's
	// lock waits, by the root's pid (maintenance.MarkRoots).
	behind map[int32][]*activity.Session
	armed  []armed
	// seen is the instant of the last snapshot on the daemon's clock: the
	// due of the sessions it found already past their threshold.
	seen time.Time
	// offsets are the clocks' offsets the last snapshots measured (offset).
	offsets []time.Duration
	flying  []*inflight
	// admins are the connections to the poolers' admin consoles, opened
	// when first needed and again after a failure.
	admins []*pooler.Admin
}

func (t *target) newSession(cn *pgx.Conn, pol *policy.Policy) *session {
	h := fnv.New32a()
	h.Write([]byte(t.name))
	s := &session{t: t, cn: cn, key: int32(h.Sum32())}
	s.setPolicy(pol)
	return s
}

// setPolicy compiles the rules: each one's untimed predicate (what it
// matches but for its durations) becomes a mark of the snapshot.
func (s *session) setPolicy(pol *policy.Policy) {
	s.pol, s.rules, s.armed = pol, nil, nil
	if s.t.budgets == nil {
		s.t.budgets = &budgets{}
	}
	s.t.budgets.set(pol)
	s.rules = rulesOf(pol)
	s.marks, s.args = s.compile(nil)
}

// rulesOf are the policy's rules, each with its protections.
func rulesOf(pol *policy.Policy) []rule {
	var rules []rule
	for _, r := range pol.Rules {
		rules = append(rules, rule{Rule: r, guarded: r.Guarded(pol.Protect)})
	}
	return rules
}

// compile makes the rules' marks: each one's untimed predicate, judging the
// poolers' server connections by the clients pooled named (nil: none).
func (s *session) compile(pooled *activity.Pooled) (marks []string, args []any) {
	for _, r := range s.rules {
		where, a := r.guarded.WithPooled(pooled).Untimed().Compile("a", len(args)+1)
		marks = append(marks, where)
		args = append(args, a...)
	}
	return marks, args
}

// lookPooled asks the poolers which client each server connection serves,
// on admin connections kept from one snapshot to the next; nil without
// poolers.
func (s *session) lookPooled(ctx context.Context) (*activity.Pooled, error) {
	if len(s.t.poolers) == 0 {
		return nil, nil
	}
	if s.admins == nil {
		admins, err := pooler.ConnectAll(ctx, s.t.poolers)
		if err != nil {
			return nil, err
		}
		s.admins = admins
	}
	pooled, err := activity.TakePooled(ctx, s.cn, s.admins)
	if err != nil {
		s.closeAdmins()
	}
	return pooled, err
}

func (s *session) closeAdmins() {
	pooler.CloseAll(s.admins)
	s.admins = nil
}

// loop is the target's event loop on one connection: it returns when the
// connection is lost (an error) or ctx ends (nil).
func (s *session) loop(ctx context.Context) error {
	timer := s.t.clock.NewTimer(0)
	defer timer.Stop()
	nextTick := s.t.now()
	for {
		now := s.t.now()
		if !now.Before(nextTick) {
			nextTick = now.Add(s.pol.Interval)
			if err := s.tick(ctx); err != nil {
				return s.fail(ctx, err)
			}
		}
		if err := s.work(ctx); err != nil {
			return s.fail(ctx, err)
		}
		next := nextTick
		if len(s.armed) > 0 && s.armed[0].due.Before(next) {
			next = s.armed[0].due
		}
		for _, f := range s.flying {
			next = earliest(next, f.nextPoll, f.escalateAt, f.expireAt)
		}
		timer.Reset(max(next.Sub(s.t.now()), 0))
		select {
		case <-ctx.Done():
			s.stop()
			return nil
		case p := <-s.t.policies:
			s.setPolicy(p)
			s.t.log.Info("policy reloaded", "rules", len(p.Rules))
		case <-timer.C():
		}
	}
}

func earliest(t time.Time, more ...time.Time) time.Time {
	for _, m := range more {
		if !m.IsZero() && m.Before(t) {
			t = m
		}
	}
	return t
}

// fail: a statement failed. A lost connection ends the session (the loop
// reconnects); a refused statement is logged and the loop goes on.
func (s *session) fail(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		s.stop()
		return nil
	}
	if s.cn.IsClosed() || !isStatementError(err) {
		s.abandon(err)
		return err
	}
	s.t.log.Error("statement failed", "err", oneLine(err))
	return nil
}

func isStatementError(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr)
}

var (
	//go:embed sql/holder.sql
	holderSQL string
	//go:embed sql/own_start.sql
	ownStartSQL string
	//go:embed sql/end_stale.sql
	endStaleSQL string
	//go:embed sql/try_lock.sql
	tryLockSQL string
	//go:embed sql/released.sql
	releasedSQL string
)

// standBy looks at who holds the election lock. A pgreap watch (a session
// of pgreap's role with the daemon's application_name): this replica
// stands by, and says so once. Anything else is an impostor, which any
// login role can be (advisory locks need no privilege) and which keeps
// every replica standing by: an error, the conflict metric, /healthz 503,
// and with ha.evict_impostor the holder is terminated through the guard,
// so the next interval takes the lead.
func (s *session) standBy(ctx context.Context) error {
	t := s.t
	var h holder
	err := s.cn.QueryRow(ctx, holderSQL, lockClass, s.key, s.appName()).
		Scan(&h.pid, &h.start, &h.usename, &h.app, &h.client, &h.sameRole, &h.replica, &h.gid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil // released since: the next interval takes it
	case err != nil:
		return err
	}
	seen := holderID{backend: backend{pid: h.pid.Int32, start: h.start.Time}, gid: h.gid.String}
	again := s.holder != nil && *s.holder == seen
	s.holder = &seen
	if h.replica {
		t.metrics.LeaderConflict.WithLabelValues(t.name).Set(0)
		t.state.Store(Standby)
		if !again {
			t.log.Info("standing by: another pgreap watch leads", "pid", h.pid.Int32, "client_addr", h.client.String)
		}
		return nil
	}
	t.metrics.LeaderConflict.WithLabelValues(t.name).Set(1)
	t.state.Store(Conflict)
	// Evicted only once per holder, and never a session of the daemon's
	// own login role (a replica configured with another application_name
	// would be evicted by this one, and evict it in turn), nor a prepared
	// transaction (no backend: ROLLBACK PREPARED ends it).
	evict := s.pol.HA.EvictImpostor && h.pid.Valid && !h.sameRole && !again
	if !again {
		why := "the election lock is held by a session that is not a pgreap watch: no replica acts on the target"
		switch {
		case !h.pid.Valid:
			why = "the election lock is held by a prepared transaction (ROLLBACK PREPARED ends it): no replica acts on the target"
		case h.sameRole:
			why = "the election lock is held by a session of the daemon's role with another application_name (a replica configured otherwise?): no replica acts on the target; never evicted"
		}
		t.event(notify.Error, why)
		t.log.Error(why, "pid", h.pid.Int32, "gid", h.gid.String, "usename", h.usename.String, "application_name", h.app.String,
			"client_addr", h.client.String, "evict_impostor", s.pol.HA.EvictImpostor)
	}
	if evict {
		return s.evict(ctx, seen.backend)
	}
	return nil
}

// holderID names who holds an election lock: a backend, or a prepared
// transaction (no pid) by its GID.
type holderID struct {
	backend
	gid string
}

// holder is the session that holds an election lock.
type holder struct {
	pid                       pgtype.Int4 // NULL: a prepared transaction
	start                     pgtype.Timestamptz
	usename, app, client, gid pgtype.Text
	sameRole, replica         bool
}

// appName is the application_name of the daemon's connections: a session
// of its role with that name is a pgreap watch.
func (s *session) appName() string { return s.cn.Config().RuntimeParams["application_name"] }

// evict terminates the holder of the election lock through the guard (a
// superuser's session, or a protected one, is reported, not ended),
// audited as the rule "ha.evict_impostor".
func (s *session) evict(ctx context.Context, b backend) error {
	t := s.t
	snap, err := activity.Lookup(ctx, s.cn, []int32{b.pid})
	if err != nil {
		return err
	}
	// The holder as it was seen: a pid reused since is another backend.
	snap.Sessions = slices.DeleteFunc(snap.Sessions, func(x activity.Session) bool {
		return !b.start.IsZero() && !x.BackendStart.Equal(b.start)
	})
	plan := action.NewPlan(s.cn, snap, snap.Sessions, action.Request{Action: action.Terminate, PIDs: []int32{b.pid}, WatchApp: s.appName()})
	results, err := action.Execute(ctx, s.cn, plan, action.Options{Wait: verifyFor, After: func(d time.Duration) <-chan time.Time { return after(t.clock, d) }})
	for i := range results {
		r := &results[i]
		t.metrics.Actions.WithLabelValues(t.name, evictRule, string(r.Action), string(r.Outcome)).Inc()
		if werr := t.audit.Write(entry(t.now(), t.name, evictRule, false, r)); werr != nil {
			t.log.Error("cannot write the audit log", "err", werr)
		}
		t.log.Info("acted", "rule", evictRule, "pid", r.PID, "action", string(r.Action), "outcome", string(r.Outcome), "detail", r.Detail)
	}
	return err
}

// evictRule names the eviction of an impostor in the audit log and the
// metrics, as a rule would be.
const evictRule = "ha.evict_impostor"

// tick is the interval's work: stand by (try the lock), or lead (one
// snapshot, then arm the deadlines).
func (s *session) tick(ctx context.Context) error {
	t := s.t
	if !s.leader {
		var ok bool
		if err := s.cn.QueryRow(ctx, tryLockSQL, lockClass, s.key).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			t.metrics.Leader.WithLabelValues(t.name).Set(0)
			return s.standBy(ctx)
		}
		s.leader, s.holder = true, nil
		t.metrics.Leader.WithLabelValues(t.name).Set(1)
		t.metrics.LeaderConflict.WithLabelValues(t.name).Set(0)
		t.state.Store(Leading)
		t.log.Info("leading: this replica acts on the target")
		t.event(notify.Leader, "leading: this replica acts on the target")
	}
	start := t.now()
	marks, args := s.marks, s.args
	var pooled *activity.Pooled
	if len(t.poolers) > 0 {
		var err error
		pooled, err = s.lookPooled(ctx)
		if err != nil {
			var pe *pooler.Error
			if errors.As(err, &pe) {
				// No snapshot without the poolers: their clients would
				// be judged by the pooler's address. What is armed stays
				// armed: its signalling statement judges each session by
				// the clients named at the last look, and leaves alone one
				// whose state changed since.
				if t.state.Swap(PoolerDown) != PoolerDown {
					t.event(notify.Error, "cannot ask a pooler: no snapshot until it answers: "+oneLine(err))
					t.log.Error("cannot ask a pooler: no snapshot until it answers (/healthz says \"pooler down\")", "err", oneLine(err))
				} else {
					t.log.Debug("cannot ask a pooler: no snapshot this interval", "err", oneLine(err))
				}
				t.metrics.PoolersUp.WithLabelValues(t.name).Set(0)
				return nil
			}
			return err
		}
		t.metrics.PoolersUp.WithLabelValues(t.name).Set(1)
		if t.state.CompareAndSwap(PoolerDown, Leading) {
			t.log.Info("the poolers answer again: snapshots resume")
		}
		marks, args = s.compile(pooled)
	}
	snap, err := activity.Take(ctx, s.cn, activity.Filter{Marks: marks, Args: args})
	if err != nil {
		return err
	}
	pooled.Attach(snap)
	t.metrics.Snapshot.WithLabelValues(t.name).Observe(t.now().Sub(start).Seconds())
	states := map[string]int{}
	for i := range snap.Sessions {
		if !snap.Sessions[i].IsParallelWorker() {
			states[stateLabel(snap.Sessions[i].State)]++
		}
	}
	t.metrics.Sessions.DeletePartialMatch(map[string]string{"target": t.name})
	for st, n := range states {
		t.metrics.Sessions.WithLabelValues(t.name, st).Set(float64(n))
	}
	if lag := replayLag(snap); lag >= 0 {
		t.metrics.ReplayLag.WithLabelValues(t.name).Set(lag.Seconds())
	} else {
		t.metrics.ReplayLag.DeleteLabelValues(t.name)
	}
	s.snap = snap
	s.arm(snap, s.offset(snap.Taken.Sub(start)))
	return nil
}

// offset is the server's clock minus ours, as of when a statement is
// sent: a deadline by the server's clock, minus this, is when to send the
// signalling statement so it reaches the server at the deadline. Each
// snapshot measures it, plus how long the snapshot took to reach the
// server and start executing there, parsed and planned first: 3 to 8 ms
// with 400 sessions on 2 cores, varying from one snapshot to the next. The signalling statement takes as long: measured by a slow
// snapshot, the offset sent every deadline of the interval early, each
// then tried again (retryNoMatch) with a round trip and a statement more.
// So the least of the last offsetLooks measures is kept: a deadline errs
// late by the variation, not early. A clock stepped back is followed at
// once; one stepped forward after offsetLooks snapshots, acting that much
// late until then, never early.
func (s *session) offset(measured time.Duration) time.Duration {
	s.offsets = append(s.offsets, measured)
	if len(s.offsets) > offsetLooks {
		s.offsets = s.offsets[1:]
	}
	return slices.Min(s.offsets)
}

func stateLabel(st string) string {
	if st == "" {
		return "unknown"
	}
	return st
}

// arm computes, for every session, the instant each rule that matches it
// (or will once a duration passes) should act (chooseAll), and keeps them
// sorted.
func (s *session) arm(snap *activity.Snapshot, offset time.Duration) {
	s.armed = s.armed[:0]
	s.seen = snap.Taken.Add(-offset + margin)
	s.behind = chooseAll(snap, s.rules, s.dry, s.t.done, s.busy(), &s.t.waits, func(sess *activity.Session, choices []choice) {
		for _, c := range choices {
			s.armAt(snap, sess, c.rule, c.due, offset)
		}
	})
	sort.SliceStable(s.armed, func(i, j int) bool { return s.armed[i].due.Before(s.armed[j].due) })
	s.prune(snap)
}

// armAt arms rule k for the session at due by the server's clock (no
// duration: now).
func (s *session) armAt(snap *activity.Snapshot, sess *activity.Session, k int, due time.Time, offset time.Duration) {
	if due.Before(snap.Taken) {
		due = snap.Taken
	}
	s.armed = append(s.armed, armed{session: *sess, rule: k, due: due.Add(-offset + margin)})
}

// nextBatch splits what is armed (sorted by due) into what to send at now
// and the rest. With a deadline armed behind them, at most maxBatch of the
// sessions due go out in one statement, and those that came due since the
// snapshot (at seen) go alone, before its backlog: the backlog is late by
// up to an interval already, a deadline is to be met to the millisecond.
// Else all of them, in one statement (the cheapest).
func nextBatch(queue []armed, now, seen time.Time) (send, rest []armed) {
	n := 0
	for n < len(queue) && !queue[n].due.After(now) {
		n++
	}
	if n <= maxBatch || n == len(queue) {
		return append([]armed(nil), queue[:n]...), queue[n:]
	}
	var deadlines, backlog []armed
	for _, a := range queue[:n] {
		if a.due.After(seen) {
			deadlines = append(deadlines, a)
		} else {
			backlog = append(backlog, a)
		}
	}
	k := min(len(deadlines), maxBatch)
	if k == 0 {
		k = maxBatch
	}
	order := append(deadlines, backlog...)
	// What is left due stays first: the loop sends it at once.
	return order[:k:k], append(order[k:], queue[n:]...)
}

// dry reports whether the rule only audits.
func (s *session) dry(r *rule) bool { return r.DryRun || s.t.dryRun }

// sessionOf is a session's (pid, backend_start).
func sessionOf(sess *activity.Session) [2]int64 {
	return [2]int64{int64(sess.PID), sess.BackendStart.UnixMicro()}
}

// busy are the sessions signalled and not yet verified (a query still
// running within its grace among them): the rule that signalled them owns
// them until it knows.
func (s *session) busy() map[[2]int64]bool {
	busy := map[[2]int64]bool{}
	for _, f := range s.flying {
		for i := range f.plan.Results {
			if r := &f.plan.Results[i]; r.Pending() {
				busy[sessionOf(&r.Session)] = true
			}
		}
	}
	return busy
}

// prune drops what the rules did to sessions the snapshot shows gone, or
// on another query than the one a query's key names, and what rules no
// longer in the policy did: done holds at most one key per rule and
// session.
func (s *session) prune(snap *activity.Snapshot) {
	now := make(map[[2]int64]int64, len(snap.Sessions))
	for i := range snap.Sessions {
		now[sessionOf(&snap.Sessions[i])] = identityOf(&snap.Sessions[i]).queryFrom
	}
	rules := make(map[string]bool, len(s.rules))
	for _, r := range s.rules {
		rules[r.Name] = true
	}
	for k := range s.t.done {
		from, ok := now[[2]int64{int64(k.pid), k.backendStart}]
		if !ok || !rules[k.rule] || (k.queryFrom != 0 && k.queryFrom != from) {
			delete(s.t.done, k)
		}
	}
}

// work acts on what is due: deadlines, polls, escalations, expiries. The
// deadlines come first, and again before each flight's statements: on the
// one connection, a deadline that comes due while signals are verified
// (and their released waiters looked up) is not queued behind the rest of
// them.
func (s *session) work(ctx context.Context) error {
	if err := s.fireDue(ctx); err != nil {
		return err
	}
	// Verification statements are not cut short by a stop (SIGTERM): a
	// signal that worked is reported so, not as unverified.
	vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// fireDue adds its flights to s.flying: they are verified from the
	// next call on.
	flying := s.flying
	s.flying = nil
	kept := make([]*inflight, 0, len(flying))
	for i, f := range flying {
		if err := s.fireDue(ctx); err != nil {
			s.flying = append(append(kept, flying[i:]...), s.flying...)
			return err
		}
		now := s.t.now()
		var err error
		switch {
		case !f.escalateAt.IsZero() && !now.Before(f.escalateAt):
			f.escalateAt = time.Time{}
			err = action.Escalate(vctx, s.cn, f.plan)
			f.expireAt, f.nextPoll, f.step = now.Add(verifyFor), now.Add(firstPoll), firstPoll
		case f.escalateAt.IsZero() && !now.Before(f.expireAt):
			if _, err = action.Settle(vctx, s.cn, f.plan); err == nil {
				action.Expire(f.plan, now.Sub(f.sent))
			}
		case !now.Before(f.nextPoll):
			_, err = action.Settle(vctx, s.cn, f.plan)
			f.step = min(f.step*3/2, maxPoll)
			f.nextPoll = now.Add(f.step)
		}
		s.record(vctx, f)
		if err != nil {
			s.flying = append(append(kept, flying[i:]...), s.flying...)
			return err
		}
		if f.escalateAt.IsZero() && !pending(f.plan) {
			continue // done
		}
		kept = append(kept, f)
	}
	s.flying = append(kept, s.flying...)
	return nil
}

// fireDue sends the signalling statements of what is armed and due
// (nextBatch).
func (s *session) fireDue(ctx context.Context) error {
	due, rest := nextBatch(s.armed, s.t.now(), s.seen)
	if len(due) == 0 {
		return nil
	}
	s.armed = rest
	return s.fire(ctx, due)
}

func pending(p *action.Plan) bool {
	for i := range p.Results {
		if p.Results[i].Pending() {
			return true
		}
	}
	return false
}

// fire sends, per rule, one guarded statement for the sessions due.
func (s *session) fire(ctx context.Context, due []armed) error {
	byRule := map[int][]armed{}
	var order []int
	for _, a := range due {
		if _, ok := byRule[a.rule]; !ok {
			order = append(order, a.rule)
		}
		byRule[a.rule] = append(byRule[a.rule], a)
	}
	for _, k := range order {
		if err := s.fireRule(ctx, k, byRule[k]); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) fireRule(ctx context.Context, k int, due []armed) error {
	r := s.rules[k]
	dry := s.dry(&r)
	now := s.t.now()
	if !dry {
		var held []armed
		due, held = s.t.budgets.split(&r, due, now)
		// Once what is sent is charged: it decides when there is room.
		defer s.suppress(&r, k, held, now)
		if len(due) == 0 {
			return nil
		}
	}
	kind := action.Terminate
	if r.Action == policy.Cancel {
		kind = action.Cancel
	}
	sessions := make([]activity.Session, len(due))
	retries := map[int32]int{}
	for i, a := range due {
		sessions[i] = a.session
		retries[a.session.PID] = a.retries
	}
	sel := r.guarded.WithPooled(s.snap.Pooled)
	var behind map[int32][]*activity.Session
	if sel.BlockingLongerThan > 0 {
		// The waits the statement looks at again: those the snapshot saw
		// behind these roots.
		behind = map[int32][]*activity.Session{}
		narrowed := *sel
		narrowed.BlockingWaiters = map[int32][]int32{}
		for _, a := range due {
			behind[a.session.PID] = s.behind[a.session.PID]
			for _, w := range s.behind[a.session.PID] {
				narrowed.BlockingWaiters[a.session.PID] = append(narrowed.BlockingWaiters[a.session.PID], w.PID)
			}
		}
		sel = &narrowed
	}
	// The sessions of pgreap's role named as this daemon's connections are
	// a watch's (its other targets on this server, its replicas): never
	// acted on, whatever the rules choose.
	plan := action.NewPlan(s.cn, s.snap, sessions, action.Request{Action: kind, Selector: sel,
		WatchApp: s.cn.Config().RuntimeParams["application_name"]})
	f := &inflight{plan: plan, rule: r, sent: now, behind: behind}
	var err error
	if dry {
		_, err = action.Execute(ctx, s.cn, plan, action.Options{DryRun: true})
	} else {
		err = action.Send(ctx, s.cn, plan, r.Action == policy.CancelThenTerminate)
		s.charge(&r, plan, now)
	}
	// Not yet past the threshold by the server's clock: try again shortly,
	// without a line in the audit log (nothing was done).
	f.logged = make([]bool, len(plan.Results))
	for i := range plan.Results {
		res := &plan.Results[i]
		if !dry && err != nil && res.Outcome == action.Planned {
			// The statement never left (the connection was already lost):
			// nothing was done, nothing to audit; the session is judged
			// again once the daemon is back.
			f.logged[i] = true
			continue
		}
		if res.NoMatch() {
			if retries[res.PID] < maxRetries && err == nil {
				s.armed = append(s.armed, armed{session: res.Session, rule: k, due: now.Add(retryNoMatch << retries[res.PID]), retries: retries[res.PID] + 1})
				f.logged[i] = true // not recorded
				s.t.log.Debug("not yet past its threshold by the server's clock: tried again", "rule", r.Name, "pid", res.PID,
					"retry", retries[res.PID]+1, "detail", res.Detail)
			}
			// Nothing was signalled: the session is not marked acted on,
			// and the next snapshot judges it again. It may have moved on
			// (then no rule marks it), or the offset of the clocks was
			// misjudged by more than the retries cover (a snapshot slow to
			// reach the server under load): then it is still due.
			continue
		}
		if (res.Outcome == action.Changed || res.Outcome == action.Gone) && !res.Signalled() {
			// Not acted on: it ended, or moved on before its deadline. Kept
			// as done, a terminate's key (the session) would stop the rule
			// from acting when the session matches again later.
			continue
		}
		k := r.keyOf(&res.Session)
		s.t.done[k] = s.t.done[k] || !dry
	}
	sort.SliceStable(s.armed, func(i, j int) bool { return s.armed[i].due.Before(s.armed[j].due) })
	s.record(ctx, f)
	if err != nil {
		return err
	}
	if !dry && pending(plan) {
		f.nextPoll, f.step = now.Add(firstPoll), firstPoll
		f.expireAt = now.Add(verifyFor)
		if r.Action == policy.CancelThenTerminate {
			f.escalateAt = now.Add(r.Grace)
			f.expireAt = f.escalateAt.Add(verifyFor)
		}
		s.flying = append(s.flying, f)
	}
	return nil
}

// record writes the audit line and counts the metric of each result that
// reached its outcome since the last call. A session that moved on or
// ended before its signal (changed, gone) was not acted on: it is
// counted, and logged at debug level, but not audited. One signalled is
// audited whatever its outcome: a cancel whose query's client rolled back
// to a savepoint is changed, but it was sent. The line of a root of lock
// waits, once its end is verified, names the waiters it released: looked
// up in one statement for every root of the call.
func (s *session) record(ctx context.Context, f *inflight) {
	t := s.t
	dry := s.dry(&f.rule)
	var final []int
	var roots []int32
	for i := range f.plan.Results {
		r := &f.plan.Results[i]
		if f.logged[i] || r.Pending() {
			continue
		}
		f.logged[i] = true
		final = append(final, i)
		if len(f.behind[r.PID]) > 0 && (r.Outcome == action.Cancelled || r.Outcome == action.Terminated) {
			roots = append(roots, r.PID)
		}
	}
	var released map[int32][]Released
	var lookErr error
	if len(roots) > 0 {
		if released, lookErr = s.released(ctx, roots, f.behind); lookErr != nil {
			t.log.Warn("cannot tell which waiters were released", "rule", f.rule.Name, "pids", roots, "err", oneLine(lookErr))
		}
	}
	for _, i := range final {
		r := &f.plan.Results[i]
		t.metrics.Actions.WithLabelValues(t.name, f.rule.Name, string(r.Action), string(r.Outcome)).Inc()
		if (r.Outcome == action.Changed || r.Outcome == action.Gone) && !r.Signalled() {
			t.log.Debug("left alone", "rule", f.rule.Name, "pid", r.PID, "outcome", string(r.Outcome), "detail", r.Detail)
			continue
		}
		e := entry(t.now(), t.name, f.rule.Name, dry, r)
		attrs := []any{"rule", f.rule.Name, "pid", r.PID, "action", string(r.Action), "outcome", string(r.Outcome), "dry_run", dry}
		if slices.Contains(roots, r.PID) {
			if lookErr != nil {
				// No "released" then, which would also say none: the
				// detail tells that it is not known.
				e.Detail = strings.TrimPrefix(e.Detail+"; the waiters released are not known: "+oneLine(lookErr), "; ")
			} else {
				e.Released = released[r.PID]
				// Only where it was looked for: on any other line a
				// count of 0 would say that a root released no one.
				attrs = append(attrs, "released", len(e.Released))
			}
		}
		if err := t.audit.Write(e); err != nil {
			t.log.Error("cannot write the audit log", "err", err)
		}
		t.log.Info("acted", attrs...)
	}
}

// stop finishes what is in flight: one last look at the signalled
// sessions (bounded), then the rest is reported survived.
func (s *session) stop() {
	if len(s.flying) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	for _, f := range s.flying {
		if !f.escalateAt.IsZero() {
			// The rule has not done what it says to a session cancelled
			// whose query may still run (terminate it after the grace):
			// not recorded as done, so the watch that takes this target
			// over (a reload that changed its DSN) judges it again, cancel
			// and grace included. A session terminated at once (idle in a
			// transaction) has no grace left.
			f.escalateAt = time.Time{}
			for i := range f.plan.Results {
				if r := &f.plan.Results[i]; r.Pending() && r.Action == action.Cancel {
					s.t.log.Warn("stopping before a grace ended: the query was cancelled, the session not terminated; a watch that takes over the target judges it again",
						"rule", f.rule.Name, "pid", r.PID)
					delete(s.t.done, f.rule.keyOf(&r.Session))
				}
			}
		}
		if _, err := action.Settle(ctx, s.cn, f.plan); err == nil {
			action.Expire(f.plan, s.t.now().Sub(f.sent))
		}
		s.record(ctx, f)
	}
	s.flying = nil
}

// abandon: the connection is lost; what was signalled cannot be verified.
func (s *session) abandon(err error) {
	for _, f := range s.flying {
		action.Abandon(f.plan, err)
		s.record(context.Background(), f) // unverified: no released waiters to look for
	}
	s.flying = nil
}

// replayLag is a standby's replay lag at the snapshot; -1 on a primary, or
// before the standby replayed anything.
func replayLag(snap *activity.Snapshot) time.Duration {
	if snap.Replay == nil {
		return -1
	}
	return snap.Replay.Lag(snap.Taken)
}

// released are, by root, of the sessions that waited behind each root,
// those its end (or its cancelled query) released: the same backends, no
// longer waiting on it or on another of its waiters, directly or through
// others; each with how long it had waited, up to this look.
func (s *session) released(ctx context.Context, roots []int32, behind map[int32][]*activity.Session) (map[int32][]Released, error) {
	var of, pids []int32
	var starts []time.Time
	since := map[int32]time.Time{}
	for _, root := range roots {
		for _, w := range behind[root] {
			of, pids, starts = append(of, root), append(pids, w.PID), append(starts, w.BackendStart)
			since[w.PID] = w.WaitStart
		}
	}
	rows, err := s.cn.Query(ctx, releasedSQL, of, pids, starts)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int32][]Released{}
	for rows.Next() {
		var root, pid int32
		var now time.Time
		if err := rows.Scan(&root, &pid, &now); err != nil {
			return nil, err
		}
		out[root] = append(out[root], Released{PID: pid, WaitedSeconds: waitedSeconds(since[pid], now)})
	}
	return out, rows.Err()
}
