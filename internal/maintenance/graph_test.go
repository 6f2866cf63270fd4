package maintenance_test

import (
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
