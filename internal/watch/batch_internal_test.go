package watch

import (
	"slices"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
)

// The backlog a snapshot finds already past its threshold goes out
// maxBatch at a time when a deadline is armed behind it, and a deadline
// that came due meanwhile goes alone before the rest of it; with nothing
// armed behind, all of it in one statement.
func TestNextBatch(t *testing.T) {
	seen := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(pid int32, due time.Time) armed {
		return armed{session: activity.Session{PID: pid}, due: due}
	}
	backlog := func(n int) []armed {
		var q []armed
		for i := range n {
			q = append(q, at(int32(100+i), seen))
		}
		return q
	}
	pids := func(q []armed) []int32 {
		var out []int32
		for _, a := range q {
			out = append(out, a.session.PID)
		}
		return out
	}
	deadline, later := seen.Add(30*time.Millisecond), seen.Add(time.Second)
	for _, tt := range []struct {
		name       string
		queue      []armed
		now        time.Time
		send, rest []int32
	}{
		{"a few due", append(backlog(3), at(1, later)), seen, []int32{100, 101, 102}, []int32{1}},
		{"a backlog, nothing behind", backlog(maxBatch + 4), seen, pids(backlog(maxBatch + 4)), nil},
		{"a backlog, a deadline armed behind", append(backlog(maxBatch+4), at(1, later)), seen,
			pids(backlog(maxBatch)), append(pids(backlog(maxBatch + 4))[maxBatch:], 1)},
		{"a backlog, a deadline come due", append(backlog(maxBatch+4), at(1, deadline), at(2, later)), deadline,
			[]int32{1}, append(pids(backlog(maxBatch+4)), 2)},
	} {
		send, rest := nextBatch(tt.queue, tt.now, seen)
		if got := pids(send); !slices.Equal(got, tt.send) {
			t.Errorf("%s: send %v, want %v", tt.name, got, tt.send)
		}
		if got := pids(rest); !slices.Equal(got, tt.rest) {
			t.Errorf("%s: rest %v, want %v", tt.name, got, tt.rest)
		}
	}
}
