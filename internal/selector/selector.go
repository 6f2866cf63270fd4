package selector

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/activity"
)

// Spec is a selection as the user wrote it: the flags of ls, cancel,
// terminate and kick, or the `match` of a policy rule. Parse checks it.
type Spec struct {
	DB             []string `yaml:"db" json:"db,omitempty"`
	User           []string `yaml:"user" json:"user,omitempty"`
	App            []string `yaml:"app" json:"app,omitempty"`
	Client         []string `yaml:"client" json:"client,omitempty"`
	State          []string `yaml:"state" json:"state,omitempty"`
	BackendType    []string `yaml:"backend_type" json:"backend_type,omitempty"`
	ExcludeDB      []string `yaml:"exclude_db" json:"exclude_db,omitempty"`
	ExcludeUser    []string `yaml:"exclude_user" json:"exclude_user,omitempty"`
	ExcludeApp     []string `yaml:"exclude_app" json:"exclude_app,omitempty"`
	Query          string   `yaml:"query" json:"query,omitempty"`
	LongerThan     string   `yaml:"longer_than" json:"longer_than,omitempty"`
	XactLongerThan string   `yaml:"xact_longer_than" json:"xact_longer_than,omitempty"`
	Waiting        bool     `yaml:"waiting" json:"waiting,omitempty"`
	Blocking       bool     `yaml:"blocking" json:"blocking,omitempty"`
	BlockingReplay bool     `yaml:"blocking_replay" json:"blocking_replay,omitempty"`
	// BlockingLongerThan: the session blocks, directly or through others,
	// a session that has waited on a lock longer than this. Unblock's
	// choice of roots, recorded in its plans; in a policy, the daemon acts
	// on the roots only (maintenance.MarkRoots), at the instant the oldest
	// wait behind one crosses it.
	BlockingLongerThan string `yaml:"blocking_longer_than" json:"blocking_longer_than,omitempty"`
	// LockConflict: the session holds or awaits a lock that conflicts
	// with a mode on given objects (clear, exec), recorded in their plans.
	// Not a policy key.
	LockConflict *LockConflict `yaml:"-" json:"lock_conflict,omitempty"`
}

// Selector is a checked selection. Everything but Query is decided by the
// server (Compile); Query is a regular expression on the query text, decided
// in Go on the snapshot (Keep).
type Selector struct {
	DB, User, App, BackendType         []string // globs
	ExcludeDB, ExcludeUser, ExcludeApp []string // globs
	State                              []string // globs over state names
	Client                             []netip.Prefix
	Query                              *regexp.Regexp
	LongerThan, XactLongerThan         time.Duration
	Waiting, Blocking                  bool
	// BlockingReplay: on a hot standby, holds a lock WAL replay waits for.
	BlockingReplay bool
	// BlockingLongerThan: blocks, directly or through others, a session
	// waiting on a lock longer than this (pg_locks.waitstart on 14+, the
	// waiter's statement's age before).
	BlockingLongerThan time.Duration
	// BlockingOf: blocks one of these backends (by pid) directly. For
	// unblock's later rounds; not part of a Spec, never in a plan.
	BlockingOf []int32
	// BlockingWaiters narrows BlockingLongerThan's check in a signalling
	// statement (CompileEach) to the waits a snapshot saw behind each
	// session signalled: by its pid, the backends (pids) that waited
	// behind it. pg_blocking_pids reads the whole lock table at each call;
	// without it, the check asks it of every wait older than D in the
	// server, hundreds in a big pile-up, for every session signalled, and
	// with one list for all of them, of every waiter of the statement's
	// sessions for each. Not part of a Spec, never in a plan.
	BlockingWaiters map[int32][]int32
	// LockConflict: holds or awaits a lock on one of its objects that
	// conflicts with its mode.
	LockConflict *LockConflict

	// pooled: the poolers in front of the server, asked just before the
	// snapshot (WithPooled); user, app and client then judge a pooler's
	// server connection by the client it serves.
	pooled *activity.Pooled
}

// WithPooled is the selection judging the server connections of poolers by
// the client each serves, as the poolers said (p): --user, --app, --client
// and their exclusions match the pooled client's user, application_name
// and address where there is one, the backend's own values otherwise (a
// direct client, a server connection idle in the pool). A server
// connection whose state changed after the poolers were asked may serve
// another client by now: such a selection does not choose it. Nil p: the
// selection itself.
func (s *Selector) WithPooled(p *activity.Pooled) *Selector {
	if p == nil {
		return s
	}
	n := *s
	n.pooled = p
	return &n
}

