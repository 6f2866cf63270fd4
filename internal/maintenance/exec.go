package maintenance

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/selector"
)

var (
	//go:embed sql/exec_wait.sql
	execWaitText string
	// execWaitSQL judges conflicts by the selector's table of them, the
	// one copy pgreap has.
	execWaitSQL = strings.Replace(execWaitText, "LOCK_CONFLICTS", selector.LockConflictsSQL(), 1)
	//go:embed sql/set_lock_timeout.sql
	setLockTimeoutSQL string
	//go:embed sql/exec_session.sql
	execSessionSQL string
	//go:embed sql/exec_cancel.sql
	execCancelSQL string
)

// overdue is how much longer than its lock_timeout an attempt may be seen
// waiting on one lock before the observer cancels it: the SQL lifted the
// bound (a set_config that no text check finds), and the queue behind it
// must stay bounded all the same.
const overdue = 100 * time.Millisecond

// AttemptOutcome is how one run of exec's SQL ended.
type AttemptOutcome string

// The outcomes of an attempt.
const (
	Committed   AttemptOutcome = "committed"
	LockTimeout AttemptOutcome = "lock timeout"
	SQLFailed   AttemptOutcome = "error"
)

// LockWait is a lock an attempt waited for: the object as pg_locks names
// it, and the mode it asked for.
type LockWait struct {
	Object selector.LockObject
	Mode   string
	// Relname names the relation of a relation lock in the connected
	// database (regclass's text), "" otherwise.
	Relname string
}

// String says what was waited for: "AccessExclusiveLock on t",
// "ExclusiveLock on a row of t (tuple)".
func (w *LockWait) String() string {
	o := &w.Object
	on := o.LockType
	switch {
	case w.Relname != "" && (o.LockType == "tuple" || o.LockType == "page"):
		// Not the table's lock: a row's (or a page's) of it.
		on = "a " + map[string]string{"tuple": "row", "page": "page"}[o.LockType] + " of " + w.Relname + " (" + o.LockType + ")"
	case w.Relname != "":
		on = w.Relname
	case o.Relation != nil:
		on = "relation " + strconv.FormatUint(uint64(*o.Relation), 10)
	case o.TransactionID != nil:
		on = "transaction " + strconv.FormatUint(uint64(*o.TransactionID), 10)
	case o.VirtualXID != nil:
		on = "virtual transaction " + *o.VirtualXID
	}
	return w.Mode + " on " + on
}

// Attempt is one run of exec's SQL and what was done after it.
type Attempt struct {
	N int
	// Waited is how long the attempt ran, until it committed or failed.
	Waited  time.Duration
	Outcome AttemptOutcome
	// Lock is the lock the attempt was last seen waiting for; nil when
	// it was never seen waiting.
	Lock *LockWait
	// Blockers are who held up that wait at the last look: backends,
	// then prepared transactions (rows with GID set).
	Blockers []activity.Session
	// Waiting are the pids of holders of that lock that themselves waited
	// for another: victims of whoever they wait for, never ended.
	Waiting []int32
	// Plan and Results are the ending of the blockers after the attempt
	// (per Clear), prepared transactions shown protected; nil when
	// nothing was chosen.
	Plan    *action.Plan
	Results []action.Result
	// Err is the server's error of an attempt that failed otherwise than
	// by its lock timeout.
	Err error
	// TimedOutIn is where a lock timeout raised inside a function or
	// trigger came from (the error's context, on one line): whom it waited
	// for is not known, and no one is ended.
	TimedOutIn string
}

// oneLine is an error's context on one line: innermost first.
func oneLine(s string) string {
	return strings.Join(strings.Split(strings.TrimSpace(s), "\n"), "; ")
}

// BlockedBy are the pids of the backends among the blockers.
func (a *Attempt) BlockedBy() []int32 {
	var pids []int32
	for i := range a.Blockers {
		if !a.Blockers[i].IsPrepared() {
			pids = append(pids, a.Blockers[i].PID)
		}
	}
	return pids
}

