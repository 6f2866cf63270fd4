// Package pgreap finds PostgreSQL sessions and ends them safely. It is the
// library under the pgreap command; the command is a thin user of it.
//
// Every action goes through one guard: the chosen sessions are named by
// (pid, backend_start), and by query_start as well for a cancel or a
// selection that depends on what a session runs, and the one statement
// that sends the signals re-checks them, the selection and the privilege
// of each session at that instant. A session that moved on is reported
// Changed and left alone; pgreap's own session, parallel workers,
// non-client backends, walsenders and autovacuum workers are Protected;
// a session the role may not signal is Denied without failing the others.
// A signal sent is not a backend gone: Cancel and Terminate wait until
// each one is (Cancelled, Terminated) or report it Survived.
//
// Use a connection from Connect, which sets what pgreap relies on
// (search_path with pg_catalog first, application_name, statement and
// lock timeouts), or a *pgx.Conn whose search_path puts no schema before
// pg_catalog.
package pgreap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// Session is one row of pg_stat_activity, as a snapshot saw it.
type Session = activity.Session

// Selection chooses sessions as the command's selectors do; the field
// names are those of a policy's match (DB, User, App, State, LongerThan
// as a Go duration string, ...).
type Selection = selector.Spec

// Result is one chosen session and what became of it.
type Result = action.Result

// Outcome is what became of a session.
type Outcome = action.Outcome

// The outcomes.
const (
	Cancelled  = action.Cancelled
	Terminated = action.Terminated
	Gone       = action.Gone
	Changed    = action.Changed
	Denied     = action.Denied
	Protected  = action.Protected
	Survived   = action.Survived
	Planned    = action.Planned
	// RolledBack: a prepared transaction at a root, rolled back by
	// Unblock with RollbackPrepared.
	RolledBack = action.RolledBack
)

// Target names the sessions to act on: by pid, by selection, or both
// (then both must hold). The zero Target chooses nothing.
type Target struct {
	PIDs   []int32
	Select *Selection
}

// Options say how an action is carried out.
type Options struct {
	// DryRun judges every chosen session, signals none, and reports the
	// ones that would be signalled as Planned.
	DryRun bool
	// Wait is how long to wait for signalled sessions to end (0: 5s).
	Wait time.Duration
	// Grace, for Terminate, cancels running queries first and terminates
	// only the sessions still running the same query after it.
	Grace time.Duration
	// Limit refuses (ErrLimit) to act on more than Limit sessions; 0: no limit.
	Limit int
	// IncludeReplication and IncludeAutovacuum allow walsenders and
	// autovacuum workers, refused otherwise.
	IncludeReplication bool
	IncludeAutovacuum  bool
	// PgBouncer are the admin consoles of the PgBouncers in front of the
	// server (as --pgbouncer): a selection's User, App and Client then
	// judge a pooler's server connection by the client it serves, as
	// SessionsBehind does, at the choice and again at the signal; Apply
	// judges a plan made behind them again (ErrNeedsPoolers without them).
	PgBouncer []string
}

// ErrNeedsPoolers: Apply was given a plan made behind PgBouncer whose
// selection is by user, application or client, without Options.PgBouncer;
// nothing was done.
var ErrNeedsPoolers = action.ErrNeedsPoolers

// ErrLimit: more sessions were chosen than Options.Limit allows; nothing
// was done.
var ErrLimit = errors.New("more sessions chosen than the limit: nothing done")

// ErrNothingChosen: a Target with neither pids nor a selection.
var ErrNothingChosen = action.ErrNothingChosen

// Connect opens a connection as the pgreap command does: dsn is a
// keyword/value string or a URL, and the PG* variables, ~/.pgpass and
// service files apply as for psql.
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := conn.Config(conn.Params{DSN: dsn})
	if err != nil {
		return nil, err
	}
	return conn.Connect(ctx, cfg)
}

// Sessions lists the client sessions the selection keeps (nil: all), in
// one statement, parallel workers right after their leader. pgreap's own
// session and non-client backends are never listed.
func Sessions(ctx context.Context, c *pgx.Conn, sel *Selection) ([]Session, error) {
	s := &selector.Selector{}
	if sel != nil {
		var err error
		if s, err = selector.Parse(*sel); err != nil {
			return nil, err
		}
	}
	snap, err := s.Take(ctx, c)
	if err != nil {
		return nil, err
	}
	return snap.Sessions, nil
}

