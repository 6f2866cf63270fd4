package maintenance

import (
	"context"
	_ "embed"
	"fmt"
	"sort"
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

// Waits is how long each session waiting on a lock has waited, by pid: on
// 14+ since pg_locks.waitstart, before that since its statement began.
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
		waits[pid] = time.Duration(waited.Microseconds+int64(waited.Days)*86400e6) * time.Microsecond
	}
	return waits, rows.Err()
}

// Tree is the blocking graph of the waits that matter: the roots (sessions
// that block others and wait for no one) and, for each, the waiters queued
// behind it, directly or not.
type Tree struct {
	Roots   []int32
	Waiters map[int32][]int32
}

// BlockingTree builds the tree from a snapshot (blocked_by) for the
// waiters that have waited at least min.
func BlockingTree(sessions []activity.Session, waits map[int32]time.Duration, min time.Duration) *Tree {
	blockedBy := map[int32][]int32{}
	for _, s := range sessions {
		if len(s.BlockedBy) > 0 {
			blockedBy[s.PID] = s.BlockedBy
		}
	}
	t := &Tree{Waiters: map[int32][]int32{}}
	for pid, waited := range waits {
		if waited < min || len(blockedBy[pid]) == 0 {
			continue
		}
		// Up the graph to the sessions that wait for no one; a cycle
		// (a deadlock the server is about to break) has none.
		seen := map[int32]bool{pid: true}
		stack := append([]int32(nil), blockedBy[pid]...)
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
	sort.Slice(t.Roots, func(i, j int) bool { return t.Roots[i] < t.Roots[j] })
	for _, w := range t.Waiters {
		sort.Slice(w, func(i, j int) bool { return w[i] < w[j] })
	}
	return t
}
