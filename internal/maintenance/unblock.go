package maintenance

import (
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/activity"
)

var (
	//go:embed sql/waits.v14.sql
	waitsV14 string
	//go:embed sql/waits.v12.sql
	waitsV12 string
	//go:embed sql/row_waiting.sql
	rowWaitingSQL string
)

// RowWaiting are the sessions inside a wait for a row
// (sql/row_waiting.sql): between two of a row's lockers, such a session
// waits on no lock for an instant, yet is not released.
func RowWaiting(ctx context.Context, conn *pgx.Conn) (map[int32]bool, error) {
	rows, err := conn.Query(ctx, rowWaitingSQL)
	if err != nil {
		return nil, fmt.Errorf("row waits: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("row waits: %w", err)
	}
	out := make(map[int32]bool, len(pids))
	for _, p := range pids {
		out[p] = true
	}
	return out, nil
}

// UnknownWait is the wait of a session whose age the server does not show
// (12 and 13 measure it from query_start, which a role without
// pg_read_all_stats does not see of another role's session).
const UnknownWait time.Duration = -1

// Waits is how long each session waiting on a lock has waited, by pid: on
// 14+ since pg_locks.waitstart, before that since its statement began;
// UnknownWait when the server does not show it.
func Waits(ctx context.Context, conn *pgx.Conn) (map[int32]time.Duration, error) {
	version, err := activity.ServerVersion(ctx, conn)
	if err != nil {
		return nil, err
	}
	sql := waitsV14
	if version < 140000 {
		sql = waitsV12
	}
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("lock waits: %w", err)
	}
	defer rows.Close()
	waits := map[int32]time.Duration{}
	for rows.Next() {
		var pid int32
		var waited pgtype.Interval
		if err := rows.Scan(&pid, &waited); err != nil {
			return nil, fmt.Errorf("lock waits: %w", err)
		}
		waits[pid] = UnknownWait
		if waited.Valid {
			waits[pid] = time.Duration(waited.Microseconds+int64(waited.Days)*86400e6) * time.Microsecond
		}
	}
	return waits, rows.Err()
}

// Node is a vertex of the blocking graph: a backend by its pid, or a
// prepared transaction by its GID (no backend holds its locks: PID is 0).
type Node struct {
	PID int32
	GID string
}

// Tree is the blocking graph of the waits that matter: the roots (sessions
// that block others and wait for no one, and prepared transactions, which
// never wait) and, for each, the waiters queued behind it, directly or not.
type Tree struct {
	Roots   []Node
	Waiters map[Node][]int32
}

// NodeOf is the node of a session, or of a prepared transaction's row.
func NodeOf(s *activity.Session) Node { return Node{PID: s.PID, GID: s.GID} }

// RootPIDs are the roots that are backends.
func (t *Tree) RootPIDs() []int32 {
	var pids []int32
	for _, r := range t.Roots {
		if r.GID == "" {
			pids = append(pids, r.PID)
		}
	}
	return pids
}

// Blockers are the nodes a session waits for.
func Blockers(s *activity.Session) []Node {
	nodes := make([]Node, 0, len(s.BlockedBy)+len(s.BlockedByPrepared))
	for _, b := range s.BlockedBy {
		nodes = append(nodes, Node{PID: b})
	}
	for _, g := range s.BlockedByPrepared {
		nodes = append(nodes, Node{GID: g})
	}
	return nodes
}

// Graph is who waits for whom, the one lock tree that unblock and top
// read: each session's blockers as the server names them (blocked_by,
// blocked_by_prepared: a prepared transaction holds locks and never
// waits, so it is always a root) and, reversed, the ones queued right
// behind each.
type Graph struct {
	nodes    map[Node]bool
	blockers map[Node][]Node
	waiters  map[Node][]Node
}

// NewGraph is the graph of sessions, prepared transactions' rows
// included.
func NewGraph(sessions []*activity.Session) *Graph {
	g := &Graph{nodes: make(map[Node]bool, len(sessions)), blockers: map[Node][]Node{}, waiters: map[Node][]Node{}}
	for _, s := range sessions {
		n := NodeOf(s)
		g.nodes[n] = true
		if s.Waits() {
			g.blockers[n] = Blockers(s)
		}
	}
	for _, s := range sessions {
		n := NodeOf(s)
		for _, b := range g.blockers[n] {
			if b != n && !slices.Contains(g.waiters[b], n) {
				g.waiters[b] = append(g.waiters[b], n)
			}
		}
	}
	return g
}