// SessionsBehind is Sessions behind PgBouncers: pgbouncer are the
// connection strings of their admin consoles (as --pgbouncer; a stats_users
// role suffices). A backend that is a server connection of one has Pooler
// set: the client it serves now (or none: idle in the pool), and the
// selection's User, App and Client match that client. A backend whose state
// changed after the poolers were asked may serve another client by now: its
// Pooler says so (Unknown), and no selection by client keeps it.
func SessionsBehind(ctx context.Context, c *pgx.Conn, sel *Selection, pgbouncer []string) ([]Session, error) {
	s := &selector.Selector{}
	if sel != nil {
		var err error
		if s, err = selector.Parse(*sel); err != nil {
			return nil, err
		}
	}
	pooled, err := lookPooled(ctx, c, pgbouncer)
	if err != nil {
		return nil, err
	}
	snap, err := s.WithPooled(pooled).Take(ctx, c)
	if err != nil {
		return nil, err
	}
	return snap.Sessions, nil
}

// lookPooled asks the poolers (their consoles' connection strings) which
// client each server connection serves; nil without poolers.
func lookPooled(ctx context.Context, c *pgx.Conn, pgbouncer []string) (*activity.Pooled, error) {
	poolers, err := pooler.ParseAll(pgbouncer)
	if err != nil || len(poolers) == 0 {
		return nil, err
	}
	admins, err := pooler.ConnectAll(ctx, poolers)
	if err != nil {
		return nil, err
	}
	defer pooler.CloseAll(admins)
	return activity.TakePooled(ctx, c, admins)
}

// Cancel cancels the running query of each chosen session. Chosen by a
// selection, only sessions running a query are chosen.
func Cancel(ctx context.Context, c *pgx.Conn, t Target, opt Options) ([]Result, error) {
	return act(ctx, c, action.Cancel, t, opt)
}

// Terminate ends the connection of each chosen session.
func Terminate(ctx context.Context, c *pgx.Conn, t Target, opt Options) ([]Result, error) {
	return act(ctx, c, action.Terminate, t, opt)
}

func act(ctx context.Context, c *pgx.Conn, kind action.Kind, t Target, opt Options) ([]Result, error) {
	req := action.Request{Action: kind, PIDs: t.PIDs, IncludeReplication: opt.IncludeReplication, IncludeAutovacuum: opt.IncludeAutovacuum}
	if t.Select != nil {
		s, err := selector.Parse(*t.Select)
		if err != nil {
			return nil, err
		}
		req.Selector = s
	}
	pooled, err := lookPooled(ctx, c, opt.PgBouncer)
	if err != nil {
		return nil, err
	}
	if pooled != nil {
		if req.Selector == nil {
			req.Selector = &selector.Selector{} // named by pid: judged with their pooled clients
		}
		req.Selector = req.Selector.WithPooled(pooled)
	}
	plan, err := action.Choose(ctx, c, req)
	if err != nil {
		return nil, err
	}
	if n := plan.Count(action.Planned); opt.Limit > 0 && n > opt.Limit {
		return nil, fmt.Errorf("%w (%d chosen, limit %d)", ErrLimit, n, opt.Limit)
	}
	return action.Execute(ctx, c, plan, executeOptions(opt))
}

func executeOptions(opt Options) action.Options {
	if opt.Wait == 0 {
		opt.Wait = 5 * time.Second
	}
	return action.Options{DryRun: opt.DryRun, Wait: opt.Wait, Grace: opt.Grace}
}

// ErrOtherServer: Apply was given a plan made on another server, or before
// the server restarted (its system_identifier or pg_postmaster_start_time
// differs); nothing was done. Match it with errors.Is.
var ErrOtherServer = action.ErrOtherServer

// Apply carries out a plan as `pgreap cancel|terminate --dry-run -o json`
// printed it: exactly its planned sessions, each through the guard, so one
// that moved on since, or that is not the session the plan describes, is
// Changed. A plan from another server run is refused as a whole
// (ErrOtherServer) before anything is signalled. The results are the
// sessions as the signalling statement read them, never the plan's text.
func Apply(ctx context.Context, c *pgx.Conn, plan io.Reader, opt Options) ([]Result, error) {
	p, err := action.ReadPlan(plan)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	if opt.Limit > 0 && len(p.Results) > opt.Limit {
		return nil, fmt.Errorf("%w (%d planned, limit %d)", ErrLimit, len(p.Results), opt.Limit)
	}
	if err := p.NeedsPoolers(len(opt.PgBouncer) > 0); err != nil {
		return nil, err
	}
	pooled, err := lookPooled(ctx, c, opt.PgBouncer)
	if err != nil {
		return nil, err
	}
	p.WithPooled(pooled)
	p.IncludeReplication, p.IncludeAutovacuum = opt.IncludeReplication, opt.IncludeAutovacuum
	return action.Execute(ctx, c, p, executeOptions(opt))
}

