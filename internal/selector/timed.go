package selector

import (
	"fmt"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
)

// timed is a selector that holds once its duration has passed since an
// instant of the session. The server decides it by its own clock
// (Compile); the daemon schedules a session for the instant it will hold
// (Due), and marks sessions by the selection without it (Untimed).
type timed struct {
	field string // the policy key; the flag is the same with dashes
	words string // what it is in a summary: "longer than 5m"
	spec  func(*Spec) *string
	dur   func(*Selector) *time.Duration
	// since is the instant the duration runs from, sinceSQL the same over
	// the pg_stat_activity row aliased alias (nil: Compile has a term of
	// its own for it).
	since    func(*activity.Session) time.Time
	sinceSQL func(alias string) string
}

// timedSelectors are every timed selector, in the order of the schema.
var timedSelectors = []timed{
	{
		field: "longer_than", words: "longer than",
		spec: func(s *Spec) *string { return &s.LongerThan },
		dur:  func(s *Selector) *time.Duration { return &s.LongerThan },
		// The current state's age: for an active session its query's,
		// for any other the time since the state began.
		since: (*activity.Session).StateSince, sinceSQL: activity.StateSinceSQL,
	},
	{
		field: "xact_longer_than", words: "transaction longer than",
		spec:     func(s *Spec) *string { return &s.XactLongerThan },
		dur:      func(s *Selector) *time.Duration { return &s.XactLongerThan },
		since:    func(s *activity.Session) time.Time { return s.XactStart },
		sinceSQL: func(alias string) string { return alias + ".xact_start" },
	},
	{
		field: "blocking_longer_than", words: "at the root of a lock wait longer than",
		spec: func(s *Spec) *string { return &s.BlockingLongerThan },
		dur:  func(s *Selector) *time.Duration { return &s.BlockingLongerThan },
		// Since the oldest wait the session holds up began, if it is a
		// root (maintenance.MarkRoots): a waiter, or a session that blocks
		// no one, never becomes due. The server's term looks up the wait
		// graph from the waits older than D (Compile).
		since: func(s *activity.Session) time.Time { return s.BlockingSince },
	},
}

// timed adds the term of a timed selector with its interval bound.
func (c *compiler) timed(t *timed, d time.Duration) {
	if t.sinceSQL == nil {
		return
	}
	c.add(fmt.Sprintf("%s < pg_catalog.statement_timestamp() - %s::interval", t.sinceSQL(c.alias), c.arg(interval(d))))
}

// isTimed reports whether any timed selector is set.
func (s *Selector) isTimed() bool {
	for i := range timedSelectors {
		if *timedSelectors[i].dur(s) > 0 {
			return true
		}
	}
	return false
}

// Due is when, by the server's clock, the selection's durations are all
// past for the session (the zero time without durations); false when one
// can never be (no transaction open for xact_longer_than). The other
// selectors are not looked at.
func (s *Selector) Due(sess *activity.Session) (time.Time, bool) {
	var due time.Time
	for i := range timedSelectors {
		t := &timedSelectors[i]
		d := *t.dur(s)
		if d <= 0 {
			continue
		}
		since := t.since(sess)
		if since.IsZero() {
			return time.Time{}, false
		}
		if at := since.Add(d); at.After(due) {
			due = at
		}
	}
	return due, true
}

// Untimed is the selection without its durations: what a session must
// match before Due tells when it will match the whole selection.
func (s *Selector) Untimed() *Selector {
	u := *s
	for i := range timedSelectors {
		*timedSelectors[i].dur(&u) = 0
	}
	return &u
}

// Threshold is a duration of the selection and its policy key.
type Threshold struct {
	Field    string
	Duration time.Duration
}

// Thresholds are the durations the selection waits for, in the order of
// the schema.
func (s *Selector) Thresholds() []Threshold {
	var out []Threshold
	for i := range timedSelectors {
		if d := *timedSelectors[i].dur(s); d > 0 {
			out = append(out, Threshold{timedSelectors[i].field, d})
		}
	}
	return out
}
