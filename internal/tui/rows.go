package tui

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
)

// ident names one session: pids are reused, so a mark or the cursor
// follows (pid, backend_start) across refreshes, never a pid alone.
type ident struct {
	pid   int32
	start int64  // backend_start in microseconds (a prepared transaction's: when prepared)
	gid   string // a prepared transaction's, which has no pid
}

func identOf(s *activity.Session) ident {
	if s.IsPrepared() {
		return ident{gid: s.GID, start: s.XactStart.UnixMicro()}
	}
	return ident{pid: s.PID, start: s.BackendStart.UnixMicro()}
}

// row is one line of the table: a session with its parallel workers
// folded in, and its cells as `ls` shows them.
type row struct {
	s       *activity.Session
	workers []*activity.Session
	id      ident
	age     time.Duration // of the current state
	wait    time.Duration // on a lock, when the server says
	depth   int           // in the blocking tree
	// replay is set on the row of a standby's WAL replay (its startup
	// process): no session, never marked or signalled.
	replay *activity.Replay
	cells  []string // the columns of ls (output.ListTitles)
	text   string   // what / searches, lower case; made when first needed
}

// The columns (output.ListTitles) that top changes or colours.
const (
	colPID = iota
	colDB
	colUser
	colApp
	colClient
	colState
	colAge
	colWait
	colBlockedBy
	colQuery
	ncols
)

// rowsOf folds each parallel worker into its leader's row (the snapshot
// puts workers right after their leader); a worker whose leader is not in
// the snapshot (PostgreSQL 12 does not say) is a row of its own. The
// prepared transactions sessions wait on come last: the blocking tree
// shows them as roots, the list of sessions does not.
func rowsOf(f *Frame) []row {
	sessions := f.Snap.Sessions
	rows := make([]row, 0, len(sessions)+len(f.Snap.Prepared)+1)
	if r := f.Snap.Replay; r != nil {
		rows = append(rows, row{s: &r.Startup, replay: r, id: identOf(&r.Startup), age: r.WaitAge(f.Snap.Taken)})
	}
	for i := range sessions {
		s := &sessions[i]
		if n := len(rows); n > 0 && rows[n-1].replay == nil && s.LeaderPID != 0 && s.LeaderPID != s.PID && rows[n-1].s.PID == s.LeaderPID {
			rows[n-1].workers = append(rows[n-1].workers, s)
			continue
		}
		rows = append(rows, row{s: s, id: identOf(s), age: s.StateAge(f.Snap.Taken), wait: f.Waits[s.PID]})
	}
	for i := range f.Snap.Prepared {
		p := &f.Snap.Prepared[i]
		rows = append(rows, row{s: p, id: identOf(p), age: p.StateAge(f.Snap.Taken)})
	}
	return rows
}

// maxQueryCell is the most of a query's text a cell gets (bytes): more
// than any screen is wide.
const maxQueryCell = 1024

// render makes the row's cells, once.
func (r *row) render(now time.Time) {
	if r.cells != nil {
		return
	}
	s := r.s
	if len(s.Query) > maxQueryCell {
		// A cell shows one screen line of the query: cleaning the whole
		// text of long queries, for each session, would hold the keys.
		short := *s
		short.Query = strings.ToValidUTF8(s.Query[:maxQueryCell], "")
		s = &short
	}
	if r.replay != nil {
		r.cells = output.ReplayCells(r.replay, now)
	} else {
		r.cells = output.ListCells(s, now)
	}
	pid := strconv.Itoa(int(r.s.PID))
	if r.s.IsPrepared() || r.replay != nil { // a GID; "?" for a hidden startup process
		pid = r.cells[colPID]
	}
	if r.depth > 0 {
		pid = strings.Repeat("  ", r.depth-1) + "└ " + pid
	}
	if n := len(r.workers); n > 0 {
		pid += " +" + strconv.Itoa(n) // its parallel workers, folded
	}
	r.cells[colPID] = pid
	if r.wait > 0 {
		r.cells[colWait] += " " + output.Age(r.wait)
	}
}