// BlockedByPrepared are the GIDs of the prepared transactions among the
// blockers.
func (a *Attempt) BlockedByPrepared() []string {
	var gids []string
	for i := range a.Blockers {
		if a.Blockers[i].IsPrepared() {
			gids = append(gids, a.Blockers[i].GID)
		}
	}
	return gids
}

// ExecOptions say how Exec runs its SQL and what it ends.
type ExecOptions struct {
	// SQL is sent as one simple query: several statements run in one
	// transaction unless they control their own.
	SQL string
	// LockTimeout is the session's lock_timeout during each attempt.
	LockTimeout time.Duration
	// Attempts is how many times the SQL is tried; Between, how long to
	// wait after a lock timeout (and the ending of its blockers) before
	// the next attempt.
	Attempts int
	Between  time.Duration
	// Clear is what is done to the blockers of an attempt that timed out:
	// "" nothing, action.Cancel or action.Terminate.
	Clear action.Kind
	// Wait is how long to wait for the blockers signalled to be gone.
	Wait time.Duration
	// Poll is how often the waiting attempt is looked at (0: 20ms).
	Poll time.Duration

	// Confirm, when set, is asked before the blockers of an attempt are
	// ended; an error stops the run, nothing ended in that round.
	Confirm func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error
	// TimedOut, when set, is given an attempt that timed out and is to be
	// tried again, before its blockers are ended (or asked about): what
	// blocked it is known, what was done to them not yet.
	TimedOut func(a *Attempt)
	// Attempted, when set, is given each attempt when it is over (and its
	// blockers dealt with).
	Attempted func(a *Attempt)
	// Logger (nil: none) gets each look at a waiting attempt at debug
	// level.
	Logger *slog.Logger
}

// Executed is what Exec did: every attempt, the last one committed or not.
type Executed struct {
	Attempts []Attempt
}

// Committed reports whether the last attempt committed.
func (e *Executed) Committed() bool {
	return len(e.Attempts) > 0 && e.Attempts[len(e.Attempts)-1].Outcome == Committed
}

// SQLError is an attempt's SQL failing otherwise than by its lock
// timeout: never tried again.
type SQLError struct {
	Err *pgconn.PgError
	// Committed: a COMMIT of the SQL had completed before the error, and
	// what it committed stays.
	Committed bool
}

// Error is the error as the server gave it: message, SQLSTATE, position.
func (e *SQLError) Error() string {
	msg := fmt.Sprintf("the SQL failed: %s (SQLSTATE %s)", e.Err.Message, e.Err.Code)
	if e.Err.Position > 0 {
		msg += fmt.Sprintf(" at character %d", e.Err.Position)
	}
	if e.Err.Detail != "" {
		msg += "; " + e.Err.Detail
	}
	if e.Committed {
		msg += "; " + committedNote
	}
	return msg
}

// committedNote says what stays of SQL that failed after a COMMIT of its
// own had completed.
const committedNote = "the statements before the SQL's COMMIT committed, and stay"

// PartlyCommitted: an attempt timed out after a COMMIT of the SQL had
// completed. It is not tried again: a retry would run the committed part
// again.
type PartlyCommitted struct{ N int }

func (e *PartlyCommitted) Error() string {
	return fmt.Sprintf("attempt %d timed out waiting for a lock after a COMMIT of the SQL had completed: %s; "+
		"not tried again (a retry would run them again): run the rest of the SQL once its blocker is gone", e.N, committedNote)
}

// committedEarlier says whether a COMMIT of the SQL completed, from the
// command tags of its statements that ran: a COMMIT of a failed
// transaction is tagged ROLLBACK.
func committedEarlier(tags []string) bool {
	return slices.Contains(tags, "COMMIT") || slices.Contains(tags, "COMMIT PREPARED")
}

func (e *SQLError) Unwrap() error { return e.Err }