// Pooled is what WithPooled gave; nil without poolers.
func (s *Selector) Pooled() *activity.Pooled {
	if s == nil {
		return nil
	}
	return s.pooled
}

// Empty reports whether the selection chooses by nothing: it would keep
// every session.
func (s *Selector) Empty() bool {
	n := *s
	n.pooled = nil
	return reflect.ValueOf(n).IsZero()
}

// ByPooledClient reports whether the selection judges a pooler's server
// connections by the client each serves (WithPooled, and a selection on
// user, app or client). That client changes between transactions while
// the backend stays: an action's guard must pin the query of a session so
// chosen, and the signalling statement read it afresh.
func (s *Selector) ByPooledClient() bool {
	return s.pooled != nil && len(s.User)+len(s.App)+len(s.Client)+len(s.ExcludeUser)+len(s.ExcludeApp) > 0
}

// Error is a selection that cannot be used. Field is the policy key
// (longer_than); a command line shows it as its flag (--longer-than).
type Error struct {
	Field  string
	Value  string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %q: %s", e.Field, e.Value, e.Reason)
}

// Flag is the command-line flag of the field.
func (e *Error) Flag() string { return "--" + strings.ReplaceAll(e.Field, "_", "-") }

// States are pg_stat_activity's state names.
var States = []string{
	"active",
	"idle",
	"idle in transaction",
	"idle in transaction (aborted)",
	"fastpath function call",
	"disabled",
}

// Running are the states of a session that runs a query, the only ones a
// cancel can act on: an idle session, in a transaction or not, has no query
// to cancel.
var Running = []string{"active", "fastpath function call"}

// OnlyRunning is the selection narrowed to sessions that run a query (a
// state of Running), what a selection to cancel means; false when its
// states allow none of them (state idle never runs a query).
func (s *Selector) OnlyRunning() (*Selector, bool) {
	var states []string
	for _, st := range Running {
		if len(s.State) == 0 || slices.ContainsFunc(s.State, func(g string) bool { return globRegexp(g).MatchString(st) }) {
			states = append(states, st)
		}
	}
	if len(states) == 0 {
		return nil, false
	}
	n := *s
	n.State = states
	return &n, true
}

// Parse checks a Spec and turns it into a Selector.
func Parse(spec Spec) (*Selector, error) {
	s := &Selector{
		Waiting:        spec.Waiting,
		Blocking:       spec.Blocking,
		BlockingReplay: spec.BlockingReplay,
	}
	var err error
	lists := []struct {
		field string
		in    []string
		out   *[]string
	}{
		{"db", spec.DB, &s.DB},
		{"user", spec.User, &s.User},
		{"app", spec.App, &s.App},
		{"backend_type", spec.BackendType, &s.BackendType},
		{"exclude_db", spec.ExcludeDB, &s.ExcludeDB},
		{"exclude_user", spec.ExcludeUser, &s.ExcludeUser},
		{"exclude_app", spec.ExcludeApp, &s.ExcludeApp},
	}
	for _, l := range lists {
		for _, v := range l.in {
			if v == "" && l.field != "app" && l.field != "exclude_app" {
				return nil, &Error{l.field, v, "empty"}
			}
			if err := textValue(v); err != "" {
				return nil, &Error{l.field, v, err}
			}
			*l.out = append(*l.out, v)
		}
	}
	if err := textValue(spec.Query); err != "" {
		return nil, &Error{"query", spec.Query, err}
	}
	for _, v := range spec.State {
		if err := textValue(v); err != "" {
			return nil, &Error{"state", v, err} // and no regexp of it
		}
		// Accept idle_in_transaction for "idle in transaction": the names
		// have spaces that are awkward in a shell and in YAML keys.
		st := strings.ReplaceAll(strings.TrimSpace(v), "_", " ")
		if !slices.ContainsFunc(States, globRegexp(st).MatchString) {
			return nil, &Error{"state", v, "not a pg_stat_activity state (" + strings.Join(States, ", ") + ")"}
		}
		s.State = append(s.State, st)
	}
	for _, v := range spec.Client {
		p, err := parseClient(v)
		if err != nil {
			return nil, &Error{"client", v, err.Error()}
		}
		s.Client = append(s.Client, p)
	}
	if spec.Query != "" {
		if s.Query, err = regexp.Compile(spec.Query); err != nil {
			return nil, &Error{"query", spec.Query, "not a regular expression (RE2): " + strings.TrimPrefix(err.Error(), "error parsing regexp: ")}
		}
	}
	for i := range timedSelectors {
		t := &timedSelectors[i]
		if *t.dur(s), err = parseDuration(t.field, *t.spec(&spec)); err != nil {
			return nil, err
		}
	}
	if l := spec.LockConflict; l != nil {
		if why := l.check(); why != "" {
			return nil, &Error{"lock_conflict", l.Mode, why}
		}
		s.LockConflict = l.clone()
	}
	return s, nil
}

