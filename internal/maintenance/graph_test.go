package maintenance_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
)

// One graph, read by unblock (Tree: the tops of every wait) and by top
// (Blocked: the roots of the part of it on screen).
func TestGraphPreparedRootBehindASession(t *testing.T) {
	// 30 waits for 20, which waits for the prepared transaction px; 40
	// waits for 50, which is not in the snapshot (gone since).
	prepared := activity.Session{GID: "px", BackendType: activity.BackendTypePrepared}
	sessions := []activity.Session{
		{PID: 10},
		{PID: 20, BlockedByPrepared: []string{"px"}},
		{PID: 30, BlockedBy: []int32{20}},
		{PID: 40, BlockedBy: []int32{50}},
	}
	all := []*activity.Session{&prepared}
	for i := range sessions {
		all = append(all, &sessions[i])
	}
	g := maintenance.NewGraph(all)
	waits := map[int32]time.Duration{20: time.Minute, 30: time.Second, 40: time.Minute}

	tree := g.Tree(waits, 0)
	if want := []maintenance.Node{{PID: 50}, {GID: "px"}}; !slices.Equal(tree.Roots, want) {
		t.Fatalf("roots %v, want %v", tree.Roots, want)
	}
	if w := tree.Waiters[maintenance.Node{GID: "px"}]; !slices.Equal(w, []int32{20, 30}) {
		t.Errorf("waiters of px: %v", w)
	}
	if tree := g.Tree(waits, 30*time.Second); !slices.Equal(tree.Waiters[maintenance.Node{GID: "px"}], []int32{20}) {
		t.Errorf("waits of 30s or more behind px: %v", tree.Waiters[maintenance.Node{GID: "px"}])
	}
	if got := g.Tops(maintenance.Node{PID: 30}, func(n maintenance.Node) bool { return n.GID == "" }); len(got) != 0 {
		t.Errorf("tops of 30 past sessions only: %v", got)
	}

	for _, c := range []struct {
		name                    string
		node                    maintenance.Node
		involved, blocked, root bool
	}{
		{"prepared", maintenance.Node{GID: "px"}, true, false, true},
		{"idle", maintenance.Node{PID: 10}, false, false, false},
		{"waits for px", maintenance.Node{PID: 20}, true, true, false},
		{"waits for 20", maintenance.Node{PID: 30}, true, true, false},
		{"waits for a pid not shown", maintenance.Node{PID: 40}, true, false, true},
	} {
		involved, blocked := g.Involved(c.node), g.Blocked(c.node)
		if involved != c.involved || blocked != c.blocked || (involved && !blocked) != c.root {
			t.Errorf("%s: involved %t, blocked %t", c.name, involved, blocked)
		}
	}
	// Top without the prepared transaction's row: 20 is a root of what
	// is shown.
	if part := maintenance.NewGraph(all[1:]); part.Blocked(maintenance.Node{PID: 20}) {
		t.Error("20 is blocked by a row not shown")
	}
}

// MarkRoots: the roots are the backends at the tops of the waits, each
// with the start of the oldest wait behind it; a session in between, a
// prepared transaction's waits and a waiter of unknown start make no root
// of anyone; a parallel worker at a top stands for its leader.
func TestMarkRoots(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	snap := &activity.Snapshot{Sessions: []activity.Session{
		{PID: 10}, // root of 20 and 30
		{PID: 20, BlockedBy: []int32{10}, WaitStart: at(5)},            // waits and blocks 30
		{PID: 30, BlockedBy: []int32{10, 20}, WaitStart: at(2)},        // the oldest wait behind 10
		{PID: 40, BlockedByPrepared: []string{"px"}, WaitStart: at(0)}, // behind a prepared transaction
		{PID: 50, BlockedBy: []int32{40}, WaitStart: at(1)},            // behind 40, which waits on px
		{PID: 60}, // leader of worker 61
		{PID: 61, LeaderPID: 60, BackendType: "parallel worker"}, // holds what 70 waits for
		{PID: 70, BlockedBy: []int32{61}, WaitStart: at(3)},      // behind the worker
		{PID: 80},                         // blocks 90 only
		{PID: 90, BlockedBy: []int32{80}}, // start not shown
		{PID: 100, BlockedBy: []int32{110}, WaitStart: at(4)}, // 110 not in the snapshot
	}}
	behind := maintenance.MarkRoots(snap)
	since := map[int32]time.Time{}
	for _, s := range snap.Sessions {
		if !s.BlockingSince.IsZero() {
			since[s.PID] = s.BlockingSince
		}
	}
	if want := map[int32]time.Time{10: at(2), 60: at(3)}; !maps.Equal(since, want) {
		t.Errorf("roots' BlockingSince %v, want %v", since, want)
	}
	pids := func(ss []*activity.Session) []int32 {
		var out []int32
		for _, s := range ss {
			out = append(out, s.PID)
		}
		slices.Sort(out)
		return out
	}
	for root, want := range map[int32][]int32{10: {20, 30}, 60: {70}, 80: {90}} {
		if got := pids(behind[root]); !slices.Equal(got, want) {
			t.Errorf("behind %d: %v, want %v", root, got, want)
		}
	}
	if len(behind) != 3 {
		t.Errorf("roots %v, want 10, 60 and 80", slices.Sorted(maps.Keys(behind)))
	}
}

// MarkRoots on a chain of 2000 waits (each session waits for the one
// before), and on one that ends in a deadlock: every waiter of the first
// is behind its one root, since the oldest wait; the second has no root.
func TestMarkRootsDeepChain(t *testing.T) {
	const depth = 2000
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	chain := func(first []int32) *activity.Snapshot {
		snap := &activity.Snapshot{}
		for pid := int32(1); pid <= depth; pid++ {
			s := activity.Session{PID: pid, WaitStart: t0.Add(time.Duration(pid) * time.Second)}
			switch {
			case pid == 1:
				s.BlockedBy, s.WaitStart = first, time.Time{}
			default:
				s.BlockedBy = []int32{pid - 1}
			}
			snap.Sessions = append(snap.Sessions, s)
		}
		return snap
	}
	snap := chain(nil)
	behind := maintenance.MarkRoots(snap)
	if len(behind) != 1 || len(behind[1]) != depth-1 {
		t.Fatalf("%d roots, %d behind 1; want 1 root and %d behind it", len(behind), len(behind[1]), depth-1)
	}
	for i, w := range behind[1] {
		if w.PID != int32(i+2) {
			t.Fatalf("behind 1: #%d is %d, want %d (snapshot order)", i, w.PID, i+2)
		}
	}
	if got := snap.Sessions[0].BlockingSince; !got.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("the root's BlockingSince %s, want the oldest wait %s", got, t0.Add(2*time.Second))
	}
	// 1 waits for the last: a cycle of 2000, no root.
	snap = chain([]int32{depth})
	if behind := maintenance.MarkRoots(snap); len(behind) != 0 {
		t.Errorf("a deadlock has roots: %v", slices.Sorted(maps.Keys(behind)))
	}
}