// ErrOpenTransaction: the SQL left a transaction open (BEGIN without
// COMMIT); exec rolled it back. What an earlier COMMIT of the SQL
// committed stays: the error says which.
var ErrOpenTransaction = errors.New("the SQL left its transaction open (a BEGIN without COMMIT): exec rolled it back")

// ErrNotCommitted: the SQL ran without error, but its last transaction
// ended otherwise than by a commit: a ROLLBACK, a COMMIT of a failed
// transaction (the server answers it ROLLBACK), or PREPARE TRANSACTION.
// What an earlier COMMIT of the SQL committed stays: the error says which.
var ErrNotCommitted = errors.New("the SQL's last transaction did not commit")

// ErrRolledBack: the SQL ran without error and its last transaction
// committed, but a statement of it before was answered ROLLBACK: some of
// it did not commit, and which is not known.
var ErrRolledBack = errors.New("the SQL did not all commit")

// notCommitted says whether the SQL, run without error, left its last
// transaction uncommitted, from the command tags of its statements (tags)
// and the session's transaction status after it (tx).
func notCommitted(tags []string, tx byte) error {
	var ends []string
	after := false // statements ran after the last end: they committed with the query (implicitly)
	for _, tag := range tags {
		switch tag {
		case "COMMIT", "ROLLBACK", "PREPARE TRANSACTION":
			ends, after = append(ends, tag), false
		default:
			after = true
		}
	}
	// A BEGIN makes the statements of the query before it part of its
	// transaction: only a COMMIT commits something.
	stays := func(ends []string) string {
		if slices.Contains(ends, "COMMIT") {
			return "; what it committed before (an earlier COMMIT) stays committed"
		}
		return ", nothing committed"
	}
	switch {
	case tx != 'I':
		return fmt.Errorf("%w%s", ErrOpenTransaction, stays(ends))
	case len(ends) == 0:
		return nil
	}
	if last := ends[len(ends)-1]; (last != "ROLLBACK" || after) && slices.Contains(ends, "ROLLBACK") {
		// A ROLLBACK (or ROLLBACK TO SAVEPOINT, or the COMMIT of a failed
		// transaction) rolled back some of the SQL, which may be the DDL,
		// and a later part committed (a COMMIT, or statements after the
		// last end, which commit with the query): neither is all of it.
		return fmt.Errorf("%w: the server answered ROLLBACK to a statement of it (a ROLLBACK, ROLLBACK TO SAVEPOINT or COMMIT of a failed "+
			"transaction): what that rolled back did not commit, and exec cannot tell which statements it was; what its COMMITs committed, "+
			"and the statements after its last COMMIT or ROLLBACK, committed, and stay", ErrRolledBack)
	}
	if after {
		// COMMIT; ALTER …: the statements after the last end ran in a
		// transaction of their own, committed with the query.
		return nil
	}
	switch earlier := ends[:len(ends)-1]; ends[len(ends)-1] {
	case "ROLLBACK":
		return fmt.Errorf("%w: the server answered ROLLBACK (a ROLLBACK, or a COMMIT of a failed transaction)%s", ErrNotCommitted, stays(earlier))
	case "PREPARE TRANSACTION":
		// No session holds a prepared transaction's locks: nothing exec
		// or a terminate ends frees them.
		return fmt.Errorf("%w: it was prepared (PREPARE TRANSACTION), not committed%s; the prepared transaction keeps its locks, with no session, "+
			"until COMMIT PREPARED or ROLLBACK PREPARED ends it (pg_catalog.pg_prepared_xacts lists it; pgreap unblock shows who waits on it)", ErrNotCommitted, stays(earlier))
	}
	return nil
}

