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
func chooseAll(snap *activity.Snapshot, rules []rule, dry func(*rule) bool, done map[key]bool, busy map[[2]int64]bool,
	each func(sess *activity.Session, choices []choice)) map[int32][]*activity.Session {
	behind := maintenance.MarkRoots(snap)
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
