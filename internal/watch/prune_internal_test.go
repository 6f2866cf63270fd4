package watch

import (
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/policy"
)

// What the rules did is kept only for the sessions (and queries) the
// snapshot still shows, and for the rules still in the policy: memory stays
// bounded by rules x sessions however long the daemon runs.
func TestPruneKeepsPresentSessionsAndQueries(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	q1, q2 := start.Add(time.Second), start.Add(2*time.Second)
	a := activity.Session{PID: 10, BackendStart: start, QueryStart: q2, State: "idle in transaction"}
	gone := activity.Session{PID: 11, BackendStart: start, QueryStart: q1, State: "active"}
	reused := activity.Session{PID: 10, BackendStart: start.Add(-time.Hour), QueryStart: q1, State: "active"}
	s := &session{t: &target{done: map[key]bool{}}, rules: []rule{
		{Rule: policy.Rule{Name: "slow", Action: policy.Cancel}},
		{Rule: policy.Rule{Name: "stuck", Action: policy.Terminate}},
	}}
	keyOf := func(k int, sess activity.Session) key { return s.rules[k].keyOf(&sess) }
	past := a
	past.QueryStart = q1
	old := rule{Rule: policy.Rule{Name: "renamed", Action: policy.Terminate}}
	keep := []key{keyOf(0, a), keyOf(1, a)}
	drop := []key{keyOf(0, past), keyOf(0, gone), keyOf(1, gone), keyOf(1, reused), old.keyOf(&a)}
	for _, k := range append(append([]key(nil), keep...), drop...) {
		s.t.done[k] = true
	}
	s.prune(&activity.Snapshot{Sessions: []activity.Session{a}})
	for _, k := range keep {
		if !s.t.done[k] {
			t.Errorf("%+v dropped", k)
		}
	}
	if len(s.t.done) != len(keep) {
		t.Errorf("kept %+v, want only %+v", s.t.done, keep)
	}
}