// Exec runs opts.SQL on run, pgreap's own session (connected without
// pgreap's search_path, so that the SQL's names mean what they mean to
// psql), with lock_timeout set,
// so that it never queues others behind it for longer than that. While an
// attempt runs, observe (a second session of pgreap's) looks at what it
// waits for and who holds it up; when the lock timeout ends the attempt,
// those blockers are ended per opts.Clear through the guard, each pinned
// by its identity (and, for a cancel, its query) and signalled only while it still holds
// (granted) a lock on that object in a mode that conflicts with the one
// the attempt asked for: the holders, never a session merely queued ahead
// of the attempt (prepared transactions are shown, never touched),
// and the SQL is tried again after opts.Between, up to opts.Attempts
// times. Another error of the SQL ends the run (SQLError), as does a
// failure of pgreap's own statements; what was done until then is in the
// Executed returned with it. The blockers are ended on observe, whose
// search_path is pgreap's.
func Exec(ctx context.Context, run, observe *pgx.Conn, opts ExecOptions) (*Executed, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Poll <= 0 {
		opts.Poll = 20 * time.Millisecond
	}
	ex := &Executed{}
	if err := checkSession(ctx, run, opts.LockTimeout); err != nil {
		return ex, err
	}
	timeout := strconv.FormatInt(max(opts.LockTimeout.Milliseconds(), 1), 10)
	for n := 1; n <= opts.Attempts; n++ {
		// Session-level, before each attempt: the SQL may have changed
		// it.
		if _, err := run.Exec(ctx, setLockTimeoutSQL, timeout); err != nil {
			return ex, fmt.Errorf("set lock_timeout: %w", err)
		}
		ex.Attempts = append(ex.Attempts, Attempt{N: n})
		a := &ex.Attempts[len(ex.Attempts)-1]
		o := watchWait(ctx, observe, run.PgConn().PID(), opts.Poll, opts.LockTimeout+overdue, opts.Logger)
		start := time.Now()
		tags, err := runSQL(ctx, run, opts.SQL)
		ended := time.Now()
		a.Waited = ended.Sub(start)
		seen, oerr := o.stop()
		var look *waitLook
		if w := seen.last(); w != nil {
			look = w.look // shown with any outcome but a lock timeout's
		}
		if err == nil {
			err = notCommitted(tags, run.PgConn().TxStatus())
		}
		if run.PgConn().TxStatus() != 'I' {
			// A file's own BEGIN leaves the session in its transaction,
			// or in its failed one: nothing of it may commit later.
			if _, rerr := run.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
				return ex, fmt.Errorf("roll back the SQL's transaction: %w", rerr)
			}
		}
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			a.Outcome = Committed
		case errors.As(err, &pgErr) && lockTimedOut(pgErr) && ctx.Err() == nil:
			a.Outcome, look = LockTimeout, seen.timedOut(ended, opts.LockTimeout, opts.Poll)
			if a.Waited < opts.LockTimeout {
				// The attempt was over before any wait of it could last
				// the lock timeout: the SQL shortened it (SET in a
				// function, or a name no text check reads), and which
				// wait it ended is not known.
				look = nil
			}
			if pgErr.Where != "" {
				// Raised inside a function or trigger: its SET clause
				// may have shortened the timeout, its exception handler
				// waited again before re-raising it. Which wait timed out
				// is not known: no one is ended.
				a.TimedOutIn, look = oneLine(pgErr.Where), nil
			}
		case seen.cancelled != nil && errors.As(err, &pgErr) && pgErr.Code == "57014" && ctx.Err() == nil:
			// The observer's cancel: a lock timeout the SQL had lifted,
			// of the wait it saw.
			a.Outcome, look = LockTimeout, seen.cancelled.look
		case ctx.Err() != nil:
			a.Outcome, a.Err = SQLFailed, fmt.Errorf("interrupted: %w", err)
			if committedEarlier(tags) {
				a.Err = fmt.Errorf("%w; %s", a.Err, committedNote)
			}
			if look != nil {
				a.Lock, a.Blockers, a.Waiting = look.lock, look.blockers, look.waiting
			}
			if opts.Attempted != nil {
				opts.Attempted(a) // the attempt under way is shown as it ended
			}
			return ex, &Interrupted{ctx.Err()}
		case errors.As(err, &pgErr):
			a.Outcome, a.Err = SQLFailed, &SQLError{Err: pgErr, Committed: committedEarlier(tags)}
		default:
			a.Outcome, a.Err = SQLFailed, err
		}
		if oerr != nil && a.Outcome == LockTimeout {
			return ex, fmt.Errorf("look at the waiting attempt: %w", oerr)
		}
		if look != nil {
			a.Lock, a.Blockers, a.Waiting = look.lock, look.blockers, look.waiting
		}
		if a.Outcome == LockTimeout && committedEarlier(tags) {
			a.Err = &PartlyCommitted{N: n}
		}
		if a.Outcome != LockTimeout || a.Err != nil {
			if opts.Attempted != nil {
				opts.Attempted(a)
			}
			return ex, a.Err
		}
		if n < opts.Attempts {
			if opts.TimedOut != nil {
				opts.TimedOut(a)
			}
			if err := clearBlockers(ctx, observe, a, look, &opts); err != nil {
				if opts.Attempted != nil {
					opts.Attempted(a) // not confirmed: the attempt is shown still
				}
				return ex, err
			}
		}
		if opts.Attempted != nil {
			opts.Attempted(a)
		}
		if n < opts.Attempts {
			select {
			case <-ctx.Done():
				return ex, &Interrupted{ctx.Err()}
			case <-time.After(opts.Between):
			}
		}
	}
	return ex, nil
}

