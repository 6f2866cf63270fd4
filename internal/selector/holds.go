package selector

import (
	"net/netip"
	"slices"

	"github.com/pgreap/pgreap/internal/activity"
)

// Holds is Compile's predicate decided in Go, on a session of a snapshot
// taken before (an `ls -o json` file): what the server would have said of
// it when the snapshot was taken, with the durations measured at
// snap.Taken. `watch --test` marks sessions with it where the daemon has
// the server mark them; Keep (the query expression) is apart, as for the
// server's predicate. Each selector is one term below: a new selector is
// one more term here and one in compile, and the test that runs the
// daemon and --test on the same sessions holds them together.
//
// What a snapshot does not carry is read from what it does: a session
// waits when it is blocked by someone (blocked_by, blocked_by_prepared),
// blocks when another names it in blocked_by. blocking_longer_than is
// timed: it is decided, as in the daemon, from the session's BlockingSince,
// which maintenance.MarkRoots sets on the roots of the snapshot's lock
// waits from the waiters' wait_start (the caller marks them first). A
// pooler's server connection (a "pooler" object) is judged by the client
// it serves, not at all by user, app or client when that client is unknown,
// as the server's predicate does.
func (s *Selector) Holds(sess *activity.Session, snap *activity.Snapshot) bool {
	user, app, addr := sess.Usename, sess.ApplicationName, sess.ClientAddr
	pooledUnknown := false
	if k := sess.Pooler; k != nil {
		switch {
		case k.Unknown:
			pooledUnknown = true
		case k.Served:
			user, app = k.User, k.ApplicationName
			addr, _ = netip.ParseAddr(k.ClientAddr) // "" (a unix socket): NULL
		}
	}
	// like is a column against globs as LIKE ANY: a NULL column ("")
	// matches nothing; an exclusion of NULL is no exclusion.
	like := func(globs []string, v string, null bool) bool {
		if null {
			return false
		}
		return slices.ContainsFunc(globs, func(g string) bool { return globRegexp(g).MatchString(v) })
	}
	include := func(globs []string, v string, null, pooled bool) bool {
		return len(globs) == 0 || (!(pooled && pooledUnknown) && like(globs, v, null))
	}
	exclude := func(globs []string, v string, null, pooled bool) bool {
		return len(globs) == 0 || (!(pooled && pooledUnknown) && !like(globs, v, null))
	}
	at := snap.Taken
	switch {
	case !include(s.DB, sess.Datname, sess.Datname == "", false),
		!include(s.User, user, user == "", true),
		!include(s.App, app, false, true),
		!include(s.BackendType, sess.BackendType, sess.BackendType == "", false),
		!include(s.State, sess.State, sess.State == "", false),
		!exclude(s.ExcludeDB, sess.Datname, sess.Datname == "", false),
		!exclude(s.ExcludeUser, user, user == "", true),
		!exclude(s.ExcludeApp, app, false, true):
		return false
	case len(s.Client) > 0 && (pooledUnknown || !addr.IsValid() ||
		!slices.ContainsFunc(s.Client, func(p netip.Prefix) bool { return p.Contains(addr.WithZone("")) })):
		return false
	case s.Waiting && !sess.Waits():
		return false
	case s.Blocking && !blocks(snap, sess.PID, nil):
		return false
	case s.BlockingReplay && !sess.BlockingReplay:
		return false
	case len(s.BlockingOf) > 0 && !blocks(snap, sess.PID, func(w *activity.Session) bool { return slices.Contains(s.BlockingOf, w.PID) }):
		return false
	}
	for i := range timedSelectors {
		t := &timedSelectors[i]
		if d := *t.dur(s); d > 0 {
			// The server's term: since < statement_timestamp() - d (NULL:
			// false).
			if since := t.since(sess); since.IsZero() || !since.Before(at.Add(-d)) {
				return false
			}
		}
	}
	return true
}

// blocks reports whether a session of the snapshot (of those which, nil:
// any) names pid in its blocked_by.
func blocks(snap *activity.Snapshot, pid int32, which func(*activity.Session) bool) bool {
	for i := range snap.Sessions {
		w := &snap.Sessions[i]
		if slices.Contains(w.BlockedBy, pid) && (which == nil || which(w)) {
			return true
		}
	}
	return false
}