// Settings are a database's connection settings (pg_database's
// datallowconn and datconnlimit), as Drain found them and Undrain
// restores them.
type Settings struct {
	AllowConnections bool
	ConnectionLimit  int32
}

// DrainOptions say how Drain empties a database.
type DrainOptions struct {
	// Timeout is how long it goes on ending sessions (0: 60s), and with
	// PgBouncer, how long the poolers get to pause.
	Timeout time.Duration
	// Escalate cancels running queries first, and terminates what still
	// runs after Grace (0: 10s, as the command's --grace); with PgBouncer,
	// Grace is also how long the transactions that hold PAUSE up get.
	Escalate bool
	Grace    time.Duration
	// IncludeReplication and IncludeAutovacuum end walsenders and
	// autovacuum workers of the database too.
	IncludeReplication bool
	IncludeAutovacuum  bool
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Progress, when set, is told at each look how many sessions are
	// left.
	Progress func(left int, elapsed time.Duration)
	// PgBouncer are connection strings to the admin consoles of the
	// PgBouncers in front of the server. Drain pauses the database on
	// each first (PAUSE), so that their clients wait instead of failing:
	// the transactions in flight get Grace, then the backends that still
	// hold PAUSE up are terminated through the guard; a pooler not paused
	// by Timeout has every pause rolled back (ErrNotPaused), and nothing
	// is blocked. ResumePoolers undoes the pauses (Drained.Pauses).
	PgBouncer []string
	// RecordPauses, when set, is called with the pauses before each PAUSE
	// is sent, and at each change: keep them durably, as the command's
	// record does, so that ResumePoolers can resume a pooler even after
	// the process died while PAUSE waited. An error stops Drain.
	RecordPauses func([]PoolerPause) error
}

// PoolerPause is one of a pooler's names of the drained database and what
// Drain did to it (its State); ResumePoolers resumes those that are
// Drain's own (Ours), never a pause that was there before.
type PoolerPause = maintenance.PoolerPause

// ErrNotPaused: a pooler was not paused by the timeout; every pause was
// rolled back (RESUME) and the database was not blocked.
var ErrNotPaused = maintenance.ErrPauseTimeout

// Drained is what Drain did.
type Drained struct {
	// Before are the settings Undrain restores: those found, or, when the
	// database refused connections already, those too.
	Before Settings
	// Ended are the sessions Drain ended (or that ended once chosen), by
	// pid.
	Ended []Result
	// Left are the sessions still connected at the timeout, each with
	// why (Survived, Denied, Protected): empty when drained.
	Left []Result
	// Autovacuum are the autovacuum workers found in the database and
	// left alone (IncludeAutovacuum ends them): blocking connections does
	// not keep autovacuum out.
	Autovacuum []int32
	// Pauses are the poolers' pauses (DrainOptions.PgBouncer), as Drain
	// left them: give them to ResumePoolers after Undrain.
	Pauses []PoolerPause
	// PausedOut are the backends Drain terminated because they held a
	// PAUSE up after Grace.
	PausedOut []Result
	// Prepared are the prepared transactions in the database: they have
	// no session, so Drain neither counts nor ends them, yet they keep
	// their locks, and DROP DATABASE refuses while one is there (ROLLBACK
	// PREPARED or COMMIT PREPARED ends them, connected to the database).
	Prepared []Session
}

// ErrNotDrained: sessions were still connected at Drain's timeout (see
// Drained.Left); the database stays blocked.
var ErrNotDrained = errors.New("sessions still connected at the timeout")

// ErrMayNotAlter: blocking connections to a database takes its owner or a
// superuser (ALTER DATABASE); nothing was done.
var ErrMayNotAlter = errors.New("blocking new connections needs the database's owner or a superuser")

// ErrStandby: Drain or Undrain was called on a hot standby, where
// pg_database is the primary's, replicated: drain on the primary, the
// block reaches every standby by replication (then end the standby's
// sessions with Terminate). Nothing was done. Match it with errors.Is.
var ErrStandby = maintenance.ErrStandby