// SessionError: exec cannot run its SQL on the session it was given;
// nothing was run.
type SessionError struct{ Reason string }

// Error is why, in one line.
func (e *SessionError) Error() string { return e.Reason }

// checkSession refuses a session on which exec cannot keep its promise:
// one behind a pooler (its backend is not the one the protocol names, so
// the attempt's waits cannot be watched, and in transaction pooling the
// lock_timeout may be set on another backend than the SQL runs on), or
// one whose statement_timeout ends an attempt before its lock_timeout
// (holding a queue all along).
func checkSession(ctx context.Context, run *pgx.Conn, lockTimeout time.Duration) error {
	var pid int32
	var statementTimeout int64
	if err := run.QueryRow(ctx, execSessionSQL).Scan(&pid, &statementTimeout); err != nil {
		return fmt.Errorf("read the session's settings: %w", err)
	}
	if uint32(pid) != run.PgConn().PID() {
		return &SessionError{fmt.Sprintf("the connection does not reach the server directly (pg_backend_pid() is %d, the protocol names %d: a pooler such as PgBouncer?): "+
			"exec needs a server session of its own; connect to the server", pid, run.PgConn().PID())}
	}
	if st := time.Duration(statementTimeout) * time.Millisecond; st > 0 && lockTimeout >= st {
		return &SessionError{fmt.Sprintf("--lock-timeout %s is not shorter than the session's statement_timeout %s: an attempt would end by the latter, "+
			"queueing others all along; give a shorter --lock-timeout, or a longer statement_timeout (-d 'options=-cstatement_timeout=...')", lockTimeout, st)}
	}
	return nil
}

// runSQL sends sql as one simple query. An interrupt cancels it on the
// server (a closed connection would not stop a running statement, which
// could then commit unseen): the attempt ends as the server says.
// It returns the command tags of the statements that ran.
func runSQL(ctx context.Context, run *pgx.Conn, sql string) ([]string, error) {
	pc := run.PgConn()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = pc.CancelRequest(cctx)
		case <-done:
		}
	}()
	// Not pgx's Exec: its deadline (statement_timeout plus a margin) is
	// for one statement, and the server times each of several statements
	// of one query on its own (13+).
	results, err := pc.Exec(context.WithoutCancel(ctx), sql).ReadAll()
	close(done)
	wg.Wait()
	tags := make([]string, len(results))
	for i, r := range results {
		tags[i] = r.CommandTag.String()
	}
	return tags, err
}

// waitLook is one look at a waiting attempt.
type waitLook struct {
	// start is the wait's pg_locks.waitstart (14+; nil before, and for a
	// moment after it begins); now the server's clock at the look.
	start    *time.Time
	now      time.Time
	lock     *LockWait
	blockers []activity.Session
	waiting  []int32
	snap     *activity.Snapshot
}