// Spec is the selection written back as a Spec: Parse(s.Spec()) selects
// exactly what s does, but for BlockingOf, which a Spec does not hold.
// Plans record their selection this way.
func (s *Selector) Spec() Spec {
	sp := Spec{
		DB: slices.Clone(s.DB), User: slices.Clone(s.User), App: slices.Clone(s.App),
		State: slices.Clone(s.State), BackendType: slices.Clone(s.BackendType),
		ExcludeDB: slices.Clone(s.ExcludeDB), ExcludeUser: slices.Clone(s.ExcludeUser), ExcludeApp: slices.Clone(s.ExcludeApp),
		Waiting: s.Waiting, Blocking: s.Blocking, BlockingReplay: s.BlockingReplay,
		LockConflict: s.LockConflict.clone(),
	}
	for i := range timedSelectors {
		*timedSelectors[i].spec(&sp) = duration(*timedSelectors[i].dur(s))
	}
	for _, p := range s.Client {
		sp.Client = append(sp.Client, p.String())
	}
	if s.Query != nil {
		sp.Query = s.Query.String()
	}
	return sp
}

func duration(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// textValue says why v cannot be a text value for the server, or "": a
// NUL byte or invalid UTF-8 would be refused by it as an SQL error, late;
// here it is bad input, said at once.
func textValue(v string) string {
	switch {
	case strings.IndexByte(v, 0) >= 0:
		return "contains a NUL byte"
	case !utf8.ValidString(v):
		return "not valid UTF-8"
	}
	return ""
}

func parseClient(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not an address or CIDR (e.g. 10.0.0.0/8, 192.0.2.7, ::1)")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or CIDR (e.g. 10.0.0.0/8, 192.0.2.7, ::1)")
	}
	return netip.PrefixFrom(a.WithZone(""), a.BitLen()), nil
}

func parseDuration(field, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, &Error{field, v, "not a duration (Go syntax: 90s, 5m, 1h30m)"}
	}
	if d <= 0 {
		return 0, &Error{field, v, "must be more than zero"}
	}
	return d, nil
}

// Keep reports whether a session of the snapshot passes the part of the
// selection that is decided in Go: the query regular expression. The server
// decides the rest in Compile's predicate.
//
// The regular expression is matched against the text the snapshot saw. It
// is safe to act on the result only because an action's guard repeats the
// session's query_start: if the backend moved on to another statement since,
// the guard no longer matches and the session is reported changed.
func (s *Selector) Keep(sess *activity.Session) bool {
	return s.Query == nil || s.Query.MatchString(sess.Query)
}

// KeepPrepared reports whether a prepared transaction (a row of
// activity.Snapshot.Prepared) is within the selection. It has a database,
// an owner and a backend_type ("prepared transaction"), and nothing else a
// selector asks about: no application, client, state, query or lock wait
// of its own; a selection on any of those leaves it out.
func (s *Selector) KeepPrepared(p *activity.Session) bool {
	if len(s.App) > 0 || len(s.State) > 0 || len(s.Client) > 0 || s.Query != nil ||
		s.isTimed() || s.Waiting || s.Blocking || s.BlockingReplay || len(s.BlockingOf) > 0 ||
		s.LockConflict != nil { // its locks are not in its row: the caller looks at them
		return false
	}
	match := func(globs []string, v string) bool {
		return slices.ContainsFunc(globs, func(g string) bool { return globRegexp(g).MatchString(v) })
	}
	return (len(s.DB) == 0 || match(s.DB, p.Datname)) && !match(s.ExcludeDB, p.Datname) &&
		(len(s.User) == 0 || match(s.User, p.Usename)) && !match(s.ExcludeUser, p.Usename) &&
		(len(s.BackendType) == 0 || match(s.BackendType, p.BackendType))
}

