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
)

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

// BlockingTree builds the tree from a snapshot (blocked_by,
// blocked_by_prepared) for the waiters that have waited at least min.
func BlockingTree(sessions []activity.Session, waits map[int32]time.Duration, min time.Duration) *Tree {
	blockedBy := map[Node][]Node{}
	for i := range sessions {
		if s := &sessions[i]; s.Waits() {
			blockedBy[Node{PID: s.PID}] = Blockers(s)
		}
	}
	t := &Tree{Waiters: map[Node][]int32{}}
	for pid, waited := range waits {
		// A wait of unknown age is longer than 0 only.
		if (waited == UnknownWait && min > 0) || (waited != UnknownWait && waited < min) || len(blockedBy[Node{PID: pid}]) == 0 {
			continue
		}
		// Up the graph to the sessions that wait for no one; a cycle
		// (a deadlock the server is about to break) has none.
		seen := map[Node]bool{{PID: pid}: true}
		stack := append([]Node(nil), blockedBy[Node{PID: pid}]...)
		for len(stack) > 0 {
			b := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[b] {
				continue
			}
			seen[b] = true
			if up := blockedBy[b]; len(up) > 0 {
				stack = append(stack, up...)
				continue
			}
			if _, ok := t.Waiters[b]; !ok {
				t.Roots = append(t.Roots, b)
			}
			t.Waiters[b] = append(t.Waiters[b], pid)
		}
	}
	t.sort()
	return t
}

// sort orders the roots, backends by pid first, then prepared
// transactions by GID, and each root's waiters by pid.
func (t *Tree) sort() {
	slices.SortFunc(t.Roots, func(a, b Node) int {
		if c := strings.Compare(a.GID, b.GID); c != 0 {
			return c
		}
		return cmp.Compare(a.PID, b.PID)
	})
	for _, w := range t.Waiters {
		slices.Sort(w)
	}
}