// waiter looks at an attempt while it runs, on its own goroutine.
type waiter struct {
	done chan struct{}
	out  chan waiterResult
}

type waiterResult struct {
	// waits are the waits the looks saw, in order.
	waits []seenWait
	// slowest is the longest a look took.
	slowest time.Duration
	// cancelled is the wait seen lasting longer than the limit, and
	// cancelled; nil when none was.
	cancelled *seenWait
	err       error
}

// seenWait is one wait of an attempt, as the looks saw it: one lock,
// seen in every look from the first to the last (on 14+, with one
// waitstart: a wait that ended and a new one on the same object between
// two looks are two).
type seenWait struct {
	lock  *LockWait
	start *time.Time // pg_locks.waitstart, 14+ (the server's clock)
	// first and last: when the first and the last look that saw it were
	// sent; look is the last.
	first, last time.Time
	look        *waitLook
	// lasted is how long it had lasted at its last look: by the server's
	// clock from its waitstart (14+), else from the first look to the
	// last (short of its true length by up to two looks).
	lasted time.Duration
}

// last is the wait the looks saw last; nil when they saw none.
func (r *waiterResult) last() *seenWait {
	if len(r.waits) == 0 {
		return nil
	}
	return &r.waits[len(r.waits)-1]
}

// timedOut is the last look at the wait a lock timeout of timeout,
// received at ended, ended; nil when no look saw it. Only the last wait
// the looks saw can be that one (the SQL's statements wait one after the
// other: a wait seen after another began after that one ended), and only
// if it lasted the whole timeout, but for the time between two looks, and
// its last look was sent no earlier than the timeout before ended. A
// statement may wait, get its lock, and the next time out on another
// between two looks: that earlier wait is not the one. No one is ended
// for a wait no look saw.
func (r *waiterResult) timedOut(ended time.Time, timeout, poll time.Duration) *waitLook {
	w := r.last()
	if w == nil {
		return nil
	}
	if w.start != nil && w.look.now.Add(ended.Sub(w.last)).Before(w.start.Add(timeout)) {
		// 14+: the error came, by the server's clock, before this wait
		// could time out (at most the last look's time plus the time
		// from sending that look to the error, against its waitstart
		// plus the timeout): it ended by itself (granted) and a shorter
		// one after it (a lowered lock_timeout) timed out. How late the
		// error came says nothing: under load the client reads it late.
		return nil
	}
	short := poll + r.slowest
	if w.start == nil {
		short *= 2 // from a look after it began to one before it ended
	}
	if w.lasted >= timeout-short && !w.last.Before(ended.Add(-timeout)) {
		return w.look
	}
	return nil
}

// see records a look sent at at that saw a wait: the same wait as the
// previous look's (when that one saw a wait: cont), or a new one.
func (r *waiterResult) see(look *waitLook, at time.Time, cont bool) *seenWait {
	prev := r.last()
	same := cont && prev != nil && reflect.DeepEqual(prev.lock, look.lock) && // the pointers' values
		(prev.start == nil || look.start == nil || prev.start.Equal(*look.start))
	if !same {
		r.waits = append(r.waits, seenWait{lock: look.lock, first: at})
	}
	w := &r.waits[len(r.waits)-1]
	w.last, w.look = at, look
	if look.start != nil {
		w.start = look.start
	}
	if w.start != nil {
		w.lasted = look.now.Sub(*w.start)
	} else {
		w.lasted = at.Sub(w.first)
	}
	return w
}