// Take takes a snapshot of the sessions the selection keeps (a nil
// selection: every client session): the server applies Compile's
// predicate, then Keep the query expression. It is the one way to a
// selected snapshot, so that no caller can forget --query.
func (s *Selector) Take(ctx context.Context, conn *pgx.Conn) (*activity.Snapshot, error) {
	if s == nil {
		s = &Selector{}
	}
	where, args := s.Compile("a", 1)
	snap, err := activity.Take(ctx, conn, activity.Filter{Where: where, Args: args})
	if err != nil {
		return nil, err
	}
	s.pooled.Attach(snap)
	if s.Query != nil {
		kept := snap.Sessions[:0]
		for i := range snap.Sessions {
			if s.Keep(&snap.Sessions[i]) {
				kept = append(kept, snap.Sessions[i])
			}
		}
		snap.Sessions = kept
	}
	return snap, nil
}

// PinsQuery reports whether the selection depends on what a session runs,
// or since when: an action's guard must then pin its query (query_start
// and state_change), so a session that moved on since it was chosen is
// left alone.
func (s *Selector) PinsQuery() bool {
	return s.Query != nil || len(s.State) > 0 || s.isTimed() ||
		s.Waiting || s.Blocking || s.BlockingReplay || len(s.BlockingOf) > 0
}

// Moves reports whether the selection depends on facts that change during
// a session's life: what it runs, its lock waits, its application_name
// (SET application_name). The signalling statement then reads each session
// afresh at its own signal; a selection on database, user, client or
// backend type holds for a backend's whole life.
func (s *Selector) Moves() bool {
	return s.PinsQuery() || len(s.App) > 0 || len(s.ExcludeApp) > 0 || s.ByPooledClient() || s.LockConflict != nil
}

// Compile turns the selection into one SQL boolean expression over the
// pg_stat_activity row aliased alias, with parameters numbered from $first.
// Values are always bound, never spliced into the text. The query regular
// expression is not part of it (see Keep). The lock predicates look at the
// lock table once for the whole statement: right for a snapshot, where
// every row should see the same moment.
func (s *Selector) Compile(alias string, first int) (string, []any) {
	return s.compile(compiler{alias: alias, next: first})
}

// CompileEach is Compile for a statement that judges one session at a time
// at the instant of its signal (the action statement): the lock predicates
// look at the lock table for that session, at that instant, instead of once
// for the statement.
func (s *Selector) CompileEach(alias string, first int) (string, []any) {
	return s.compile(compiler{alias: alias, next: first, each: true})
}

