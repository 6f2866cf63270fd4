package watch

import (
	"time"

	"github.com/pgreap/pgreap/internal/activity"
)

// choice is a rule that will act on a session (or audit it planned) at
// due, by the server's clock (zero: no duration, at once).
type choice struct {
	rule int
	due  time.Time
}

// choose is the daemon's decision for one session, given which rules match
// it but for their durations (sess.Marks: the server's marks in the
// daemon, selector.Holds offline in --test), what the rules already did
// (done) and whether another rule's signal to it is being verified (busy):
//   - of the real rules, the first to match acts (ties: the first in the
//     file), unless it already acted on the session (or query), or the
//     session is busy;
//   - every dry-run rule audits it planned, once: it takes the session from
//     no other rule.
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