// watchWait looks every poll at what backend pid waits for and who holds
// it up, until stop, and records each wait it sees (waiterResult.see):
// which one a lock timeout ended is Exec's to judge, as it knows when the
// error came (waiterResult.timedOut). Between looks, holders only leave
// a wait (a new request that conflicts queues behind it): the last look
// at a wait names those that held it up all along. An attempt seen in
// one wait for longer than limit is cancelled (once).
func watchWait(ctx context.Context, conn *pgx.Conn, pid uint32, poll, limit time.Duration, logger *slog.Logger) *waiter {
	w := &waiter{done: make(chan struct{}), out: make(chan waiterResult, 1)}
	go func() {
		var res waiterResult
		waiting := false // the previous look saw a wait
		for {
			at := time.Now()
			look, err := lookWait(ctx, conn, pid)
			res.slowest = max(res.slowest, time.Since(at))
			if err != nil {
				res.err = err
				break
			}
			if look != nil {
				cur := res.see(look, at, waiting)
				logger.Debug("attempt waits", "lock", look.lock.String(), "blockers", len(look.blockers))
				if res.cancelled == nil && cur.lasted > limit {
					var sent bool
					if err := conn.QueryRow(ctx, execCancelSQL, int32(pid), cur.start).Scan(&sent); err != nil && !errors.Is(err, pgx.ErrNoRows) {
						res.err = fmt.Errorf("cancel the attempt waiting past its lock timeout: %w", err)
						break
					}
					if sent {
						c := *cur
						res.cancelled = &c
					}
					logger.Debug("attempt waited past its lock timeout", "cancelled", sent)
				}
			}
			waiting = look != nil
			select {
			case <-w.done:
			case <-time.After(poll):
				continue
			}
			break
		}
		w.out <- res
	}()
	return w
}

// stop ends the looks (after the one under way, never cancelled: that
// would close the connection) and returns what they saw.
func (w *waiter) stop() (waiterResult, error) {
	close(w.done)
	r := <-w.out
	return r, r.err
}

// lockTimedOut: the error is the server's lock_timeout, not another
// "lock not available" of the same SQLSTATE 55P03 (NOWAIT, FOR UPDATE
// NOWAIT, a RAISE): those are errors of the SQL, whose holders no look
// of exec's saw block it. The server raises the timeout in
// ProcessInterrupts (postgres.c, every supported major) and names the
// routine in each error it sends; a server that names none is judged by
// the timing of the looks alone.
func lockTimedOut(e *pgconn.PgError) bool {
	return e.Code == "55P03" && (e.Routine == "ProcessInterrupts" || e.Routine == "")
}

// lookWait is what backend pid waits for and who holds it up, with each
// blocker as it is now (its identity, which the guard pins); nil when it
// waits on no lock.
func lookWait(ctx context.Context, conn *pgx.Conn, pid uint32) (*waitLook, error) {
	var (
		w        LockWait
		relname  *string
		pids     []int32
		waiting  []int32
		prepared []string
		start    *time.Time
		now      time.Time
	)
	o := &w.Object
	err := conn.QueryRow(ctx, execWaitSQL, int32(pid)).Scan(&o.LockType, &o.Database, &o.Relation, &o.Page, &o.Tuple,
		&o.VirtualXID, &o.TransactionID, &o.ClassID, &o.ObjID, &o.ObjSubID, &w.Mode, &start, &now, &relname, &pids, &waiting, &prepared)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("attempt's lock wait: %w", err)
	}
	if relname != nil {
		w.Relname = *relname
	}
	// Never one's own session, whatever the server says.
	pids = slices.DeleteFunc(pids, func(p int32) bool { return p == int32(pid) })
	waiting = slices.DeleteFunc(waiting, func(p int32) bool { return p == int32(pid) })
	look := &waitLook{lock: &w, waiting: waiting, start: start, now: now}
	if len(pids) > 0 {
		if look.snap, err = activity.Lookup(ctx, conn, pids); err != nil {
			return nil, err
		}
		look.blockers = append(look.blockers, look.snap.Sessions...)
	}
	if len(prepared) > 0 {
		snap := &activity.Snapshot{Sessions: []activity.Session{{BlockedByPrepared: prepared}}}
		if err := activity.PreparedBlockers(ctx, conn, snap); err != nil {
			return nil, err
		}
		look.blockers = append(look.blockers, snap.Prepared...)
		if look.snap == nil {
			look.snap = snap
		}
	}
	return look, nil
}