func (s *Selector) compile(c compiler) (string, []any) {
	alias := c.alias
	if s.pooled != nil {
		c.facts = s.pooled.Facts()
	}
	c.anyLike("datname", s.DB, false)
	c.anyLike("usename", s.User, false)
	c.anyLike("application_name", s.App, false)
	c.anyLike("backend_type", s.BackendType, false)
	c.anyLike("state", s.State, false)
	c.anyLike("datname", s.ExcludeDB, true)
	c.anyLike("usename", s.ExcludeUser, true)
	c.anyLike("application_name", s.ExcludeApp, true)
	if len(s.Client) > 0 {
		cidrs := make([]string, len(s.Client))
		for i, p := range s.Client {
			cidrs[i] = p.String()
		}
		arg := c.arg(cidrs)
		c.add(c.client("client_addr", func(col string) string { return fmt.Sprintf("%s <<= ANY (%s::inet[])", col, arg) }))
	}
	for i := range timedSelectors {
		if d := *timedSelectors[i].dur(s); d > 0 {
			c.timed(&timedSelectors[i], d)
		}
	}
	switch {
	case s.Waiting && c.each:
		// pg_locks is read once for a statement, however often a row asks
		// (its function takes no argument to tell one call from the next);
		// pg_blocking_pids looks at the lock table at each call.
		c.add(fmt.Sprintf("pg_catalog.cardinality(pg_catalog.pg_blocking_pids(%s.pid)) > 0", alias))
	case s.Waiting:
		// A lock not granted: wait_event_type = 'Lock' blinks off every
		// deadlock_timeout, while the waiter checks for a deadlock.
		c.add(fmt.Sprintf("%s.pid IN (SELECT l.pid FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)", alias))
	}
	switch {
	case s.Blocking && c.each:
		// The waiters as pg_locks showed them when the statement began;
		// whom each waits for, as the lock table is at this session's
		// signal.
		c.add(fmt.Sprintf("EXISTS (SELECT FROM pg_catalog.pg_locks AS l WHERE NOT l.granted AND %s.pid = ANY (pg_catalog.pg_blocking_pids(l.pid)))", alias))
	case s.Blocking:
		// Uncorrelated, so the server computes the set of blockers once
		// for the statement, not once per row.
		c.add(fmt.Sprintf("%s.pid IN (SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(l.pid)) FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)", alias))
	}
	if s.BlockingReplay {
		// Uncorrelated: the startup process's wait and its blockers,
		// found once for the statement (pg_locks is read once for a
		// statement in any case).
		c.add(fmt.Sprintf("%s.pid IN (%s)", alias, activity.ReplayBlockersSQL))
	}
	switch {
	case len(s.BlockingOf) > 0 && c.each:
		c.add(fmt.Sprintf("EXISTS (SELECT FROM pg_catalog.unnest(%s::integer[]) AS w(pid) WHERE %s.pid = ANY (pg_catalog.pg_blocking_pids(w.pid)))",
			c.arg(s.BlockingOf), alias))
	case len(s.BlockingOf) > 0:
		c.add(fmt.Sprintf("%s.pid IN (SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) FROM pg_catalog.unnest(%s::integer[]) AS w(pid))",
			alias, c.arg(s.BlockingOf)))
	}
	if s.LockConflict != nil {
		c.lockConflict(s.LockConflict)
	}
	// How long a wait has lasted: pg_locks.waitstart (14+, read through
	// to_jsonb so one statement fits every version); before 14, and for the
	// moment after a wait starts, the statement's age stands for it.
	const since = "coalesce((pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz, w.query_start)"
	switch {
	case s.BlockingLongerThan > 0 && c.each:
		// Up the wait graph from every wait older than D (as pg_locks
		// showed them when the statement began), with whom each waits for
		// read at this session's signal: does it hold one up, directly or
		// through others? Only the old waits (those BlockingWaiters names
		// behind this session, when given) and those above them are
		// asked: pg_blocking_pids reads the whole lock table at each call.
		waiters := "true"
		if len(s.BlockingWaiters) > 0 {
			var roots, pids []int32
			for _, root := range slices.Sorted(maps.Keys(s.BlockingWaiters)) {
				for _, pid := range s.BlockingWaiters[root] {
					roots, pids = append(roots, root), append(pids, pid)
				}
			}
			waiters = fmt.Sprintf(`EXISTS (SELECT FROM ROWS FROM (pg_catalog.unnest(%s::integer[]), pg_catalog.unnest(%s::integer[])) AS bw(root, pid)
                                          WHERE bw.root = %s.pid AND bw.pid = l.pid)`, c.arg(roots), c.arg(pids), alias)
		}
		// The waits named are kept first (OFFSET 0: before the age of
		// every wait in the server is read as JSON), and each is looked
		// up alone in the backends' status, not joined with all of them.
		c.add(fmt.Sprintf(`EXISTS (WITH RECURSIVE long AS (
                 SELECT l.pid
                   FROM (SELECT l.*
                           FROM pg_catalog.pg_locks AS l
                          WHERE NOT l.granted AND l.pid IS NOT NULL AND %[4]s
                            AND %[1]s.pid IS NOT NULL -- for this session: read again for the next
                         OFFSET 0) AS l
                   LEFT JOIN LATERAL pg_catalog.pg_stat_get_activity(l.pid) AS w ON true
                  WHERE %[3]s < pg_catalog.statement_timestamp() - %[2]s::interval
               ), up(pid) AS (
                 SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(long.pid)) FROM long
                 UNION
                 SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(up.pid)) FROM up WHERE up.pid <> %[1]s.pid
               )
               SELECT FROM up WHERE up.pid = %[1]s.pid)`,
			alias, c.arg(interval(s.BlockingLongerThan)), since, waiters))
	case s.BlockingLongerThan > 0:
		// Up the wait graph from every wait older than D: the sessions
		// that hold it up, directly or through others.
		c.add(fmt.Sprintf(`%[1]s.pid IN (WITH RECURSIVE long AS (
                 SELECT l.pid
                   FROM pg_catalog.pg_locks AS l
                   LEFT JOIN pg_catalog.pg_stat_activity AS w ON w.pid = l.pid
                  WHERE NOT l.granted
                    AND %[3]s < pg_catalog.statement_timestamp() - %[2]s::interval
               ), up(pid) AS (
                 SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(long.pid)) FROM long
                 UNION
                 SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(up.pid)) FROM up
               )
               SELECT up.pid FROM up)`, alias, c.arg(interval(s.BlockingLongerThan)), since))
	}
	if len(c.terms) == 0 {
		return "true", nil
	}
	return strings.Join(c.terms, "\n   AND "), c.args
}