// Drain blocks new connections to database db, superusers' too
// (ALLOW_CONNECTIONS false), and ends its sessions until none is left,
// as `pgreap drain` does, except for the record of the settings: keep
// Drained.Before to Undrain. c must be connected to another database.
// The database stays blocked whatever happens after the block, even on
// an error or ErrNotDrained; the Drained returned then says what was
// done. It is nil only with an error from before the block (nothing
// done).
//
// With opt.PgBouncer the poolers are paused first; an error after that
// leaves them paused (Drained.Pauses), except ErrNotPaused, which rolled
// them back: ResumePoolers resumes them.
func Drain(ctx context.Context, c *pgx.Conn, db string, opt DrainOptions) (*Drained, error) {
	if c.Config().Database == db {
		// pgreap's own session is never ended: the database would never
		// be empty.
		return nil, fmt.Errorf("connected to %q itself: connect to another database", db)
	}
	// Before the poolers are paused: a standby has nothing to block.
	if err := maintenance.Primary(ctx, c, "drain"); err != nil {
		return nil, err
	}
	settings, err := maintenance.ReadSettings(ctx, c, db)
	if err != nil {
		return nil, err
	}
	if !settings.MayAlter {
		return nil, fmt.Errorf("database %q: %w", db, ErrMayNotAlter)
	}
	d := &Drained{Before: Settings{AllowConnections: settings.AllowConnections, ConnectionLimit: settings.ConnectionLimit}}
	if opt.Timeout == 0 {
		opt.Timeout = 60 * time.Second
	}
	if opt.Grace == 0 {
		opt.Grace = 10 * time.Second
	}
	if len(opt.PgBouncer) > 0 {
		if err := pause(ctx, c, db, opt, d); err != nil {
			return d, err
		}
	}
	if err := maintenance.Block(ctx, c, db); err != nil {
		return d, err
	}
	done, err := maintenance.Drain(ctx, c, db, maintenance.DrainOptions{Timeout: opt.Timeout, Escalate: opt.Escalate, Grace: opt.Grace,
		IncludeReplication: opt.IncludeReplication, IncludeAutovacuum: opt.IncludeAutovacuum, Now: opt.Now, Progress: opt.Progress})
	d.Ended, d.Autovacuum = done.Ended, done.Autovacuum
	if err != nil {
		return d, fmt.Errorf("drain %q: %w", db, err)
	}
	if d.Prepared, err = activity.PreparedIn(ctx, c, db); err != nil {
		return d, fmt.Errorf("drain %q: prepared transactions: %w", db, err)
	}
	if done.Left > 0 {
		for _, r := range done.Last.Results {
			if !slices.Contains(done.Autovacuum, r.PID) {
				d.Left = append(d.Left, r)
			}
		}
		return d, fmt.Errorf("drain %q: %d %w", db, done.Left, ErrNotDrained)
	}
	return d, nil
}

// pause is Drain's first step with poolers: every pooler paused, or every
// pause rolled back.
func pause(ctx context.Context, c *pgx.Conn, db string, opt DrainOptions, d *Drained) error {
	poolers, err := pooler.ParseAll(opt.PgBouncer)
	if err != nil {
		return err
	}
	admins, err := pooler.ConnectAll(ctx, poolers)
	if err != nil {
		return err
	}
	defer pooler.CloseAll(admins)
	here, err := maintenance.LookHere(ctx, c, admins)
	if err != nil {
		return err
	}
	if d.Pauses, err = maintenance.PlanPause(ctx, admins, db, nil, here); err != nil {
		return err
	}
	p, err := maintenance.Pause(ctx, c, admins, db, d.Pauses, maintenance.PauseOptions{Timeout: opt.Timeout, Grace: opt.Grace, Now: opt.Now, Here: here,
		Record: func(ps []PoolerPause) error {
			d.Pauses = ps
			if opt.RecordPauses == nil {
				return nil
			}
			return opt.RecordPauses(ps)
		}})
	d.Pauses = p.Pauses
	for _, h := range p.Ended {
		d.PausedOut = append(d.PausedOut, h.Result)
	}
	if err != nil {
		return fmt.Errorf("drain %q: pause the poolers: %w", db, err)
	}
	return nil
}

// ResumePoolers resumes the pauses that are Drain's own (Drained.Pauses,
// or what RecordPauses kept), after Undrain: each pooler reached by its
// connection string in pgbouncer (matched by host and port), else without
// a password as the pause records it (PGPASSWORD, ~/.pgpass). A database
// the pooler says is not paused counts as resumed. It returns the pauses
// in their new states; a pooler it could not reach stays paused and is in
// the error.
func ResumePoolers(ctx context.Context, pauses []PoolerPause, pgbouncer []string) ([]PoolerPause, error) {
	given, err := pooler.ParseAll(pgbouncer)
	if err != nil {
		return pauses, err
	}
	return maintenance.ResumeRecorded(ctx, pauses, given, time.Now().UTC(), nil)
}