// GraphOf is the graph of a snapshot's sessions and prepared
// transactions.
func GraphOf(snap *activity.Snapshot) *Graph {
	sessions := make([]*activity.Session, 0, len(snap.Sessions)+len(snap.Prepared))
	for i := range snap.Sessions {
		sessions = append(sessions, &snap.Sessions[i])
	}
	for i := range snap.Prepared {
		sessions = append(sessions, &snap.Prepared[i])
	}
	return NewGraph(sessions)
}

// Waits reports whether n waits on a lock.
func (g *Graph) Waits(n Node) bool { return len(g.blockers[n]) > 0 }

// Waiters are the sessions queued right behind n, in the order given.
func (g *Graph) Waiters(n Node) []Node { return g.waiters[n] }

// Involved reports whether n waits or is waited for.
func (g *Graph) Involved(n Node) bool { return g.Waits(n) || len(g.waiters[n]) > 0 }

// Blocked reports whether n waits for one of the graph's own sessions:
// of a part of the sessions (top's, narrowed by selectors), one that
// waits only for sessions outside it is a root of that part.
func (g *Graph) Blocked(n Node) bool {
	return slices.ContainsFunc(g.blockers[n], func(b Node) bool { return g.nodes[b] })
}

// Tops are the nodes n waits for, directly or not, that wait for no one
// (a session, a prepared transaction, or a pid the graph does not hold),
// each once, in the order met; a cycle (a deadlock the server is about to
// break) has none. pass (nil: any) says which nodes the walk may reach.
func (g *Graph) Tops(n Node, pass func(Node) bool) []Node {
	var tops []Node
	seen := map[Node]bool{n: true}
	stack := append([]Node(nil), g.blockers[n]...)
	for len(stack) > 0 {
		b := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[b] || (pass != nil && !pass(b)) {
			continue
		}
		seen[b] = true
		if up := g.blockers[b]; len(up) > 0 {
			stack = append(stack, up...)
			continue
		}
		tops = append(tops, b)
	}
	return tops
}

// allTops is Tops(n, nil) for every node n, memoized: each strongly
// connected part of the graph (one node, or a deadlock's cycle) is walked
// once and takes the tops of the parts it waits for, so the tops of every
// waiter of a chain of N waits cost O(N), where a Tops per waiter walks up
// the chain each time (O(N²)). The tops are those of Tops, in another
// order.
type allTops struct {
	g     *Graph
	index map[Node]int // the order of visit, from 1
	low   map[Node]int
	on    map[Node]bool // on the stack: its part is not closed yet
	stack []Node
	tops  map[Node][]Node
}

func (g *Graph) allTops() *allTops {
	return &allTops{g: g, index: map[Node]int{}, low: map[Node]int{}, on: map[Node]bool{}, tops: map[Node][]Node{}}
}

// of are the tops of n.
func (a *allTops) of(n Node) []Node {
	if a.index[n] == 0 {
		a.visit(n)
	}
	return a.tops[n]
}

// visit is Tarjan's algorithm: what n waits for is visited first; when n
// closes a part, the part's nodes are popped and given its tops: the
// nodes they wait for outside it that wait for no one, and the tops of
// those that do.
func (a *allTops) visit(n Node) {
	a.index[n] = len(a.index) + 1
	a.low[n] = a.index[n]
	a.stack = append(a.stack, n)
	a.on[n] = true
	for _, b := range a.g.blockers[n] {
		switch {
		case a.index[b] == 0:
			a.visit(b)
			a.low[n] = min(a.low[n], a.low[b])
		case a.on[b]:
			a.low[n] = min(a.low[n], a.index[b])
		}
	}
	if a.low[n] != a.index[n] {
		return
	}
	i := len(a.stack) - 1
	for a.stack[i] != n {
		i--
	}
	part := a.stack[i:]
	a.stack = a.stack[:i]
	for _, m := range part {
		a.on[m] = false
	}
	var tops []Node
	if len(part) == 1 && len(a.g.blockers[n]) == 1 && len(a.g.blockers[a.g.blockers[n][0]]) > 0 && a.g.blockers[n][0] != n {
		// One way up, through a waiter: its tops, shared, not copied
		// down a chain.
		tops = a.tops[a.g.blockers[n][0]]
	} else {
		seen := map[Node]bool{}
		add := func(t Node) {
			if !seen[t] {
				seen[t] = true
				tops = append(tops, t)
			}
		}
		in := make(map[Node]bool, len(part))
		for _, m := range part {
			in[m] = true
		}
		for _, m := range part {
			for _, b := range a.g.blockers[m] {
				switch {
				case in[b]:
				case len(a.g.blockers[b]) == 0:
					add(b)
				default:
					for _, t := range a.tops[b] {
						add(t)
					}
				}
			}
		}
	}
	for _, m := range part {
		a.tops[m] = tops
	}
}

