package maintenance

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/pgreap/pgreap/internal/activity"
)

// MarkRoots' memoized tops are those of Tops, node by node, on random
// graphs of waits: chains, fans, cycles (deadlocks), self-waits, prepared
// transactions and pids not in the snapshot.
func TestAllTopsAreTops(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 2))
	order := func(ns []Node) []Node {
		ns = slices.Clone(ns)
		slices.SortFunc(ns, func(a, b Node) int {
			if c := cmp.Compare(a.GID, b.GID); c != 0 {
				return c
			}
			return cmp.Compare(a.PID, b.PID)
		})
		return ns
	}
	for round := range 2000 {
		n := 1 + rng.IntN(25)
		sessions := make([]*activity.Session, n)
		for i := range sessions {
			s := &activity.Session{PID: int32(i + 1)}
			if rng.IntN(3) > 0 {
				for range 1 + rng.IntN(3) {
					switch r := rng.IntN(20); {
					case r == 0:
						s.BlockedByPrepared = append(s.BlockedByPrepared, "px")
					case r == 1:
						s.BlockedBy = append(s.BlockedBy, int32(n+10)) // not in the snapshot
					default:
						s.BlockedBy = append(s.BlockedBy, int32(1+rng.IntN(n)))
					}
				}
			}
			sessions[i] = s
		}
		g := NewGraph(sessions)
		all := g.allTops()
		for _, s := range sessions {
			want, got := order(g.Tops(NodeOf(s), nil)), order(all.of(NodeOf(s)))
			if !slices.Equal(got, want) {
				t.Fatalf("round %d, pid %d: tops %v, want %v (Tops)", round, s.PID, got, want)
			}
		}
	}
}
