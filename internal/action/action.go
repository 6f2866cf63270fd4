package action

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/selector"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

func mustSQL(name string) string {
	b, err := sqlFiles.ReadFile("sql/" + name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

var (
	// The signalling statement, for every server version.
	actSQL    = mustSQL("act.sql")
	waitSQL   = mustSQL("wait.sql")
	serverSQL = mustSQL("server.sql")
)

// Kind is what is done to a session.
type Kind string

// The actions.
const (
	// Cancel ends the running query and keeps the connection.
	Cancel Kind = "cancel"
	// Terminate ends the connection.
	Terminate Kind = "terminate"
	// Rollback ends a prepared transaction with ROLLBACK PREPARED: it has
	// no backend to signal (package maintenance does it).
	Rollback Kind = "rollback"
)

// Outcome is what became of one chosen session (shared/PRODUCT.md).
type Outcome string

// The outcomes.
const (
	Cancelled  Outcome = "cancelled"   // its query ended after the cancel
	Terminated Outcome = "terminated"  // its backend is gone after the terminate
	Gone       Outcome = "gone"        // it ended before we acted
	Changed    Outcome = "changed"     // pid reused, query moved on, or no longer matching: left alone
	Denied     Outcome = "denied"      // no privilege to signal it, or to guard its identity
	Protected  Outcome = "protected"   // a safety rule refused it
	Survived   Outcome = "survived"    // signalled, and still there after the wait
	Planned    Outcome = "planned"     // dry run: would be signalled
	RolledBack Outcome = "rolled back" // a prepared transaction, rolled back
)

// Guard names what the signalling statement re-checks for one session
// besides the selection: always the pid and backend_start, and with Query
// also query_start and state_change.
type Guard struct {
	Query bool
}

// Columns are the pg_stat_activity columns the guard pins.
func (g Guard) Columns() []string {
	if g.Query {
		return []string{"pid", "backend_start", "query_start", "state_change"}
	}
	return []string{"pid", "backend_start"}
}

// Result is one chosen session and what became of it. Session is the
// session as the signalling statement read it when that statement judged
// it the session chosen (signalled it, or would have in a dry run), else
// as it was seen when chosen; for a plan read from a file (ReadPlan), it is
// the statement's read of whatever backend has the pid, or, when none
// has, the pid and the guard alone: nothing of a result comes from the
// file but the identity it names. The signalling statement does not read
// BlockedBy: it is the choice's, empty for a plan read from a file.
type Result struct {
	activity.Session
	Action Kind
	// Outcome is empty while the session's signal is in flight (Pending,
	// between Send and Settle).
	Outcome Outcome
	Detail  string
	Guard   Guard
	// Named: chosen by pid. A protected session named by pid makes the
	// whole action incomplete; one a selector found is only reported.
	Named bool

	// at is what the signalling statement saw of the session at its
	// signal: what the wait needs to tell whether the signal took effect.
	at signalled
	// sig is how far its signal got while the outcome is not yet known
	// (unknown).
	sig signal
	// why is the reason of a Changed outcome that the code acts on (the
	// Detail is for people).
	why reason
	// sent: the signal went out, or may have (a failed statement for the
	// set, tried again alone): whatever the outcome, something was done.
	sent bool
	// described is what a plan file says of the session besides its
	// identity; nil for a session chosen on the server.
	described *described
}

// described is how a plan file describes a session: the signalling
// statement leaves a session described otherwise alone (changed), for the
// plan was made for another session.
type described struct {
	datname, usename, applicationName string
	clientAddr                        netip.Addr
}

// NoMatch reports whether the session was left alone because it did not
// match the selection, when chosen or at its signal: a threshold not yet
// reached by the server's clock, a lock wait the server does not name yet.
// It may match later.
func (r *Result) NoMatch() bool { return r.Outcome == Changed && r.why == whyNoMatch }

// Signalled reports whether the session's signal went out, or may have:
// then even an outcome that says it was left alone (changed: its query
// completed, or the cancel ended it inside a savepoint its client rolled
// back to; gone) follows a signal, and is reported as an action.
func (r *Result) Signalled() bool { return r.sent }

// unknown is the outcome of a result while its signal is in flight: sig
// says how far it got, and the wait (or a failure) decides the outcome.
const unknown Outcome = ""

// signal is how far the signal to a session got while its outcome is
// unknown.
type signal uint8

const (
	// sigMaybe: its signalling statement runs; if that statement fails,
	// nobody knows whether the signal left.
	sigMaybe signal = iota + 1
	// sigSent: signalled, not yet verified.
	sigSent
)

// isSent reports whether the session was signalled and its outcome is
// not yet verified.
func (r *Result) isSent() bool { return r.Outcome == unknown && r.sig == sigSent }

// isMaybeSent reports whether the session's signalling statement did not
// answer for it: it may have been signalled.
func (r *Result) isMaybeSent() bool { return r.Outcome == unknown && r.sig == sigMaybe }

// reason is why a session was left alone (Changed), where the code, not
// only a person, needs to know.
type reason uint8

const (
	whyNone reason = iota
	// whyNoMatch: it did not match the selection, when chosen or at its
	// signal; it may match later.
	whyNoMatch
	// whyMoved: its query or state changed since it was chosen.
	whyMoved
)

// signalled is a session as the signalling statement read it, just before
// its signal, and when.
type signalled struct {
	state     string
	xactStart time.Time
	waitEvent string // type:event, "IPC:SyncRep"
	xid       string // backend_xid, "" when it had none
	// read is when its row was read for the verdict; sent and returned
	// bracket the signal: the kill() was sent between them.
	read, sent, returned time.Time
	// note is said of the session whatever the wait finds (it moved on
	// as the signal was sent).
	note string
}

// Incomplete reports whether the result keeps the action from being
// complete (exit 3): denied, survived, changed, or protected when named.
func (r *Result) Incomplete() bool {
	switch r.Outcome {
	case Denied, Survived, Changed:
		return true
	case Protected:
		return r.Named
	}
	return false
}

// Request says which sessions to act on and how.
type Request struct {
	Action Kind
	// PIDs names sessions; with a selector as well, both must hold.
	PIDs []int32
	// Selector chooses sessions; nil with PIDs: those sessions, whatever
	// they are. Nil without PIDs chooses nothing (Choose refuses it).
	Selector *selector.Selector
	// IncludeReplication allows walsenders, IncludeAutovacuum autovacuum
	// workers; both are refused otherwise.
	IncludeReplication bool
	IncludeAutovacuum  bool
	// WatchApp is the application_name of the pgreap watch that acts:
	// sessions of pgreap's role with that name are a watch's (its own
	// other connections, a replica's) and protected, whatever the rules
	// choose. Empty: none.
	WatchApp string
}

// Server identifies the server run a plan was made on: its
// system_identifier and pg_postmaster_start_time() name it; host and port
// only say how it was reached.
type Server struct {
	Host    string
	Port    uint16
	Started time.Time // pg_postmaster_start_time()
	// SystemID is pg_control_system().system_identifier, as pg_controldata
	// prints it (unsigned); 0 while not known (a plan made by Choose learns
	// it from its first statement).
	SystemID uint64
}

// Plan is what an action will do: every chosen session with its action and,
// until it is carried out, the outcome Planned, or the outcome that already
// refuses it (protected, denied, gone, changed).
type Plan struct {
	Server        Server
	ServerVersion int
	// Taken is the server's clock when the sessions were seen.
	Taken   time.Time
	Results []Result
	// IncludeReplication and IncludeAutovacuum let the signalling statement
	// signal walsenders and autovacuum workers; it refuses them otherwise.
	IncludeReplication bool
	IncludeAutovacuum  bool
	// WatchApp: see Request.
	WatchApp string
	// BehindPoolers: a plan read from a file that was made behind poolers
	// (its rows have a pooler); ByPooledClient: its selection then judged
	// sessions by their pooled clients, which only the poolers can tell
	// again (WithPooled).
	BehindPoolers bool

	// sel is re-checked by the signalling statement; nil for a plan read
	// from a file, which pins identities only.
	sel *selector.Selector
}

// Pooled is what the poolers in front of the server said when the sessions
// were chosen (selector.WithPooled); nil without poolers.
func (p *Plan) Pooled() *activity.Pooled { return p.sel.Pooled() }

// ErrNeedsPoolers: a plan made behind poolers with a selection by user,
// application or client, applied without them: only they can say which
// client each session serves now.
var ErrNeedsPoolers = errors.New("made behind PgBouncer with a selection by user, application or client: give the poolers (--pgbouncer) so that each session is judged again by the client it serves")

// NeedsPoolers is ErrNeedsPoolers for a plan read from a file that needs
// the poolers, and withPoolers says they are not given.
func (p *Plan) NeedsPoolers(withPoolers bool) error {
	if p.BehindPoolers && !withPoolers && p.sel != nil && p.sel.WithPooled(&activity.Pooled{}).ByPooledClient() {
		return ErrNeedsPoolers
	}
	return nil
}

// WithPooled has the plan judge its sessions by their pooled clients as
// the poolers said now (apply --pgbouncer), and show them so.
func (p *Plan) WithPooled(pooled *activity.Pooled) {
	if pooled == nil {
		return
	}
	if p.sel == nil {
		p.sel = &selector.Selector{} // identities only: shown with their pooled clients
	}
	p.sel = p.sel.WithPooled(pooled)
	for i := range p.Results {
		p.Results[i].Pooler = pooled.Link(&p.Results[i].Session)
	}
}

// Count is how many results have the outcome.
func (p *Plan) Count(o Outcome) int {
	n := 0
	for i := range p.Results {
		if p.Results[i].Outcome == o {
			n++
		}
	}
	return n
}

// ErrNothingChosen is a request with neither pids nor a selector: pgreap
// never reads that as "every session".
var ErrNothingChosen = errors.New("name sessions by pid or choose them with selectors (to end every session of a database, use kick)")

// Choose finds the sessions of a request, in one statement (two when a pid
// named is not a client session, to say why it is refused), and applies
// the protections.
func Choose(ctx context.Context, conn *pgx.Conn, req Request) (*Plan, error) {
	if len(req.PIDs) == 0 && (req.Selector == nil || req.Selector.Empty()) {
		// An empty selection would be every session: never by default.
		return nil, ErrNothingChosen
	}
	if err := checkIdle(conn); err != nil {
		return nil, err
	}
	if req.Action != Cancel && req.Action != Terminate {
		return nil, fmt.Errorf("unknown action %q", req.Action)
	}
	sel := req.Selector
	if sel == nil {
		sel = &selector.Selector{}
	}
	where, args := sel.Compile("a", 1)
	if req.Action == Cancel && len(req.PIDs) == 0 {
		// A selection of sessions to cancel means their running queries:
		// an idle session has none.
		args = append(args, selector.Running)
		where += fmt.Sprintf("\n   AND a.state = ANY ($%d::text[])", len(args))
	}
	if len(req.PIDs) > 0 {
		args = append(args, req.PIDs)
		where += fmt.Sprintf("\n   AND a.pid = ANY ($%d::integer[])", len(args))
	}
	snap, err := activity.Take(ctx, conn, activity.Filter{Where: where, Args: args})
	if err != nil {
		return nil, err
	}
	sel.Pooled().Attach(snap)
	plan := newPlan(conn, snap, req)
	named := len(req.PIDs) > 0
	seen := map[int32]bool{}
	for i := range snap.Sessions {
		s := &snap.Sessions[i]
		seen[s.PID] = true
		if !sel.Keep(s) {
			if named {
				r := plan.result(s, req)
				r.Outcome, r.Detail, r.why = Changed, "does not match the selection (--query)", whyNoMatch
				plan.Results = append(plan.Results, r)
			}
			continue
		}
		plan.add(s, req)
	}
	var missing []int32
	for _, pid := range req.PIDs {
		if !seen[pid] && !slices.Contains(missing, pid) {
			missing = append(missing, pid)
		}
	}
	if len(missing) > 0 {
		if err := plan.explainMissing(ctx, conn, req, missing); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// NewPlan makes a plan of sessions seen in a snapshot the caller took, as
// Choose would have made it from its own: each judged by the protections,
// its identity (and, when the selection depends on it, its query) pinned,
// and the request's selector re-checked by the signalling statement. The
// selector's query expression is applied here (Keep).
func NewPlan(conn *pgx.Conn, snap *activity.Snapshot, sessions []activity.Session, req Request) *Plan {
	p := newPlan(conn, snap, req)
	for i := range sessions {
		if req.Selector == nil || req.Selector.Keep(&sessions[i]) {
			p.add(&sessions[i], req)
		}
	}
	return p
}

func newPlan(conn *pgx.Conn, snap *activity.Snapshot, req Request) *Plan {
	cfg := conn.Config()
	return &Plan{
		Server:             Server{Host: cfg.Host, Port: cfg.Port, Started: snap.ServerStarted},
		ServerVersion:      snap.ServerVersion,
		Taken:              snap.Taken,
		sel:                req.Selector,
		IncludeReplication: req.IncludeReplication,
		IncludeAutovacuum:  req.IncludeAutovacuum,
		WatchApp:           req.WatchApp,
	}
}

// result is a session of the plan before it is judged. The query is pinned
// for a cancel (it is the target), whenever the selection depends on what
// the session runs or how long, and for a pooler's server connection chosen
// by the client it serves: the pooler hands it to another client between
// two transactions, and the new client's first statement changes its
// state.
func (p *Plan) result(s *activity.Session, req Request) Result {
	sel := req.Selector
	if sel == nil {
		sel = &selector.Selector{}
	}
	pinQuery := req.Action == Cancel || sel.PinsQuery() || (s.Pooler != nil && sel.ByPooledClient())
	return Result{Session: *s, Action: req.Action, Guard: Guard{Query: pinQuery}, Named: len(req.PIDs) > 0}
}

// add judges a session and adds it to the plan.
func (p *Plan) add(s *activity.Session, req Request) {
	r := p.result(s, req)
	r.Outcome, r.Detail = p.judge(s, req.Action)
	p.Results = append(p.Results, r)
}

// notClient says why a backend of this type is never acted on. The
// startup process of a hot standby shows up as the root of lock waits: it
// holds the ACCESS EXCLUSIVE locks of the primary's transactions it
// replays, until replay reaches their end.
func notClient(backendType string) string {
	switch backendType {
	case "startup":
		return "not a client backend: WAL replay (the startup process), which holds the primary's ACCESS EXCLUSIVE locks until it replays the end of their transactions; when replay itself waits for sessions (ls shows it first), pgreap unblock --replay ends them"
	case "":
		return "not a client backend (its type is hidden from this role: pg_read_all_stats shows it)"
	}
	return fmt.Sprintf("not a client backend (%s)", backendType)
}

// judge applies the protections to a session seen in the snapshot (the
// snapshot already leaves out pgreap's own session and non-client rows).
func (p *Plan) judge(s *activity.Session, action Kind) (Outcome, string) {
	switch {
	case s.BackendStart.IsZero():
		// Another role's session, seen without pg_read_all_stats: not even
		// its backend_type shows.
		return Denied, invisibleDetail(s.Usename)
	case s.IsParallelWorker():
		if s.LeaderPID != 0 {
			return Protected, fmt.Sprintf("parallel worker of %d: act on its leader", s.LeaderPID)
		}
		return Protected, "parallel worker: act on its leader (PostgreSQL 12 does not say which it is)"
	case s.BackendType == "walsender" && !p.IncludeReplication:
		return Protected, "walsender (replication): --include-replication to allow"
	case s.BackendType == "autovacuum worker" && !p.IncludeAutovacuum:
		return Protected, "autovacuum worker: --include-autovacuum to allow"
	case s.BackendType == "":
		// A background worker shows no backend_type while it starts or
		// exits (a parallel worker at the end of its query among them).
		return Protected, "not a client backend (a background worker starting or exiting)"
	case s.BackendType != "client backend" && s.BackendType != "walsender" && s.BackendType != "autovacuum worker":
		return Protected, notClient(s.BackendType)
	case action == Cancel && !slices.Contains(selector.Running, s.State):
		return Changed, fmt.Sprintf("no query running (%s): nothing to cancel", s.State)
	}
	return Planned, ""
}

// Unseen is why the guard would deny a session of a snapshot its role saw
// without a backend_start (another role's, without pg_read_all_stats):
// it cannot make sure the session it signals is the one it chose. "" when
// it was seen.
func Unseen(s *activity.Session) string {
	if !s.BackendStart.IsZero() {
		return ""
	}
	return invisibleDetail(s.Usename)
}

func invisibleDetail(usename string) string {
	return fmt.Sprintf("cannot see the backend_start of role %s's session, so cannot make sure it is the same session: GRANT pg_read_all_stats (or %s) to pgreap's role", usename, usename)
}

// explainMissing reports pids that the snapshot did not show: pgreap's own
// session, non-client backends, sessions that do not match the selection,
// and pids with no backend.
func (p *Plan) explainMissing(ctx context.Context, conn *pgx.Conn, req Request, pids []int32) error {
	snap, err := activity.Lookup(ctx, conn, pids)
	if err != nil {
		return err
	}
	if p.Server.Started.IsZero() {
		// The snapshot had no row to say it (a physical walsender named
		// by pid, say): the lookup does.
		p.Server.Started, p.Taken = snap.ServerStarted, snap.Taken
	}
	found := map[int32]*activity.Session{}
	for i := range snap.Sessions {
		found[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	own := conn.PgConn().PID()
	for _, pid := range pids {
		r := Result{Action: req.Action, Named: true}
		s, ok := found[pid]
		switch {
		case !ok:
			r.Session = activity.Session{PID: pid}
			r.Outcome, r.Detail = Gone, "no such backend"
		case uint32(pid) == own:
			r.Session = *s
			r.Outcome, r.Detail = Protected, "pgreap's own session"
		case s.Datname == "" && s.BackendType == "walsender":
			r.Session = *s
			r.Outcome, r.Detail = p.judge(s, req.Action)
		case s.Datname == "":
			r.Session = *s
			r.Outcome, r.Detail = Protected, notClient(s.BackendType)
		default:
			r.Session = *s
			r.Outcome, r.Detail, r.why = Changed, "does not match the selection", whyNoMatch
			if req.Selector == nil {
				// It began after the snapshot: judge it as one.
				r.Outcome, r.Detail = p.judge(s, req.Action)
				r.Guard = Guard{Query: req.Action == Cancel}
			}
		}
		if r.Outcome == Planned {
			// A physical walsender with --include-replication.
			r.Guard = Guard{Query: req.Action == Cancel}
		}
		p.Results = append(p.Results, r)
	}
	return nil
}

// Options say how an action is carried out.
type Options struct {
	// DryRun judges every session at this instant, signals none, and
	// leaves the ones that would be signalled Planned.
	DryRun bool
	// Wait is how long to wait for signalled sessions to be gone (their
	// query ended, for a cancel); survivors are reported survived.
	Wait time.Duration
	// Grace, for a terminate, cancels the running queries first and
	// terminates only the sessions still running the same query after it.
	Grace time.Duration
	// After is time.After; tests may replace it.
	After func(time.Duration) <-chan time.Time
}

func (o *Options) after(d time.Duration) <-chan time.Time {
	if o.After != nil {
		return o.After(d)
	}
	return time.After(d)
}

// Execute carries out a plan: one statement signals every planned session
// that still is what was chosen, then it waits for them. The results are
// updated in place, and returned. A plan that names its server
// (Server.SystemID) is refused as a whole (ErrOtherServer) on another
// server, before anything is signalled.
func Execute(ctx context.Context, conn *pgx.Conn, p *Plan, opt Options) (_ []Result, err error) {
	defer func() { p.unverified(err) }()
	if err := checkIdle(conn); err != nil {
		return p.Results, err
	}
	var todo []int
	for i := range p.Results {
		if p.Results[i].Outcome == Planned {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return p.Results, nil
	}
	if p.ServerVersion == 0 {
		// A plan read from a file: the statement reads the columns this
		// server has.
		if p.ServerVersion, err = activity.ServerVersion(ctx, conn); err != nil {
			return p.Results, err
		}
	}
	if p.Server.SystemID != 0 && !testSkipServerCheck {
		if err := p.checkServer(ctx, conn); err != nil {
			return p.Results, err
		}
	}
	if opt.DryRun {
		return p.Results, p.act(ctx, conn, todo, nil, false)
	}
	if opt.Grace <= 0 {
		if err := p.act(ctx, conn, todo, nil, true); err != nil {
			return p.Results, err
		}
		return p.Results, p.waitSent(ctx, conn, todo, opt.Wait, &opt)
	}
	// With a grace, the statement cancels the sessions running a query
	// (a query gets the chance to end cleanly) and terminates the others,
	// deciding on what each runs at that instant.
	actions := make(map[int]Kind, len(todo))
	for _, i := range todo {
		if p.Results[i].Action == Terminate {
			actions[i] = graceKind
		}
	}
	if err := p.act(ctx, conn, todo, actions, true); err != nil {
		return p.Results, err
	}
	var cancelled []int
	for _, i := range todo {
		if r := &p.Results[i]; r.isSent() && actions[i] == graceKind && r.Action == Cancel {
			cancelled = append(cancelled, i)
		}
	}
	if err := p.wait(ctx, conn, cancelled, Cancel, opt.Grace, &opt); err != nil {
		return p.Results, err
	}
	if err := p.escalate(ctx, conn, cancelled); err != nil {
		return p.Results, err
	}
	return p.Results, p.waitSent(ctx, conn, todo, opt.Wait, &opt)
}

// unverified: stopped before a wait could tell (interrupted, connection
// lost, a statement failed), a session that was, or may have been,
// signalled is reported so, never as done.
//
// A statement that failed before pgx sent anything (the connection was
// already closed: pgconn.SafeToRetry) signalled nobody: its sessions are
// planned again, not reported as maybe signalled.
func (p *Plan) unverified(err error) {
	if err == nil {
		return
	}
	notSent := pgconn.SafeToRetry(err)
	for i := range p.Results {
		switch r := &p.Results[i]; {
		case r.isSent():
			r.Outcome, r.Detail = Survived, fmt.Sprintf("signalled, not verified: %v", err)
		case r.isMaybeSent() && notSent:
			r.Outcome = Planned
		case r.isMaybeSent():
			r.Outcome, r.Detail = Survived, fmt.Sprintf("may have been signalled, not verified: %v", err)
		}
	}
}

// escalate terminates the sessions at idx, cancelled by a grace, that still
// run the same query (the query pinned: it is the one that was cancelled);
// one that ended between the grace and the terminate was cancelled.
func (p *Plan) escalate(ctx context.Context, conn *pgx.Conn, idx []int) error {
	var still []int
	for _, i := range idx {
		if r := &p.Results[i]; r.Outcome == Survived || r.isSent() {
			r.Outcome, r.Action, r.Detail, r.Guard.Query = Planned, Terminate, "", true
			still = append(still, i)
		}
	}
	if err := p.act(ctx, conn, still, nil, true); err != nil {
		if pgconn.SafeToRetry(err) {
			// The terminate never left; the cancel had, and they outlived it.
			for _, i := range still {
				if r := &p.Results[i]; r.isMaybeSent() {
					r.Outcome, r.Detail = Survived, fmt.Sprintf("cancelled, still running the same query after the grace; not terminated: %v", err)
				}
			}
		}
		return err
	}
	for _, i := range still {
		if r := &p.Results[i]; (r.Outcome == Changed && r.why == whyMoved) || r.Outcome == Gone {
			// It ended between the grace and the terminate.
			r.Outcome, r.Action, r.Detail = Cancelled, Cancel, ""
		}
	}
	return nil
}

// waitSent waits for the signalled sessions among idx, each by its own
// action: a plan may mix cancels and terminates.
func (p *Plan) waitSent(ctx context.Context, conn *pgx.Conn, idx []int, d time.Duration, opt *Options) error {
	byKind := p.sentByKind(idx)
	for _, k := range []Kind{Terminate, Cancel} {
		if err := p.wait(ctx, conn, byKind[k], k, d, opt); err != nil {
			return err
		}
	}
	return nil
}

// sentByKind groups the signalled, unverified results among idx (all
// results for nil) by the signal sent.
func (p *Plan) sentByKind(idx []int) map[Kind][]int {
	byKind := map[Kind][]int{}
	add := func(i int) {
		if r := &p.Results[i]; r.isSent() {
			byKind[r.Action] = append(byKind[r.Action], i)
		}
	}
	if idx == nil {
		for i := range p.Results {
			add(i)
		}
	}
	for _, i := range idx {
		add(i)
	}
	return byKind
}

// checkIdle refuses a connection inside a transaction block: the server
// keeps one picture of pg_stat_activity for a whole transaction, so the
// re-check would see what the choice saw, and the wait would never see a
// session go.
func checkIdle(conn *pgx.Conn) error {
	if st := conn.PgConn().TxStatus(); st != 'I' {
		return errors.New("the connection is in a transaction: pg_stat_activity would not change within it; use a connection outside a transaction")
	}
	return nil
}

// graceKind asks the statement to cancel a session that runs a query and
// terminate one that does not.
const graceKind Kind = "grace"

// noMatchDetail is the detail of a session the signalling statement found
// no longer matching the selection (for a threshold: not yet past it, by
// the server's clock).
const noMatchDetail = "no longer matches the selection"

const movedDetail = "moved on: its query or state changed since it was chosen"

// ErrOtherServer: the plan was made on another server, or before a restart,
// and nothing was done. Errors that say which match it with errors.Is.
var ErrOtherServer = errors.New("the plan was made on another server or before a restart: nothing done")

// otherServer says how the server differs from the plan's.
type otherServer struct{ what string }

func (e *otherServer) Error() string {
	return "the plan was made " + e.what + ": nothing done"
}

func (e *otherServer) Is(target error) bool { return target == ErrOtherServer }

// checkServer refuses a plan made on another server, or before a restart,
// as a whole: one line, nothing done. The signalling statement checks the
// same again in every row, for a failover between this look and the
// signal (a pooler, a virtual address that moved).
func (p *Plan) checkServer(ctx context.Context, conn *pgx.Conn) error {
	var id int64
	var started time.Time
	if err := conn.QueryRow(ctx, serverSQL).Scan(&id, &started); err != nil {
		return fmt.Errorf("server identity: %w", err)
	}
	if what := p.Server.differs(uint64(id), started); what != "" {
		return &otherServer{what}
	}
	return nil
}

// differs says how a server (system_identifier, pg_postmaster_start_time)
// is not s, or "" when it is s.
func (s Server) differs(id uint64, started time.Time) string {
	switch {
	case s.SystemID != 0 && s.SystemID != id:
		return fmt.Sprintf("on another server (system_identifier %d, this server's %d)", s.SystemID, id)
	case !s.Started.IsZero() && !s.Started.Equal(started):
		// A primary and its standbys share the system_identifier; each
		// postmaster has its own start: the time cannot tell a restart
		// from another server of the cluster.
		return fmt.Sprintf("on another server of this cluster (a primary or standby of it) or before a restart (postmaster started %s, this server's %s)",
			s.Started.Format(time.RFC3339Nano), started.Format(time.RFC3339Nano))
	}
	return ""
}

// testSkipServerCheck lets a test leave the check before the statement out,
// as if the server had changed between the two; false outside tests.
var testSkipServerCheck bool

// act sends the action statement for the results at idx (actions
// overrides a result's action), and records each verdict: unknown (sent)
// for the signalled, else why not.
func (p *Plan) act(ctx context.Context, conn *pgx.Conn, idx []int, actions map[int]Kind, signal bool) error {
	if len(idx) == 0 {
		return nil
	}
	if signal {
		for _, i := range idx {
			p.Results[i].Outcome, p.Results[i].sig = unknown, sigMaybe
		}
	}
	record := func(i int, v verdict) {
		r := &p.Results[i]
		if v.action != nil && *v.action != "" {
			r.Action = Kind(*v.action)
		}
		// What is reported of a session is what this statement saw, when it
		// saw the session chosen; for a plan file, whatever has the pid on
		// this server (the file's description is no report of anything).
		// A session left alone for a reason of its own (moved on, no
		// longer matching) is otherwise reported as it was chosen: the
		// daemon remembers what it acted on by that.
		if v.present && v.code != "other_server" && (v.code == "ok" || r.described != nil) {
			blockedBy, marks, pooled, port, start := r.BlockedBy, r.Marks, r.Pooler, r.ClientPort, r.BackendStart
			r.Session = v.read
			r.BlockedBy, r.Marks = blockedBy, marks
			if start.Equal(v.read.BackendStart) {
				// The same backend: its client port is its own for life,
				// and its pooled client is the one it was chosen by.
				r.Pooler, r.ClientPort = pooled, port
			}
		}
		r.at = signalled{state: v.read.State, xactStart: v.read.XactStart, xid: deref(v.xid),
			read: deref(v.readAt), sent: v.signalAt, returned: v.signalDone}
		if v.read.WaitEventType != "" && v.read.WaitEvent != "" {
			r.at.waitEvent = v.read.WaitEventType + ":" + v.read.WaitEvent
		}
		r.Outcome, r.Detail = v.outcome(p, r, signal)
		r.sent = signal && ((v.sent != nil && *v.sent) || v.retried != "")
		r.sig, r.why = 0, whyNone
		if r.Outcome == unknown {
			r.sig = sigSent
		}
		switch {
		case v.code == "no_match":
			r.why = whyNoMatch
		case v.code == "moved" && v.retried == "":
			// Moved, and not signalled by a failed statement for the set
			// either.
			r.why = whyMoved
		}
	}
	verdicts, err := p.judgeAndSignal(ctx, conn, idx, actions, signal)
	if err == nil {
		copying := medianCopy(verdicts)
		other := false
		for k := range verdicts {
			verdicts[k].copying = copying
			other = other || verdicts[k].code == "other_server"
		}
		if p.Server.SystemID == 0 && !other && verdicts[0].systemID != nil {
			// A plan made by Choose names its server from now on (a dry
			// run's plan file, the statements after this one).
			p.Server.SystemID = uint64(*verdicts[0].systemID)
		}
		for k, i := range idx {
			record(i, verdicts[k])
		}
		return nil
	}
	if !signal || !isStatementError(err) {
		return err
	}
	// One failing signal aborts a whole statement (a role became a
	// superuser, a pid was reused by one, between the judging and the
	// signal). Signals already sent by it are not undone, so go on session
	// by session and say that a session found gone or moved may have been
	// signalled by the failed statement.
	for _, i := range idx {
		v, err1 := p.judgeAndSignal(ctx, conn, []int{i}, actions, signal)
		switch {
		case err1 == nil:
			v[0].retried = err.Error()
			record(i, v[0])
		case isStatementError(err1):
			record(i, verdict{code: "error", err: err1})
		default:
			// The failed set statement may have signalled the sessions
			// not yet retried: this error must not read as nothing sent.
			return mayHaveSent{err1}
		}
	}
	return nil
}

// mayHaveSent is the error of a statement that came after another
// statement of the same action failed in the server, which may have
// signalled: even if this one never left (pgconn.SafeToRetry), the
// sessions it was for may have been signalled.
type mayHaveSent struct{ error }

func (e mayHaveSent) SafeToRetry() bool { return false }
func (e mayHaveSent) Unwrap() error     { return e.error }

// isStatementError: the server refused the statement (as opposed to a
// lost connection), so trying again session by session makes sense.
func isStatementError(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr)
}

type verdict struct {
	code string
	sent *bool
	// read is the session as the statement read it (for its verdict);
	// present is false when no backend had the pid.
	read    activity.Session
	present bool
	// action is the signal sent (for a grace: cancel or terminate).
	action           *string
	xid              *string
	readAt, readDone *time.Time
	// copying is how long this statement's reads of the status array
	// take (the median): the part of read-to-signal that is no delay.
	copying              time.Duration
	signalAt, signalDone time.Time
	// after is the session read again right after its signal (only when
	// it was read afresh for it): present, and its state then.
	afterPresent                      bool
	afterState                        *string
	afterQueryStart, afterStateChange *time.Time
	// The server the statement ran on.
	systemID *int64
	started  *time.Time
	fresh    bool
	retried  string // the error of the set statement, when retried alone
	err      error  // the error of the statement alone
}

func (p *Plan) judgeAndSignal(ctx context.Context, conn *pgx.Conn, idx []int, actions map[int]Kind, signal bool) ([]verdict, error) {
	return p.statement(ctx, conn, idx, actions, signal, func(r *Result, action string) bool {
		return signal && p.readsAfresh(r, action)
	})
}

// statement runs the action statement for the results at idx; fresh says
// which sessions it reads afresh at their signal.
func (p *Plan) statement(ctx context.Context, conn *pgx.Conn, idx []int, actions map[int]Kind, signal bool, fresh func(*Result, string) bool) ([]verdict, error) {
	n := len(idx)
	pids := make([]int32, n)
	starts := make([]*time.Time, n)
	queryStarts := make([]*time.Time, n)
	stateChanges := make([]*time.Time, n)
	pins := make([]bool, n)
	kinds := make([]string, n)
	afresh := make([]bool, n)
	isDescribed := make([]bool, n)
	datnames := make([]*string, n)
	usenames := make([]*string, n)
	apps := make([]*string, n)
	addrs := make([]*string, n)
	for k, i := range idx {
		r := &p.Results[i]
		pids[k] = r.PID
		starts[k] = timePtr(r.BackendStart)
		queryStarts[k] = timePtr(r.QueryStart)
		stateChanges[k] = timePtr(r.StateChange)
		pins[k] = r.Guard.Query
		kinds[k] = string(r.Action)
		if a, ok := actions[i]; ok {
			kinds[k] = string(a)
		}
		afresh[k] = fresh(r, kinds[k])
		if d := r.described; d != nil {
			isDescribed[k] = true
			datnames[k], usenames[k], apps[k] = strPtr(d.datname), strPtr(d.usename), &d.applicationName
			if d.clientAddr.IsValid() {
				a := d.clientAddr.String()
				addrs[k] = &a
			}
		}
	}
	var systemID *int64
	if p.Server.SystemID != 0 {
		id := int64(p.Server.SystemID) // bigint on the server, the same 64 bits
		systemID = &id
	}
	args := []any{pids, starts, queryStarts, stateChanges, pins, kinds, signal,
		p.IncludeReplication, p.IncludeAutovacuum, timePtr(p.Server.Started), afresh,
		systemID, isDescribed, datnames, usenames, apps, addrs, strPtr(p.WatchApp)}
	sql := actSQL
	if p.sel != nil {
		where, selArgs := p.sel.CompileEach("a", len(args)+1)
		sql = strings.Replace(sql, "/*selection*/ true", "("+where+")", 1)
		args = append(args, selArgs...)
	}
	if testHookSQL != nil {
		sql = testHookSQL(sql, n)
	}
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("signal: %w", err)
	}
	verdicts := make([]verdict, n)
	got := 0
	// Scanned into pgtype values rather than pointers: no allocation per
	// nullable column, which counts with thousands of sessions.
	var (
		pid, leader                                     pgtype.Int4
		datname, usename, app, btype, state, wet, we, q pgtype.Text
		addr                                            *netip.Prefix
		bs, xs, qs, sc                                  pgtype.Timestamptz
		qid                                             pgtype.Int8
	)
	for rows.Next() {
		var v verdict
		var ord int64
		if err := rows.Scan(&ord, &v.code, &v.sent, &v.present,
			&pid, &leader, &datname, &usename, &app, &addr, &btype, &state, &bs, &xs, &qs, &sc, &wet, &we, &q, &qid,
			&v.action, &v.xid, &v.readAt, &v.readDone, &v.signalAt, &v.signalDone,
			&v.afterPresent, &v.afterState, &v.afterQueryStart, &v.afterStateChange, &v.systemID, &v.started); err != nil {
			rows.Close()
			return nil, fmt.Errorf("signal: %w", err)
		}
		v.read = activity.Session{PID: pid.Int32, LeaderPID: leader.Int32, Datname: datname.String, Usename: usename.String,
			ApplicationName: app.String, BackendType: btype.String, State: state.String,
			BackendStart: bs.Time, XactStart: xs.Time, QueryStart: qs.Time, StateChange: sc.Time,
			WaitEventType: wet.String, WaitEvent: we.String, Query: q.String, QueryID: qid.Int64}
		if addr != nil {
			v.read.ClientAddr = addr.Addr()
			addr = nil
		}
		got++
		if ord < 1 || int(ord) > n || verdicts[ord-1].code != "" {
			rows.Close()
			return nil, fmt.Errorf("signal: a verdict for session %d of %d", ord, n)
		}
		v.fresh = afresh[ord-1]
		verdicts[ord-1] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("signal: %w", err)
	}
	if got != n {
		return nil, fmt.Errorf("signal: %d verdicts for %d sessions", got, n)
	}
	return verdicts, nil
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// readsAfresh: the signalling statement reads the session afresh at its
// signal, and again after it, when what it pinned or what the selection
// asks can move: a query, a state, an application_name, a lock wait. A
// session pinned by identity alone, under a selection on facts a backend
// keeps for life (kick, terminate --db), is judged on the statement's one
// read: the cost floor, and nothing it checks can change meanwhile but the
// backend's existence.
func (p *Plan) readsAfresh(r *Result, action string) bool {
	return r.Guard.Query || Kind(action) == graceKind || (p.sel != nil && p.sel.Moves())
}

// testHookSQL lets a test make the statement for a whole set fail, to
// exercise the session-by-session fallback; nil outside tests.
var testHookSQL func(sql string, sessions int) string

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// protectedDetail says why act.sql's guard protects a session (its code).
func protectedDetail(code, backendType string) string {
	switch code {
	case "own":
		return "pgreap's own session"
	case "watch":
		return "a pgreap watch session of pgreap's own role (this daemon's or a replica's)"
	case "parallel_worker":
		return "parallel worker: act on its leader"
	case "walsender":
		return "walsender (replication): --include-replication to allow"
	case "autovacuum":
		return "autovacuum worker: --include-autovacuum to allow"
	}
	return notClient(backendType)
}

// Protects is act.sql's guard on a session of a snapshot read back (watch
// --test): why the signalling statement would refuse it, in its words, or
// "". Its role is not in the snapshot: a session named watchApp is taken
// for a pgreap watch of pgreap's own role. Replication and autovacuum are
// never included (a policy cannot include them).
func Protects(s *activity.Session, watchApp string) string {
	code := ""
	switch {
	case watchApp != "" && s.ApplicationName == watchApp:
		code = "watch"
	case s.BackendType == "parallel worker":
		code = "parallel_worker"
	case s.BackendType == "walsender":
		code = "walsender"
	case s.BackendType == "autovacuum worker":
		code = "autovacuum"
	case s.BackendType != "" && s.BackendType != "client backend": // NULL: NOT IN is not true
		code = "not_client"
	default:
		return ""
	}
	return protectedDetail(code, s.BackendType)
}

// outcome turns the statement's verdict on a session into its outcome.
func (v verdict) outcome(p *Plan, r *Result, signal bool) (Outcome, string) {
	maybe := ""
	if v.retried != "" {
		maybe = " (the statement for the whole set failed and may have signalled it: " + v.retried + ")"
	}
	switch v.code {
	case "ok":
		if !signal {
			return Planned, ""
		}
		if v.sent != nil && *v.sent {
			return v.afterSignal(r)
		}
		return Gone, "ended before the signal reached it" + maybe
	case "error":
		return Denied, "the server refused: " + v.err.Error()
	case "gone":
		return Gone, "ended before we acted" + maybe
	case "own", "watch", "parallel_worker", "walsender", "autovacuum", "not_client":
		return Protected, protectedDetail(v.code, v.read.BackendType)
	case "invisible":
		return Denied, invisibleDetail(v.read.Usename)
	case "reused":
		started := ""
		if !v.read.BackendStart.IsZero() {
			started = " (" + v.read.BackendStart.Format(time.RFC3339Nano) + ")"
		}
		return Changed, "pid reused: another backend started since it was chosen" + started
	case "described":
		return Changed, "not the session the plan describes: " + r.described.differences(&v.read)
	case "other_server":
		what := "on another server"
		if v.systemID != nil && v.started != nil {
			what = p.Server.differs(uint64(*v.systemID), *v.started)
		}
		return Changed, "the plan was made " + what + ": left alone"
	case "moved":
		return Changed, movedDetail + maybe
	case "not_running":
		return Changed, fmt.Sprintf("no query running (%s): nothing to cancel", v.read.State) + maybe
	case "no_match":
		return Changed, noMatchDetail
	case "superuser":
		return Denied, fmt.Sprintf("role %s is a superuser: only a superuser may signal its sessions", v.read.Usename)
	case "no_role":
		return Denied, "a background process with no role: only a superuser may signal it"
	case "not_member":
		return Denied, fmt.Sprintf("a session of role %s, not ours: GRANT pg_signal_backend to pgreap's role to signal other roles' sessions", v.read.Usename)
	}
	return Denied, "unexpected verdict " + v.code
}

// afterSignal is the outcome of a session signalled in the state it was
// judged in, from the look the statement took right after the signal. A
// session still as it was read then was as read when the signal reached
// it: the wait settles it. One that moved may have moved on its own in the
// moments between pgreap's read and the kernel's kill(), and the result
// says what is known.
func (v verdict) afterSignal(r *Result) (Outcome, string) {
	if !v.fresh {
		return unknown, "" // one read for all: the wait tells
	}
	same := func(a *time.Time, b time.Time) bool { return a != nil && !b.IsZero() && a.Equal(b) }
	after := deref(v.afterState)
	if v.afterPresent && same(v.afterQueryStart, v.read.QueryStart) && same(v.afterStateChange, v.read.StateChange) && after == v.read.State {
		return unknown, ""
	}
	newStatement := v.afterPresent && !same(v.afterQueryStart, v.read.QueryStart)
	// From the read to the signal takes the copy of the status array (as
	// long as it takes this statement's reads, more with more backends)
	// and microseconds more, unless the server did not run pgreap's
	// backend in between (a busy CPU): then the session may have moved on
	// before the signal reached it.
	var heldUp time.Duration
	if v.readAt != nil && v.signalAt.Sub(*v.readAt) > heldUpLimit+v.copying {
		heldUp = v.signalAt.Sub(*v.readAt)
	}
	held := fmt.Sprintf("pgreap's backend was held up %s between its look and the signal, and the session moved on", heldUp.Round(time.Microsecond))
	if r.Action == Terminate {
		// It dies at its next check for interrupts; what it did just
		// before may have completed by then (a COMMIT among them). Gone
		// already is what a terminate is for.
		switch {
		case newStatement:
			r.at.note = fmt.Sprintf("it began another statement as the signal was sent (now %s): that statement may have completed before the backend ended", after)
		case v.afterPresent:
			r.at.note = fmt.Sprintf("its statement completed as the signal was sent (now %s)", after)
		}
		return unknown, ""
	}
	switch {
	case !v.afterPresent:
		return unknown, "" // its connection ended: the wait says so
	case newStatement && v.afterQueryStart != nil && v.afterQueryStart.Before(v.signalAt):
		// A statement's start is stamped after its last look at pending
		// cancels: one that began before the cancel went out may be the
		// one it ended.
		return Changed, fmt.Sprintf("its query ended before the cancel was sent, and it began another statement (%s): the cancel may have ended that one", after)
	case newStatement && heldUp > 0:
		// When its query ended is not known: maybe while pgreap waited.
		return Changed, held + ": its query may have ended before the cancel, which may have ended its next statement instead"
	case newStatement:
		// It ended after the signal went out, and the client went on (the
		// signal woke it before this look): the wait tells how it ended.
		return unknown, ""
	case after == "idle in transaction":
		return Changed, completedDetail + " (its transaction goes on)"
	case v.afterStateChange != nil && v.afterStateChange.Before(v.signalAt):
		return Changed, fmt.Sprintf("its query ended (%s) before the cancel was sent", after)
	}
	// It ended after the signal went out: the wait tells how.
	return unknown, ""
}

// medianCopy is the median time the statement's fresh reads took.
func medianCopy(vs []verdict) time.Duration {
	var ds []time.Duration
	for _, v := range vs {
		if v.fresh && v.readAt != nil && v.readDone != nil {
			ds = append(ds, v.readDone.Sub(*v.readAt))
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// heldUpLimit: a read this much longer before its signal than a read
// takes may be out of date. The judging takes a few microseconds.
const heldUpLimit = 100 * time.Microsecond

// completedDetail: the cancelled query completed instead.
const completedDetail = "completed before the cancel took effect"

// differences says how a session read on the server differs from the
// description: each field as it is, and as described.
func (d *described) differences(s *activity.Session) string {
	var out []string
	add := func(name, is, was string) {
		if is != was {
			out = append(out, fmt.Sprintf("%s %s (the plan: %s)", name, quoteOrNull(is), quoteOrNull(was)))
		}
	}
	add("datname", s.Datname, d.datname)
	add("usename", s.Usename, d.usename)
	if s.ApplicationName != d.applicationName {
		out = append(out, fmt.Sprintf("application_name %q (the plan: %q)", short(s.ApplicationName), short(d.applicationName)))
	}
	addr := func(a netip.Addr) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	add("client_addr", addr(s.ClientAddr), addr(d.clientAddr))
	if len(out) == 0 {
		// The server compared client_addr as inet, which may write an
		// address otherwise.
		return "its datname, usename, application_name or client_addr differ"
	}
	return strings.Join(out, ", ")
}

func quoteOrNull(s string) string {
	if s == "" {
		return "null"
	}
	return strconv.Quote(short(s))
}

// short cuts a value a plan file gave (any length) for a detail.
func short(s string) string {
	if r := []rune(s); len(r) > 64 {
		return string(r[:63]) + "…"
	}
	return s
}