// Tree is the tree of the waiters that have waited at least min: the
// sessions and prepared transactions at the top of their waits, each with
// the waiters behind it.
func (g *Graph) Tree(waits map[int32]time.Duration, min time.Duration) *Tree {
	t := &Tree{Waiters: map[Node][]int32{}}
	for pid, waited := range waits {
		// A wait of unknown age is longer than 0 only.
		if (waited == UnknownWait && min > 0) || (waited != UnknownWait && waited < min) || !g.Waits(Node{PID: pid}) {
			continue
		}
		for _, b := range g.Tops(Node{PID: pid}, nil) {
			t.Add(b, pid)
		}
	}
	t.Sort()
	return t
}

// Add puts waiter behind root, adding root to the roots when new.
func (t *Tree) Add(root Node, waiter int32) {
	if _, ok := t.Waiters[root]; !ok {
		t.Roots = append(t.Roots, root)
	}
	t.Waiters[root] = append(t.Waiters[root], waiter)
}

// Sort orders the roots (SortRoots) and each root's waiters by pid.
func (t *Tree) Sort() {
	t.SortRoots()
	for _, w := range t.Waiters {
		slices.Sort(w)
	}
}

// SortRoots orders the roots, backends by pid first, then prepared
// transactions by GID.
func (t *Tree) SortRoots() {
	slices.SortFunc(t.Roots, func(a, b Node) int {
		if c := strings.Compare(a.GID, b.GID); c != 0 {
			return c
		}
		return cmp.Compare(a.PID, b.PID)
	})
}

// MarkRoots finds, as unblock does, the roots of the snapshot's lock
// waits: the backends at the top of each wait (they block, and wait on no
// lock themselves). It sets each root's Session.BlockingSince to when the
// oldest wait it holds up began (the waiters' Session.WaitStart; a wait of
// unknown start counts for no root), and returns, by root pid, the
// sessions waiting behind it, directly or through others. A prepared
// transaction at the top of a wait is no backend: that wait makes no
// session a root (the sessions waiting in between wait themselves). A
// parallel worker at a top stands for its leader, the session one acts on.
func MarkRoots(snap *activity.Snapshot) map[int32][]*activity.Session {
	g := GraphOf(snap)
	byPID := make(map[int32]*activity.Session, len(snap.Sessions))
	for i := range snap.Sessions {
		byPID[snap.Sessions[i].PID] = &snap.Sessions[i]
	}
	behind := map[int32][]*activity.Session{}
	tops := g.allTops()
	for i := range snap.Sessions {
		w := &snap.Sessions[i]
		w.BlockingSince = time.Time{}
		if !w.Waits() {
			continue
		}
		var roots []*activity.Session // w's, each once (a leader and its worker)
		for _, top := range tops.of(NodeOf(w)) {
			root := byPID[top.PID]
			if top.GID != "" || root == nil {
				continue // a prepared transaction, or a backend not in the snapshot
			}
			if root.IsParallelWorker() && byPID[root.LeaderPID] != nil {
				root = byPID[root.LeaderPID]
			}
			if root.Waits() || root == w || slices.Contains(roots, root) {
				continue
			}
			roots = append(roots, root)
			behind[root.PID] = append(behind[root.PID], w)
		}
	}
	for pid, waiters := range behind {
		root := byPID[pid]
		for _, w := range waiters {
			if !w.WaitStart.IsZero() && (root.BlockingSince.IsZero() || w.WaitStart.Before(root.BlockingSince)) {
				root.BlockingSince = w.WaitStart
			}
		}
	}
	return behind
}
