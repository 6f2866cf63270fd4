package maintenance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// The states of a pooler's database in a drain record.
const (
	// PauseSent: PAUSE is sent, or about to be. Recorded before it is
	// sent, because a PAUSE whose connection closes while it waits (a
	// drain killed then) leaves the database paused: undrain resumes it.
	PauseSent = "pausing"
	// PauseDone: PAUSE returned and the pooler holds no server connection
	// of the database any more.
	PauseDone = "paused"
	// PauseResumed: RESUME was sent (a rollback, or undrain), or the
	// pooler said it was not paused.
	PauseResumed = "resumed"
	// PauseOthers: paused already when the drain came, by someone else:
	// pgreap never resumes it.
	PauseOthers = "paused before"
	// PauseNotServed: the pooler does not serve the database under that
	// name (no `*` entry): nothing to pause.
	PauseNotServed = "not served"
	// PauseRefused: the pooler answered PAUSE with an error (a role not
	// in admin_users): nothing was paused.
	PauseRefused = "refused"
)

// PoolerPause is one of a pooler's names of the drained database, and
// what the drain did to it, as its record keeps it.
type PoolerPause struct {
	// Pooler is the pooler's name (host:port); Reach connects to its
	// console again, without a password (see pooler.Pooler.Reach).
	Pooler string `json:"pooler"`
	Reach  string `json:"reach"`
	// Database is the pooler's name of the database (an alias in its
	// [databases] section, or the server's name).
	Database string    `json:"database"`
	State    string    `json:"state"`
	At       time.Time `json:"at"`
}

// CheckPauses refuses pauses that no drain wrote (a record edited by
// hand): an unknown state, a name the pooler could not have, or a Reach
// that does not connect to the pooler named (undrain would send RESUME to
// one pooler and say it was another).
func CheckPauses(pauses []PoolerPause) error {
	for i, p := range pauses {
		where := fmt.Sprintf("pooler entry %d", i+1)
		switch p.State {
		case PauseSent, PauseDone, PauseResumed, PauseOthers, PauseNotServed, PauseRefused:
		default:
			return fmt.Errorf("%s: state %q is none a drain writes", where, p.State)
		}
		if p.Database == "" || strings.ContainsFunc(p.Database, unicode.IsControl) || len(p.Database) > 63 {
			return fmt.Errorf("%s: %q is not a database name a pooler has", where, p.Database)
		}
		if p.Pooler == "" {
			return fmt.Errorf("%s: no pooler", where)
		}
		if !p.Ours() {
			continue
		}
		r, err := pooler.Parse(p.Reach)
		if err != nil {
			return fmt.Errorf("%s: reach: %w", where, err)
		}
		if r.Name != p.Pooler {
			return fmt.Errorf("%s: reach connects to pgbouncer %s, not to pgbouncer %s", where, r.Name, p.Pooler)
		}
	}
	return nil
}

// Ours reports whether the drain paused it, or may have: undrain and a
// rollback resume exactly those.
func (p *PoolerPause) Ours() bool { return p.State == PauseSent || p.State == PauseDone }

// ErrManyServers: a pooler serves the database under names that point at
// more than one server (host and port): a database of the same name on
// another server, which pgreap cannot tell from this one.
var ErrManyServers = errors.New("serves a database of that name from more than one server")

// ErrOtherServer: a pooler serves the database from another server than
// the one pgreap is connected to.
var ErrOtherServer = errors.New("serves that database from another server than this one")

// Here is what tells this server from another behind a pooler: its port,
// and which of the poolers' server connections are its backends.
type Here struct {
	Port   int
	Pooled *activity.Pooled
}

// LookHere asks the server its port and the poolers which client each
// server connection serves (activity.TakePooled).
func LookHere(ctx context.Context, conn *pgx.Conn, admins []*pooler.Admin) (*Here, error) {
	h := &Here{}
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.current_setting('port')::integer").Scan(&h.Port); err != nil {
		return nil, fmt.Errorf("this server's port: %w", err)
	}
	var err error
	if h.Pooled, err = activity.TakePooled(ctx, conn, admins); err != nil {
		return nil, err
	}
	return h, nil
}