// Undrain restores the connection settings Drain found (Drained.Before);
// on a standby it is ErrStandby, nothing done.
// The zero Settings are those of a blocked database (no connections,
// limit 0): pass what Drain returned.
func Undrain(ctx context.Context, c *pgx.Conn, db string, before Settings) error {
	return maintenance.Restore(ctx, c, db, before.AllowConnections, before.ConnectionLimit)
}

// ErrNoMatch: Unblock found no lock wait older than LongerThan, or none
// whose root the selection keeps.
var ErrNoMatch = maintenance.ErrNoMatch

// ErrStillWaiting: waits Unblock set out to release were still held up
// when it gave up (Unblocked.Still says by whom).
var ErrStillWaiting = errors.New("still waiting")

// UnblockOptions say which roots of lock waits Unblock ends, and how.
type UnblockOptions struct {
	// LongerThan: the waits to release, those that waited that long (0:
	// every wait).
	LongerThan time.Duration
	// Select narrows the roots Unblock may end (nil: any).
	Select *Selection
	// Cancel cancels the roots' queries instead of terminating them.
	Cancel bool
	// Timeout bounds how long Unblock goes on ending what still holds up
	// those waits (0: 10s); Wait, how long it waits for each round's
	// sessions to end (0: 5s).
	Timeout, Wait time.Duration
	// Limit: more roots to end than Limit (0: no limit) and Unblock ends
	// none of them (ErrLimit), or, in a later round, stops (ErrStillWaiting).
	Limit  int
	DryRun bool
	// IncludeReplication and IncludeAutovacuum allow walsenders and
	// autovacuum workers as roots.
	IncludeReplication, IncludeAutovacuum bool
	// RollbackPrepared rolls back the prepared transactions at roots
	// (which can break the atomicity of a distributed transaction); they
	// are left alone (Protected) otherwise.
	RollbackPrepared bool
}

// Unblocked is what Unblock did.
type Unblocked struct {
	// Results are the roots it chose, and what became of each.
	Results []Result
	// Still names the waits still held up when it gave up, and by whom:
	// "1234 waits for 5678"; "" when every one was released, or when it
	// stopped on an error (a cancelled context: errors.Is(err,
	// context.Canceled)).
	Still string
}

// Unblock ends the sessions at the root of the lock waits older than
// LongerThan, as `pgreap unblock --yes` does: those that block others and
// wait for no one, each through the guard, signalled only if it still
// holds up such a wait; then, while those waits remain, what still holds
// them up, until Timeout. A session that waits itself is never ended (once
// granted, it blocks those queued behind it: that is the queue moving).
// A prepared transaction at a root is Protected unless RollbackPrepared.
// ErrNoMatch: no such wait; ErrStillWaiting: some were still held up at
// the end.
func Unblock(ctx context.Context, c *pgx.Conn, opt UnblockOptions) (*Unblocked, error) {
	mopt := maintenance.UnblockOptions{Action: action.Terminate, LongerThan: opt.LongerThan, Timeout: opt.Timeout, Wait: opt.Wait,
		Limit: opt.Limit, DryRun: opt.DryRun, IncludeReplication: opt.IncludeReplication, IncludeAutovacuum: opt.IncludeAutovacuum,
		RollbackPrepared: opt.RollbackPrepared}
	if opt.Cancel {
		mopt.Action = action.Cancel
	}
	if mopt.Timeout == 0 {
		mopt.Timeout = 10 * time.Second
	}
	if mopt.Wait == 0 {
		mopt.Wait = 5 * time.Second
	}
	if opt.Select != nil {
		s, err := selector.Parse(*opt.Select)
		if err != nil {
			return nil, err
		}
		mopt.Selector = s
	}
	mopt.ConnectDB = func(ctx context.Context, db string) (*pgx.Conn, error) {
		// ROLLBACK PREPARED runs connected to the transaction's database.
		cfg := c.Config().Copy()
		cfg.Database = db
		return conn.Connect(ctx, cfg)
	}
	u, err := maintenance.Unblock(ctx, c, mopt)
	done := &Unblocked{Results: u.Results, Still: u.Still}
	var limit *action.LimitError
	switch {
	case errors.As(err, &limit):
		return done, fmt.Errorf("%w (%d chosen, limit %d)", ErrLimit, limit.Chosen, limit.Limit)
	case err != nil:
		return done, err
	case u.Still != "":
		return done, fmt.Errorf("%w: %s", ErrStillWaiting, u.Still)
	}
	return done, nil
}