// matches reports whether the row's database, user, application, client,
// pid or query contains the lower-case needle.
func (r *row) matches(needle string) bool {
	if needle == "" {
		return true
	}
	if r.text == "" {
		user, app, client := output.Who(r.s)
		r.text = strings.ToLower(strings.Join([]string{
			strconv.Itoa(int(r.s.PID)), r.s.Datname, user, app, client, r.s.Query,
		}, "\x00"))
	}
	return strings.Contains(r.text, needle)
}

// sortKey is what `s` cycles through.
type sortKey int

const (
	byAge sortKey = iota
	byState
	byDB
	byUser
	byApp
	nsortKeys
)

func (k sortKey) String() string {
	return [...]string{"age", "state", "db", "user", "app"}[k]
}

// stateRank orders states by how much they tend to matter in an incident.
func stateRank(state string) int {
	switch state {
	case "active":
		return 0
	case "idle in transaction":
		return 1
	case "idle in transaction (aborted)":
		return 2
	case "fastpath function call":
		return 3
	case "idle":
		return 5
	}
	return 4
}

// sortRows sorts by the key, then by age (oldest first), then by pid.
func sortRows(rows []row, k sortKey) {
	slices.SortStableFunc(rows, func(a, b row) int {
		var c int
		switch k {
		case byState:
			c = cmp.Compare(stateRank(a.s.State), stateRank(b.s.State))
		case byDB:
			c = strings.Compare(a.s.Datname, b.s.Datname)
		case byUser:
			c = strings.Compare(a.s.Usename, b.s.Usename)
		case byApp:
			c = strings.Compare(a.s.ApplicationName, b.s.ApplicationName)
		}
		if c != 0 {
			return c
		}
		if c = cmp.Compare(b.age, a.age); c != 0 {
			return c
		}
		return cmp.Compare(a.s.PID, b.s.PID)
	})
}

// blockingTree lays out maintenance's lock graph of the rows: each root
// (a session or prepared transaction waiting for no one shown) first,
// the sessions queued behind it indented under it, longest wait first. Roots come oldest first, and
// those that wait on a session not shown after the others. A session is
// shown once, under the first blocker that reaches it.
func blockingTree(rows []row) []row {
	sessions := make([]*activity.Session, len(rows))
	at := make(map[maintenance.Node]int, len(rows))
	for i := range rows {
		sessions[i] = rows[i].s
		at[maintenance.NodeOf(rows[i].s)] = i
	}
	g := maintenance.NewGraph(sessions)
	behind := make([][]int, len(rows))
	for i := range rows {
		for _, w := range g.Waiters(maintenance.NodeOf(rows[i].s)) {
			behind[i] = append(behind[i], at[w])
		}
		slices.SortStableFunc(behind[i], func(a, b int) int {
			if c := cmp.Compare(rows[b].wait, rows[a].wait); c != 0 {
				return c
			}
			return cmp.Compare(rows[a].s.PID, rows[b].s.PID)
		})
	}
	involved := func(i int) bool { return g.Involved(maintenance.NodeOf(rows[i].s)) }
	var roots []int
	for i := range rows {
		if involved(i) && !g.Blocked(maintenance.NodeOf(rows[i].s)) {
			roots = append(roots, i)
		}
	}
	waits := func(i int) int {
		if rows[i].s.Waits() {
			return 1
		}
		return 0
	}
	slices.SortStableFunc(roots, func(a, b int) int {
		// A root that waits itself waits on a session not shown (left
		// out by the selectors): true roots come first.
		if c := cmp.Compare(waits(a), waits(b)); c != 0 {
			return c
		}
		if c := cmp.Compare(rows[b].age, rows[a].age); c != 0 {
			return c
		}
		return cmp.Compare(rows[a].s.PID, rows[b].s.PID)
	})
	var out []row
	seen := make([]bool, len(rows))
	var walk func(i, depth int)
	walk = func(i, depth int) {
		if seen[i] {
			return
		}
		seen[i] = true
		r := rows[i]
		r.depth, r.cells = depth, nil
		out = append(out, r)
		for _, w := range behind[i] {
			walk(w, depth+1)
		}
	}
	for _, i := range roots {
		walk(i, 0)
	}
	// What is left waits in a cycle (a deadlock the server is about to
	// break): each is shown from wherever it is first met.
	for i := range rows {
		if involved(i) {
			walk(i, 0)
		}
	}
	return out
}