// clearBlockers ends the blockers of the attempt a per opts.Clear: the
// backends through the guard, pinned by their identity (and, for a
// cancel, their query) as the last look saw them, and re-checked at their
// signal to still hold a granted lock that conflicts with the attempt's on
// the object it waited for; the prepared transactions are shown and left
// alone.
func clearBlockers(ctx context.Context, conn *pgx.Conn, a *Attempt, look *waitLook, opts *ExecOptions) error {
	if opts.Clear == "" || look == nil || len(look.blockers) == 0 {
		return nil
	}
	// The signalling statement re-checks that each still holds (granted)
	// a lock that conflicts with the attempt's on the object it waited
	// for: one only queued for it is not a blocker.
	sel := &selector.Selector{LockConflict: &selector.LockConflict{Objects: []selector.LockObject{look.lock.Object}, Mode: look.lock.Mode, Held: true}}
	var sessions []activity.Session
	var prepared []action.Result
	for _, b := range look.blockers {
		if b.IsPrepared() {
			prepared = append(prepared, action.Result{Session: b, Action: action.Rollback, Named: true, Outcome: action.Protected,
				Detail: fmt.Sprintf("a prepared transaction, never touched: it blocks every attempt until ROLLBACK PREPARED '%s' (or COMMIT PREPARED) ends it",
					strings.ReplaceAll(b.GID, "'", "''"))})
			continue
		}
		sessions = append(sessions, b)
	}
	plan := action.NewPlan(conn, look.snap, sessions, action.Request{Action: opts.Clear, Selector: sel})
	if opts.Clear == action.Cancel {
		for i := range plan.Results {
			// A cancel ends the statement seen holding the wait up: one
			// that moved on since is left alone (changed). A terminate
			// needs no such pin: the session still holding a conflicting
			// lock is the blocker whatever it runs (a transaction that
			// runs statement after statement would otherwise escape
			// every attempt).
			plan.Results[i].Guard.Query = true
		}
	}
	a.Plan = plan
	planned := plan.Count(action.Planned)
	if opts.Confirm != nil && planned > 0 {
		what := fmt.Sprintf("%s %d session%s blocking attempt %d", opts.Clear, planned, plural(planned), a.N)
		if err := opts.Confirm(ctx, plan, append(slices.Clip(plan.Results), prepared...), what); err != nil {
			return err
		}
	}
	results, err := action.Execute(ctx, conn, plan, action.Options{Wait: opts.Wait})
	a.Results = append(slices.Clip(results), prepared...)
	return err
}

// Describe says who blocked an attempt: "1234 (idle in transaction),
// prepared:px"; "no one seen" when no look saw the wait.
func (a *Attempt) Describe() string {
	via := ""
	if len(a.Waiting) > 0 {
		// Named, never ended: pgreap unblock shows whom they wait for.
		via = fmt.Sprintf("via %s, itself waiting for another session's lock (not ended: see pgreap unblock)", pidList(a.Waiting))
	}
	if a.TimedOutIn != "" {
		return "not known: the lock timeout came from inside a function or trigger (" + output.Clean(a.TimedOutIn) + "), " +
			"which may shorten it or wait again before raising it; no one ended"
	}
	if len(a.Blockers) == 0 {
		if via != "" {
			return "no one that holds the lock and waits for nothing; " + via
		}
		// The wait may have been shorter than a look, the observer held up
		// itself, or the look taken before the wait that timed out began.
		return "no one seen (no look saw the wait that timed out)"
	}
	var parts []string
	for i := range a.Blockers {
		b := &a.Blockers[i]
		if b.IsPrepared() {
			parts = append(parts, output.PreparedName(b.GID))
			continue
		}
		parts = append(parts, fmt.Sprintf("%d (%s)", b.PID, stateOf(b)))
	}
	if via != "" {
		parts = append(parts, via)
	}
	return strings.Join(parts, ", ")
}