// check refuses a pooler's entry that points at another server: it has
// server connections and none is a backend of this one, or it has none
// and its port is not this server's. (Without server connections, an
// entry on this server's port on another host is not told apart: the
// poolers named must be those in front of this server.)
func (h *Here) check(a *pooler.Admin, d pooler.Database, db string) error {
	if h == nil {
		return nil
	}
	servers, here := h.Pooled.Serves(a.Pooler.Name, d.Name)
	var why string
	switch {
	case servers > 0 && here == 0:
		why = fmt.Sprintf("none of its %d server connections to %s:%d is a backend of this server", servers, d.Host, d.Port)
	case servers == 0 && d.Port != 0 && d.Port != h.Port:
		why = fmt.Sprintf("it points at %s:%d, and this server listens on port %d", d.Host, d.Port, h.Port)
	default:
		return nil
	}
	return &pooler.Error{Pooler: a.Pooler.Name, Err: fmt.Errorf("%w (%s as %q: %s): name only poolers in front of this server", ErrOtherServer, db, d.Name, why)}
}

// allHere reports whether each of the entries is proven to point at this
// server: it has server connections, and they are backends here (one
// server under two host names: its socket and localhost).
func (h *Here) allHere(a *pooler.Admin, entries []pooler.Database) bool {
	if h == nil {
		return false
	}
	for _, d := range entries {
		if servers, here := h.Pooled.Serves(a.Pooler.Name, d.Name); servers == 0 || here == 0 {
			return false
		}
	}
	return true
}