func interval(d time.Duration) pgtype.Interval {
	return pgtype.Interval{Microseconds: d.Microseconds(), Valid: true}
}

type compiler struct {
	alias string
	next  int
	each  bool // one session at a time (CompileEach)
	terms []string
	args  []any

	// facts: the poolers' server connections and the clients they serve
	// (WithPooled), bound once as arrays (links) when a term needs them.
	facts activity.Facts
	links string
	asked string
}

// pooledColumns are the columns of the pooled facts' rows, named as
// pg_stat_activity's.
var pooledColumns = map[string]bool{"usename": true, "application_name": true, "client_addr": true}

// client is the term over one of the client's facts (column): term(expr)
// is the boolean over an expression of it. Without poolers, the backend's
// column. With them, a server connection of a pooler is judged by the
// client it serves (its row in the bound arrays), or by its own column if
// it serves none; and a backend whose state changed after the poolers were
// asked is not known to serve that client: the term is false for it,
// whether it includes or excludes, so that no one is chosen, nor let
// through an exclusion, by another client's facts. Nor is a backend they
// did not name whose state began after they were asked: a pooler may have
// opened it since (or it was still logging in when they were asked), for
// a client we know nothing of.
func (c *compiler) client(column string, term func(col string) string) string {
	own := term(c.alias + "." + column)
	if c.facts.Asked.IsZero() || !pooledColumns[column] {
		return own
	}
	if c.links == "" {
		f := c.facts
		c.links = fmt.Sprintf(`ROWS FROM (pg_catalog.unnest(%s::integer[]), pg_catalog.unnest(%s::timestamptz[]),
                       pg_catalog.unnest(%s::boolean[]), pg_catalog.unnest(%s::inet[]),
                       pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]))
             AS p(pid, backend_start, served, client_addr, application_name, usename)`,
			c.arg(f.PIDs), c.arg(f.Starts), c.arg(f.Served), c.arg(f.Addrs), c.arg(f.Apps), c.arg(f.Users))
		c.asked = c.arg(f.Asked)
	}
	return fmt.Sprintf(`coalesce((SELECT CASE -- a state begun after the poolers were asked: maybe another client's
                        WHEN NOT coalesce(%[1]s.state_change <= %[2]s::timestamptz, false) THEN false
                        WHEN p.served THEN coalesce(%[3]s, false)
                        ELSE coalesce(%[4]s, false) END
             FROM %[5]s
            -- pids are reused: (pid, backend_start) names the backend the pooler named
            WHERE p.pid = %[1]s.pid AND p.backend_start = %[1]s.backend_start),
           -- not a server connection the poolers named: a direct client, or one
           -- a pooler opened after it was asked (or was still logging in then),
           -- serving a client unknown to us: only one whose state began before
           -- the poolers were asked is judged by its own facts
           CASE WHEN NOT coalesce(%[1]s.state_change <= %[2]s::timestamptz AND %[1]s.backend_start <= %[2]s::timestamptz, false)
                THEN false ELSE %[4]s END)`,
		c.alias, c.asked, term("p."+column), own, c.links)
}

func (c *compiler) arg(v any) string {
	c.args = append(c.args, v)
	c.next++
	return "$" + strconv.Itoa(c.next-1)
}

func (c *compiler) add(term string) { c.terms = append(c.terms, term) }

func (c *compiler) anyLike(column string, globs []string, exclude bool) {
	if len(globs) == 0 {
		return
	}
	patterns := make([]string, len(globs))
	for i, g := range globs {
		patterns[i] = likePattern(g)
	}
	arg := c.arg(patterns)
	c.add(c.client(column, func(col string) string {
		term := fmt.Sprintf("%s LIKE ANY (%s::text[])", col, arg)
		if exclude {
			// A NULL column (a row we may not see) is not excluded by a name.
			term = "(" + term + ") IS NOT TRUE"
		}
		return term
	}))
}

// likePattern turns a glob, where only * is special, into a LIKE pattern
// with the default escape character.
func likePattern(glob string) string {
	var b strings.Builder
	for _, r := range glob {
		switch r {
		case '*':
			b.WriteByte('%')
		case '%', '_', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// globRegexp matches a whole string against a glob where only * is special.
func globRegexp(glob string) *regexp.Regexp {
	parts := strings.Split(glob, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile(`(?s)^` + strings.Join(parts, ".*") + "$")
}
