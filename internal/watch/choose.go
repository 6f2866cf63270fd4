package watch

import (
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
)

// choice is a rule that will act on a session (or audit it planned) at
// due, by the server's clock (zero: no duration, at once).
type choice struct {
	rule int
	due  time.Time
}

// chooseAll is choose over every session of the snapshot, called by the
// daemon (arm) and by --test (Test) alike. It first marks the roots of the
// snapshot's lock waits (maintenance.MarkRoots): blocking_longer_than is due
// from the start of the oldest wait behind a root, which no session tells
// of itself. each gets every session with its choices (none: no rule takes
// it). It returns, by root pid, the sessions waiting behind each root.
// waits is the daemon's memory of its earlier looks (nil: this is the
// first, as in --test).
func chooseAll(snap *activity.Snapshot, rules []rule, dry func(*rule) bool, done map[key]bool, busy map[[2]int64]bool,
	waits *waits, each func(sess *activity.Session, choices []choice)) map[int32][]*activity.Session {
	behind := maintenance.MarkRoots(snap)
	if waits != nil {
		waits.see(snap)
	}
	for i := range snap.Sessions {
		sess := &snap.Sessions[i]
		each(sess, choose(rules, sess, dry, done, busy[sessionOf(sess)]))
	}
	return behind
}

// choose is the daemon's decision for one session, given which rules match
// it but for their durations (sess.Marks: the server's marks in the
// daemon, selector.Holds offline in --test), what the rules already did
// (done) and whether another rule's signal to it is being verified (busy):
//   - of the real rules, the first to match acts (ties: the first in the
//     file), unless it already acted on the session (or query), or the
//     session is busy;
//   - every dry-run rule audits it planned, once: it takes the session from
//     no other rule;
//   - a rule on lock pile-ups (blocking_longer_than) matches only the roots
//     of lock waits, as unblock finds them (maintenance.MarkRoots, in
//     chooseAll), from the instant the oldest wait behind one is that old.
//
// The dry-run choices come first, in the file's order, then the real one.
// Budgets are not looked at here: they decide when a due rule fires
// (budgets.split).
func choose(rules []rule, sess *activity.Session, dry func(*rule) bool, done map[key]bool, busy bool) []choice {
	if sess.Marks == nil || sess.IsParallelWorker() {
		return nil // workers die with their leader: the leader is acted on
	}
	var out []choice
	best := -1
	var bestDue time.Time
	for k := range rules {
		r := &rules[k]
		if !sess.Marks[k] || !r.guarded.Keep(sess) {
			continue
		}
		due, ok := r.guarded.Due(sess)
		if !ok {
			continue
		}
		acted, seen := done[r.keyOf(sess)]
		switch {
		case dry(r):
			if !seen {
				out = append(out, choice{k, due})
			}
		case acted || busy:
		case best < 0 || due.Before(bestDue):
			best, bestDue = k, due
		}
	}
	if best >= 0 {
		out = append(out, choice{best, bestDue})
	}
	return out
}

// waits remembers, from one look to the next, which sessions waited on a
// lock. A session that waited in the middle of a pile-up (it holds a lock
// others wait for, and waits itself) becomes its root when the lock it
// waited for is released, often because a rule ended the root above it.
// Its waiters' waits then began long ago, but it has blocked them, as a
// root, only since: counted from their start, it would be due at once and
// ended a moment after the root above it, for a wait it did not cause. So
// a root once seen waiting blocks from the first look that saw it wait no
// more. Between two looks, when it stopped waiting is not known: the later
// instant is taken, so it is never acted on early (and at most one
// interval late).
type waits struct {
	// waiting are the sessions that waited at the last look.
	waiting map[[2]int64]bool
	// since is, for a session seen waiting at some look and not at a
	// later one, the first look that saw it not waiting.
	since map[[2]int64]time.Time
}

// see moves the roots' BlockingSince (maintenance.MarkRoots) of a new look
// to when each stopped waiting, if it was seen waiting, and remembers the
// look. Sessions gone from the snapshot are forgotten.
func (w *waits) see(snap *activity.Snapshot) {
	waiting := map[[2]int64]bool{}
	since := map[[2]int64]time.Time{}
	for i := range snap.Sessions {
		sess := &snap.Sessions[i]
		id := sessionOf(sess)
		if sess.Waits() {
			waiting[id] = true
			continue
		}
		from, ok := w.since[id]
		if w.waiting[id] {
			from, ok = snap.Taken, true
		}
		if !ok {
			continue
		}
		since[id] = from
		if !sess.BlockingSince.IsZero() && sess.BlockingSince.Before(from) {
			sess.BlockingSince = from
		}
	}
	w.waiting, w.since = waiting, since
}