// servedBy are the pooler's entries (SHOW DATABASES) that serve server
// database db. Entries that point at different servers make it
// ErrManyServers, and entries that point at another server than here
// ErrOtherServer: a PAUSE or a KILL of the other server's would hold up or
// end clients of a database that is not the one drained or kicked.
func servedBy(a *pooler.Admin, dbs []pooler.Database, db string, here *Here) ([]pooler.Database, error) {
	var out []pooler.Database
	servers := map[string]bool{}
	for _, d := range dbs {
		if d.Name == pooler.AdminDB {
			continue
		}
		if d.Database == db || (d.Database == "" && d.Name == db) {
			out = append(out, d)
			servers[fmt.Sprintf("%s:%d", d.Host, d.Port)] = true
		}
	}
	if len(servers) > 1 && !here.allHere(a, out) {
		var list []string
		for _, d := range out {
			list = append(list, fmt.Sprintf("%s as %q on %s:%d", db, d.Name, d.Host, d.Port))
		}
		return nil, &pooler.Error{Pooler: a.Pooler.Name, Err: fmt.Errorf("%w (%s): name only poolers that serve it from this server", ErrManyServers, strings.Join(list, ", "))}
	}
	for _, d := range out {
		if err := here.check(a, d, db); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// PlanPause says what a drain of database db pauses on each pooler: every
// name under which the pooler serves db (SHOW DATABASES), or db itself
// when no name serves it (a `*` entry serves any name: PAUSE creates and
// pauses it, so that clients who come later wait too). A name that is
// paused already is someone else's pause, left alone (PauseOthers), unless
// kept, the record of a drain not yet undone, says it is ours.
func PlanPause(ctx context.Context, admins []*pooler.Admin, db string, kept []PoolerPause, here *Here) ([]PoolerPause, error) {
	var out []PoolerPause
	for _, a := range admins {
		dbs, err := a.Databases(ctx)
		if err != nil {
			return nil, err
		}
		served, err := servedBy(a, dbs, db, here)
		if err != nil {
			return nil, err
		}
		var names []string
		paused := map[string]bool{}
		taken := slices.ContainsFunc(dbs, func(d pooler.Database) bool { return d.Name == db })
		for _, d := range served {
			names = append(names, d.Name)
			paused[d.Name] = d.Paused
		}
		if len(names) == 0 && !taken {
			names = append(names, db)
		}
		for _, n := range names {
			p := PoolerPause{Pooler: a.Pooler.Name, Reach: a.Pooler.Reach(), Database: n, State: PauseSent}
			i := slices.IndexFunc(kept, func(k PoolerPause) bool { return k.Pooler == p.Pooler && k.Database == n })
			switch {
			case i >= 0 && (kept[i].Ours() || kept[i].State == PauseOthers):
				p = kept[i]
			case paused[n]:
				p.State = PauseOthers
			}
			out = append(out, p)
		}
	}
	// What an earlier drain recorded on poolers not named now stays on
	// record: undrain must still resume it.
	for _, k := range kept {
		if !slices.ContainsFunc(out, func(p PoolerPause) bool { return p.Pooler == k.Pooler && p.Database == k.Database }) {
			out = append(out, k)
		}
	}
	return out, nil
}

// PauseOptions say how Pause pauses the poolers.
type PauseOptions struct {
	// Timeout: a pooler not paused by then has every pause rolled back.
	Timeout time.Duration
	// Grace is how long the transactions that hold PAUSE up get before
	// their backends are terminated, through the guard.
	Grace time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Record is called with every pause before PAUSE is sent, and again
	// at each change: drain writes its record there. An error before the
	// first PAUSE stops Pause with nothing sent; a later one rolls back.
	Record func([]PoolerPause) error
	// Step, when set, is told each change of a pause (paused, resumed,
	// not served).
	Step func(PoolerPause)
	// Ending, when set, is told of the holders about to be terminated.
	Ending func([]Holder)
	// Here tells this server from another: a name a PAUSE created (a `*`
	// entry serves any name) that points at another server is rolled
	// back (ErrOtherServer).
	Here *Here
}

// Holder is a server connection that holds a PAUSE up: the backend as the
// guard judged it, and the pooler's word on it.
type Holder struct {
	action.Result
	Link *pooler.Link
}

// Paused is what Pause did.
type Paused struct {
	// Pauses are every pause, in their last state.
	Pauses []PoolerPause
	// Ended are the holders terminated (or gone once chosen).
	Ended []Holder
	// Holders: when Pause gave up, the server connections that still held
	// it up, with what became of them.
	Holders []Holder
	// Unmatched: when Pause gave up, the server connections that still
	// held it up and that no session of the database matched (a backend
	// pgreap's role may not see, or the pooler's and the server's clocks
	// apart): named by the pooler only, never signalled.
	Unmatched []UnmatchedServer
	// NotResumed: after a rollback, the pauses that RESUME failed for;
	// they stay paused, and undrain resumes them.
	NotResumed []PoolerPause
	// Took is the time to paused: from the PAUSEs sent (their connections
	// open, the record written) to every pooler paused; 0 when Pause gave
	// up.
	Took time.Duration
}

// UnmatchedServer is a pooler's server connection that no session matched.
type UnmatchedServer struct {
	Pooler string
	pooler.Server
}

// ErrPauseTimeout: a pooler was not paused by the timeout; every pause of
// the drain was rolled back (Paused.NotResumed says which could not be).
var ErrPauseTimeout = errors.New("not paused by the timeout")

// Pause pauses database db on the poolers: every pause of pauses that is
// Ours is recorded (opt.Record), then PAUSE is sent to each on a
// connection of its own, all at once. A pause is done when PAUSE has
// returned and the pooler holds no server connection of the database.
// After opt.Grace the backends of the server connections that still hold
// it up are terminated, through the guard of package action (conn is
// pgreap's connection to the server, not to db). If a pause is not done by
// opt.Timeout, or anything fails, or ctx is cancelled, every pause of ours
// is rolled back (RESUME) and the error returned; the Paused returned says
// what was done either way.
func Pause(ctx context.Context, conn *pgx.Conn, admins []*pooler.Admin, db string, pauses []PoolerPause, opt PauseOptions) (*Paused, error) {
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	p := &Paused{Pauses: slices.Clone(pauses)}
	byName := map[string]*pooler.Admin{}
	for _, a := range admins {
		byName[a.Pooler.Name] = a
	}
	record := func() error {
		if opt.Record == nil {
			return nil
		}
		return opt.Record(slices.Clone(p.Pauses))
	}
	step := func(i int, state string) error {
		p.Pauses[i].State, p.Pauses[i].At = state, now().UTC()
		err := record()
		if opt.Step != nil {
			opt.Step(p.Pauses[i])
		}
		return err
	}
	// The PAUSEs' own connections first: one that cannot be opened stops
	// Pause before anything is sent.
	conns := map[int]*pooler.Admin{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i, s := range p.Pauses {
		if a := byName[s.Pooler]; s.Ours() && a != nil {
			c, err := a.Pooler.Connect(ctx)
			if err != nil {
				return p, err
			}
			conns[i] = c
		}
	}
	// Every PAUSE is on record before the first is sent.
	if err := record(); err != nil {
		return p, err
	}
	start := now()

	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, len(p.Pauses))
	var wg sync.WaitGroup
	cancels := map[int]context.CancelFunc{}
	defer func() {
		for _, c := range cancels {
			c()
		}
		wg.Wait()
	}()
	pending, answered := map[int]bool{}, map[int]bool{}
	for i, s := range p.Pauses {
		pa := conns[i]
		if pa == nil {
			// Not ours, or a pause of an earlier drain on a pooler not
			// named now: left as it is (undrain resumes the latter).
			continue
		}
		pending[i] = true
		pctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A connection of its own: PAUSE waits for the transactions
			// in flight, while Pause looks at who holds it up.
			err := pa.Pause(pctx, s.Database)
			if pctx.Err() != nil {
				err = nil // closed by Pause itself: see below
			}
			answers <- answer{i, err}
		}()
	}

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var failed error
	var lastEnd time.Time
	for len(pending) > 0 && failed == nil {
		select {
		case <-ctx.Done():
			failed = ctx.Err()
			continue
		case an := <-answers:
			switch {
			case an.err == nil:
				answered[an.i] = true
			case errors.Is(an.err, pooler.ErrNoDatabase) && pending[an.i]:
				// No such name and no `*` entry: the pooler does not
				// serve db so, and nothing was paused.
				delete(pending, an.i)
				if err := step(an.i, PauseNotServed); err != nil {
					failed = err
				}
				continue
			case pending[an.i]:
				failed = an.err
				var pgErr *pgconn.PgError
				if errors.As(an.err, &pgErr) {
					// The console answered: it paused nothing.
					delete(pending, an.i)
					if err := step(an.i, PauseRefused); err != nil {
						failed = errors.Join(failed, err)
					}
				}
				continue
			}
		case <-tick.C:
		}
		done, err := p.settle(ctx, byName, pending, answered, opt.Here, db)
		if err != nil {
			failed = err
			continue
		}
		if len(done) == len(pending) {
			p.Took = now().Sub(start) // paused: what follows is bookkeeping
		}
		for _, i := range done {
			delete(pending, i)
			// PgBouncer 1.18 answers a PAUSE only once every paused
			// database of the pooler is quiet, others' too; and when it
			// answers while the paused databases it counts are none (an
			// auto-database gone idle is not counted), it dies
			// (admin_pause_done: bad state). So a pause that is done
			// does not wait for its answer: its connection is closed,
			// and the pooler keeps the pause.
			cancels[i]()
			if err := step(i, PauseDone); err != nil {
				failed = err
			}
		}
		if len(pending) == 0 || failed != nil {
			continue
		}
		elapsed := now().Sub(start)
		if elapsed >= opt.Timeout {
			failed = ErrPauseTimeout
			continue
		}
		if elapsed >= opt.Grace && now().Sub(lastEnd) >= time.Second {
			// The transactions in flight had their grace: their backends
			// are ended, so that PAUSE can complete.
			lastEnd = now()
			holders, err := p.holders(ctx, conn, byName, pending, db)
			if err != nil {
				failed = err
				continue
			}
			ended, err := endHolders(ctx, conn, holders, min(opt.Timeout-elapsed, 5*time.Second), opt.Ending)
			p.Ended = append(p.Ended, ended...)
			if err != nil {
				failed = err
			}
		}
	}
	if failed == nil {
		return p, nil
	}
	// Closing the pending PAUSEs' connections does not lift their pauses
	// (the pooler keeps them): RESUME does.
	for _, c := range cancels {
		c()
	}
	wg.Wait()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if errors.Is(failed, ErrPauseTimeout) {
		if hs, err := p.holders(rctx, conn, byName, pending, db); err == nil {
			p.Holders = judged(hs, p.Ended)
		}
		for i := range pending {
			s := p.Pauses[i]
			servers, err := byName[s.Pooler].Servers(rctx)
			if err != nil {
				continue
			}
			for _, sv := range servers {
				if sv.Database == s.Database && !slices.ContainsFunc(p.Holders, func(h Holder) bool { return h.Link.Pooler == s.Pooler && h.PID == sv.RemotePID }) {
					p.Unmatched = append(p.Unmatched, UnmatchedServer{Pooler: s.Pooler, Server: sv})
				}
			}
		}
	}
	before := slices.Clone(p.Pauses)
	p.Pauses, _ = Resume(rctx, byName, p.Pauses, now().UTC(), opt.Record)
	for i, s := range p.Pauses {
		switch {
		case s.Ours():
			p.NotResumed = append(p.NotResumed, s)
		case s.State != before[i].State && opt.Step != nil:
			opt.Step(s)
		}
	}
	return p, failed
}

// settle returns the pending pauses that are done: the pooler says the
// database is paused and holds no server connection of it any more.
// Whether PAUSE has answered does not tell (see Pause), except for an
// auto-database (a `*` entry's) that went idle: SHOW DATABASES leaves it
// out.
func (p *Paused) settle(ctx context.Context, byName map[string]*pooler.Admin, pending, answered map[int]bool, here *Here, db string) ([]int, error) {
	type state struct {
		dbs     []pooler.Database
		servers []pooler.Server
	}
	looked := map[string]*state{}
	var done []int
	for i := range pending {
		s := p.Pauses[i]
		a := byName[s.Pooler]
		st := looked[s.Pooler]
		if st == nil {
			st = &state{}
			var err error
			if st.dbs, err = a.Databases(ctx); err != nil {
				return nil, err
			}
			if st.servers, err = a.Servers(ctx); err != nil {
				return nil, err
			}
			looked[s.Pooler] = st
		}
		if slices.ContainsFunc(st.servers, func(sv pooler.Server) bool { return sv.Database == s.Database }) {
			continue
		}
		k := slices.IndexFunc(st.dbs, func(d pooler.Database) bool { return d.Name == s.Database })
		if k >= 0 {
			// A name only a `*` entry served was checked by no one
			// before its PAUSE created it: its server is known now.
			if err := here.check(a, st.dbs[k], db); err != nil {
				return nil, err
			}
		}
		switch {
		case k >= 0 && st.dbs[k].Paused:
		case k >= 0:
			continue // PAUSE not there yet
		case !answered[i] && !pausedIdle(ctx, a.Pooler, s.Database):
			continue
		}
		done = append(done, i)
	}
	slices.Sort(done)
	return done, nil
}

// pausedIdle sends PAUSE again for a database SHOW DATABASES does not list
// (an idle auto-database, with no server connection to wait for): it
// answers at once when the database is paused, and lists it again.
func pausedIdle(ctx context.Context, p *pooler.Pooler, db string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	a, err := p.Connect(ctx)
	if err != nil {
		return false
	}
	defer a.Close()
	return a.Pause(ctx, db) == nil
}

// holders are the backends of the server connections that the poolers of
// the pending pauses still hold to database db, judged by the guard as a
// terminate would be.
func (p *Paused) holders(ctx context.Context, conn *pgx.Conn, byName map[string]*pooler.Admin, pending map[int]bool, db string) ([]Holder, error) {
	var admins []*pooler.Admin
	for i := range pending {
		if a := byName[p.Pauses[i].Pooler]; !slices.Contains(admins, a) {
			admins = append(admins, a)
		}
	}
	return Holders(ctx, conn, admins, db)
}

// Holders are the backends of database db that are server connections of
// the poolers (all of them, served or idle), judged by the guard as a
// terminate would judge them, without a signal.
func Holders(ctx context.Context, conn *pgx.Conn, admins []*pooler.Admin, db string) ([]Holder, error) {
	if len(admins) == 0 {
		return nil, nil
	}
	look, err := pooler.Take(ctx, admins)
	if err != nil {
		return nil, err
	}
	plan, err := action.Choose(ctx, conn, action.Request{Action: action.Terminate, Selector: &selector.Selector{DB: []string{db}}})
	if err != nil {
		return nil, err
	}
	var hs []Holder
	for _, r := range plan.Results {
		// Its pid, database and start name the pooler's connection: a
		// pid alone could be another server's behind the same pooler.
		if k := look.Find(r.PID, int(r.ClientPort), r.BackendStart, r.Datname); k != nil {
			hs = append(hs, Holder{Result: r, Link: k})
		}
	}
	return hs, nil
}

// endHolders terminates the holders' backends through the guard, which
// re-checks each one's identity (and database) as it signals.
func endHolders(ctx context.Context, conn *pgx.Conn, hs []Holder, wait time.Duration, told func([]Holder)) ([]Holder, error) {
	if len(hs) == 0 {
		return nil, nil
	}
	if told != nil {
		told(hs)
	}
	plan, err := action.Choose(ctx, conn, action.Request{Action: action.Terminate, Selector: &selector.Selector{DB: []string{hs[0].Datname}},
		PIDs: pids(hs)})
	if err != nil {
		return nil, err
	}
	// Only the sessions seen as holders: a pid reused since is another
	// backend, and the guard's statement refuses it (changed).
	byPID := map[int32]*Holder{}
	for i := range hs {
		byPID[hs[i].PID] = &hs[i]
	}
	keep := plan.Results[:0]
	for _, r := range plan.Results {
		if h := byPID[r.PID]; h != nil && r.BackendStart.Equal(h.BackendStart) {
			keep = append(keep, r)
		}
	}
	plan.Results = keep
	results, err := action.Execute(ctx, conn, plan, action.Options{Wait: max(wait, 100*time.Millisecond)})
	var ended []Holder
	for _, r := range results {
		h := byPID[r.PID]
		h.Result = r
		if r.Outcome == action.Terminated || r.Outcome == action.Gone {
			ended = append(ended, *h)
		}
	}
	return ended, err
}

func pids(hs []Holder) []int32 {
	out := make([]int32, len(hs))
	for i := range hs {
		out[i] = hs[i].PID
	}
	return out
}

// judged gives the holders still there the outcome their last end had
// (denied, survived, ...), when they had one.
func judged(hs, ended []Holder) []Holder {
	for i := range hs {
		for _, e := range ended {
			if e.PID == hs[i].PID && e.BackendStart.Equal(hs[i].BackendStart) {
				hs[i].Outcome, hs[i].Detail = e.Outcome, e.Detail
			}
		}
	}
	return hs
}

// Resume lifts the drain's own pauses (Ours) on the poolers; a database
// the pooler says is not paused counts as resumed. It returns the pauses
// in their new states, and the first error; done, when set, is told of
// each pause resumed (to record it).
func Resume(ctx context.Context, admins map[string]*pooler.Admin, pauses []PoolerPause, now time.Time, done func([]PoolerPause) error) ([]PoolerPause, error) {
	out := slices.Clone(pauses)
	var first error
	for i, s := range out {
		if !s.Ours() {
			continue
		}
		a := admins[s.Pooler]
		if a == nil {
			first = cmpErr(first, fmt.Errorf("pgbouncer %s: not connected", s.Pooler))
			continue
		}
		err := a.Resume(ctx, s.Database)
		switch {
		case errors.Is(err, pooler.ErrNoDatabase):
			// Not a name the pooler has (any more): nothing is paused
			// under it, and nothing was resumed.
			out[i].State, out[i].At = PauseNotServed, now
		case err != nil && !errors.Is(err, pooler.ErrNotPaused):
			first = cmpErr(first, err)
			continue
		default:
			out[i].State, out[i].At = PauseResumed, now
		}
		if done != nil {
			if err := done(slices.Clone(out)); err != nil {
				first = cmpErr(first, err)
			}
		}
	}
	return out, first
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// ResumeRecorded resumes the drain's own pauses (Ours) as undrain does:
// each pooler reached by the connection string given for it (by name,
// with its password), else as the record says (Reach). It returns the
// pauses in their new states and the first error (a pooler it could not
// reach stays paused); done, when set, is told of each pause resumed.
func ResumeRecorded(ctx context.Context, pauses []PoolerPause, given []*pooler.Pooler, now time.Time, done func([]PoolerPause) error) ([]PoolerPause, error) {
	if err := CheckPauses(pauses); err != nil {
		return pauses, err
	}
	byName := map[string]*pooler.Pooler{}
	for _, p := range given {
		byName[p.Name] = p
	}
	admins := map[string]*pooler.Admin{}
	defer func() {
		for _, a := range admins {
			a.Close()
		}
	}()
	var first error
	for _, s := range pauses {
		if !s.Ours() || admins[s.Pooler] != nil {
			continue
		}
		p := byName[s.Pooler]
		if p == nil {
			var err error
			if p, err = pooler.Parse(s.Reach); err != nil {
				first = cmpErr(first, fmt.Errorf("pgbouncer %s as recorded: %w", s.Pooler, err))
				continue
			}
		}
		a, err := p.Connect(ctx)
		if err != nil {
			first = cmpErr(first, err)
			continue
		}
		admins[s.Pooler] = a
	}
	out, err := Resume(ctx, admins, pauses, now, done)
	return out, cmpErr(first, err)
}
