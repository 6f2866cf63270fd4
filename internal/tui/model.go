package tui

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
)

// Options configure the model.
type Options struct {
	// Context bounds every statement; the program's own context.
	Context context.Context
	Source  Source
	// Interval is the time between the end of one snapshot and the start
	// of the next (1s by default).
	Interval time.Duration
	// ReadOnly refuses c and t: for people who may only look.
	ReadOnly bool
	// Color draws colours; without it, plain text (no terminal colours,
	// NO_COLOR, --no-color).
	Color bool
	// Reads counts the reads of the terminal (CountReads): a y read
	// before a question was put is not its answer. Nil: every key is a
	// read of its own.
	Reads func() uint64
}

// Model is the bubbletea model of `pgreap top`.
type Model struct {
	opt Options
	st  styles

	width, height int

	frame   *Frame     // the latest snapshot
	stale   error      // the last refresh failed with it
	loading bool       // a snapshot is in flight
	acting  bool       // an action is in flight
	all     []row      // every row of the frame
	view    []row      // the rows shown: filtered, sorted, or the blocking tree
	summary string     // the header's second line, made with the frame
	widths  [ncols]int // of the columns, over the view
	cols    []int      // the columns shown, but the query: those that fit
	cursor  int        // in view
	top     int        // the first row on the screen
	marks   map[ident]bool

	sortBy    sortKey
	filter    string // applied, lower case
	input     textinput.Model
	typing    bool
	blockers  bool
	help      bool
	detail    *ident // the session whose fields are shown
	detailTop int    // the first line of them on the screen
	ask       *question
	asked     uint64 // Reads when the question was put
	ticks     int    // refreshes scheduled: the number of the one that counts
	leaving   bool   // q was pressed while an action ran: a second q quits
	status    string
	bad       bool     // the status reports a problem
	done      []string // the status of every action, in order
	drawn     string   // the screen View drew last
	dirty     bool     // a message changed the model since
}

// Done is the status line of every action carried out, in order.
func (m *Model) Done() []string { return m.done }

// Acting reports whether an action was sent and its outcome has not come
// back.
func (m *Model) Acting() bool { return m.acting }

// question is a c or t waiting for y/n, with the sessions it names.
type question struct {
	kind     action.Kind
	snap     *activity.Snapshot
	sessions []activity.Session
	hidden   int // marked sessions left out: not on the list (filter, b)
}

// FrameMsg is a refresh's result: a new frame, or why there is none. The
// model sends itself one per interval; a program may send one too.
type FrameMsg struct {
	Frame *Frame
	Err   error
}

// Messages.
type (
	// tickMsg is a refresh coming due; only the latest one scheduled
	// counts, so that refreshes never run in two loops.
	tickMsg struct{ n int }
	actMsg  struct {
		kind    action.Kind
		results []action.Result
		err     error
	}
)

// New returns the model; run it with tea.NewProgram.
func New(opt Options) *Model {
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	if opt.Context == nil {
		opt.Context = context.Background()
	}
	in := textinput.New()
	in.Prompt = "/"
	in.Placeholder = "text in db, user, app, client, pid or query"
	in.CharLimit = 200
	if opt.Color {
		ph := lipgloss.NewStyle().Foreground(lipgloss.Color("240"))
		in.SetStyles(textinput.Styles{Focused: textinput.StyleState{Placeholder: ph}, Blurred: textinput.StyleState{Placeholder: ph}})
	} else {
		// No escape sequence at all: no styles, and no cursor drawn in
		// reverse video (the terminal's cursor is hidden, as before).
		in.SetStyles(textinput.Styles{})
		in.SetVirtualCursor(false)
	}
	return &Model{opt: opt, st: newStyles(opt.Color), marks: map[ident]bool{}, input: in, loading: true, dirty: true}
}

// Init takes the first snapshot.
func (m *Model) Init() tea.Cmd { return m.fetch() }

func (m *Model) fetch() tea.Cmd {
	ctx, src := m.opt.Context, m.opt.Source
	return func() (msg tea.Msg) {
		defer func() {
			if r := recover(); r != nil {
				msg = FrameMsg{Err: fmt.Errorf("internal error, please report it: %v", r)}
			}
		}()
		f, err := src.Frame(ctx)
		return FrameMsg{Frame: f, Err: err}
	}
}

// next schedules the next refresh, and makes any scheduled before stale.
func (m *Model) next() tea.Cmd {
	m.ticks++
	n := m.ticks
	return tea.Tick(m.opt.Interval, func(time.Time) tea.Msg { return tickMsg{n} })
}

// Update handles a message; it never waits on the server.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	if _, ok := msg.(tickMsg); !ok {
		m.dirty = true // a tick changes nothing on the screen
	}
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.input.SetWidth(max(msg.Width-30, 10)) // room for the hint
		m.layout()
		m.scroll()
		return m, nil
	case FrameMsg:
		m.loading = false
		if msg.Err != nil {
			m.stale = msg.Err
		} else {
			m.stale = nil
			m.setFrame(msg.Frame)
		}
		return m, m.next()
	case tickMsg:
		// While an action runs, the tick is dropped: its outcome fetches
		// the next frame, and the ticks go on from there.
		if msg.n == m.ticks && !m.acting && !m.loading {
			m.loading = true
			return m, m.fetch()
		}
		return m, nil
	case actMsg:
		m.acting, m.leaving = false, false
		m.report(msg)
		if !m.loading {
			// Show what the action did now, not at the next tick.
			m.loading = true
			return m, m.fetch()
		}
		return m, nil
	case tea.KeyPressMsg:
		return m.key(msg)
	case tea.PasteMsg:
		// A paste is text for the filter being typed, never a key: not an
		// answer, not a command.
		if !m.typing {
			return m, nil
		}
	}
	if m.typing {
		var cmd tea.Cmd
		m.input, cmd = m.input.Update(msg)
		return m, cmd
	}
	return m, nil
}

func (m *Model) key(k tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	if key.Matches(k, keymap.interrupt.Binding) {
		return m.quit()
	}
	switch {
	case m.ask != nil:
		return m.answer(k)
	case m.typing:
		switch {
		case key.Matches(k, keymap.apply.Binding):
			m.typing = false
			m.input.Blur()
			m.setFilter(m.input.Value())
			return m, nil
		case key.Matches(k, keymap.clear.Binding):
			m.typing = false
			m.input.Blur()
			m.input.SetValue("")
			m.setFilter("")
			return m, nil
		}
		var cmd tea.Cmd
		m.input, cmd = m.input.Update(k)
		return m, cmd
	case m.help:
		m.help = false
		return m, nil
	case m.detail != nil:
		// The view clamps detailTop to the text's length.
		switch km := &keymap; {
		case key.Matches(k, km.back.Binding):
			m.detail = nil
		case key.Matches(k, km.down.Binding):
			m.detailTop++
		case key.Matches(k, km.up.Binding):
			m.detailTop = max(m.detailTop-1, 0)
		case key.Matches(k, km.scrollPage.Binding):
			m.detailTop += m.height - 2
		case key.Matches(k, km.pageUp.Binding):
			m.detailTop = max(m.detailTop-m.height+2, 0)
		case key.Matches(k, km.home.Binding):
			m.detailTop = 0
		}
		return m, nil
	}
	switch km := &keymap; {
	case key.Matches(k, km.quit.Binding):
		return m.quit()
	case key.Matches(k, km.up.Binding):
		m.move(-1)
	case key.Matches(k, km.down.Binding):
		m.move(1)
	case key.Matches(k, km.pageUp.Binding):
		m.move(-m.rowsOnScreen())
	case key.Matches(k, km.pageDown.Binding):
		m.move(m.rowsOnScreen())
	case key.Matches(k, km.home.Binding):
		m.move(-len(m.view))
	case key.Matches(k, km.end.Binding):
		m.move(len(m.view))
	case key.Matches(k, km.mark.Binding):
		if r := m.selected(); r != nil && r.s.IsPrepared() {
			m.status, m.bad = preparedNote(r.s), true
		} else if r != nil && r.replay != nil {
			m.status, m.bad = replayNote, true
		} else if r != nil {
			if m.marks[r.id] {
				delete(m.marks, r.id)
			} else {
				m.marks[r.id] = true
			}
			m.move(1)
			m.summarize()
		}
	case key.Matches(k, km.filter.Binding):
		m.typing = true
		m.input.SetValue(m.filter)
		m.input.CursorEnd()
		return m, m.input.Focus()
	case key.Matches(k, km.clear.Binding):
		m.status, m.bad = "", false
		if m.filter != "" {
			m.input.SetValue("")
			m.setFilter("")
		}
	case key.Matches(k, km.sortBy.Binding):
		m.sortBy = (m.sortBy + 1) % nsortKeys
		m.rebuild()
	case key.Matches(k, km.blockers.Binding):
		m.blockers = !m.blockers
		m.rebuild()
	case key.Matches(k, km.details.Binding):
		if r := m.selected(); r != nil {
			id := r.id
			m.detail, m.detailTop = &id, 0
		}
	case key.Matches(k, km.showHelp.Binding):
		m.help = true
	case key.Matches(k, km.cancel.Binding):
		m.propose(action.Cancel)
	case key.Matches(k, km.terminate.Binding):
		m.propose(action.Terminate)
	}
	return m, nil
}

// quit quits, unless an action is running: then it says so first, and
// the second q (or Ctrl-C) quits without waiting for the outcome.
func (m *Model) quit() (tea.Model, tea.Cmd) {
	if m.acting && !m.leaving {
		m.leaving = true
		m.status, m.bad = "an action is running and its outcome is not known yet: q again quits without it", true
		return m, nil
	}
	return m, tea.Quit
}

// preparedNote says why top does not act on a prepared transaction.
func preparedNote(p *activity.Session) string {
	return "prepared transaction " + output.Clean(p.GID) + ": no backend to signal; ROLLBACK PREPARED ends it (pgreap unblock --rollback-prepared)"
}

// replayNote says why top does not act on the row of WAL replay.
const replayNote = "WAL replay (the startup process) is no session and is never signalled: act on the sessions that block it (b shows them)"

// propose asks before acting on the marked sessions, or the selected one.
func (m *Model) propose(kind action.Kind) {
	switch {
	case m.opt.ReadOnly:
		m.status, m.bad = "read-only (--read-only): cancel and terminate are off", true
		return
	case m.acting:
		m.status, m.bad = "an action is still running: wait for its outcome", true
		return
	}
	// The marked sessions on the screen's list; marks the filter hides
	// are left out, and the question says so.
	var sessions []activity.Session
	for i := range m.view {
		if m.marks[m.view[i].id] {
			sessions = append(sessions, *m.view[i].s)
		}
	}
	hidden := len(m.marks) - len(sessions)
	if len(sessions) == 0 {
		r := m.selected()
		switch {
		case r == nil:
			m.status, m.bad = "no session to "+string(kind), true
			return
		case r.s.IsPrepared():
			m.status, m.bad = preparedNote(r.s), true
			return
		case r.replay != nil:
			m.status, m.bad = replayNote, true
			return
		}
		sessions = append(sessions, *r.s)
	}
	m.ask = &question{kind: kind, snap: m.frame.Snap, sessions: sessions, hidden: hidden}
	m.asked = m.reads()
}

// reads is how many reads of the terminal the keys so far came from.
func (m *Model) reads() uint64 {
	if m.opt.Reads == nil {
		return 0
	}
	return m.opt.Reads()
}

func (m *Model) answer(k tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	switch {
	case key.Matches(k, keymap.yes.Binding):
		if m.opt.Reads != nil && m.reads() == m.asked {
			// Keys come one a message, whether typed one by one or
			// read together (typed ahead, or pasted where the terminal
			// does not mark pastes): a y read with the key that asked,
			// or before it, was not typed to answer a question seen.
			return m, nil
		}
		q := m.ask
		m.ask, m.acting = nil, true
		m.status, m.bad = fmt.Sprintf("%s: %s…", q.kind, sessionCount(len(q.sessions))), false
		ctx, src := m.opt.Context, m.opt.Source
		return m, func() (msg tea.Msg) {
			defer func() {
				if r := recover(); r != nil {
					msg = actMsg{q.kind, nil, fmt.Errorf("internal error, please report it (look with pgreap ls): %v", r)}
				}
			}()
			results, err := src.Act(ctx, q.kind, q.snap, q.sessions)
			return actMsg{q.kind, results, err}
		}
	case key.Matches(k, keymap.no.Binding):
		m.status, m.bad = fmt.Sprintf("%s: not confirmed, nothing done", m.ask.kind), false
		m.ask = nil
	}
	return m, nil
}

// report puts an action's outcomes in the status line: counts first (they
// survive a narrow screen), then each session with its outcome, and why
// when it was not the one asked for.
func (m *Model) report(msg actMsg) {
	want := action.Cancelled
	if msg.kind == action.Terminate {
		want = action.Terminated
	}
	counts := map[action.Outcome]int{}
	var order []action.Outcome
	var each []string
	m.bad = msg.err != nil
	for i := range msg.results {
		r := &msg.results[i]
		if counts[r.Outcome] == 0 {
			order = append(order, r.Outcome)
		}
		counts[r.Outcome]++
		delete(m.marks, identOf(&r.Session))
		line := fmt.Sprintf("%d %s", r.PID, r.Outcome)
		if r.Outcome != want {
			m.bad = true
			if r.Detail != "" {
				line += " (" + r.Detail + ")"
			}
		}
		each = append(each, line)
	}
	var b strings.Builder
	b.WriteString(string(msg.kind) + ": ")
	for i, o := range order {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", counts[o], o)
	}
	if len(each) > 0 {
		b.WriteString(" — " + strings.Join(each, " · "))
	}
	if msg.err != nil {
		if len(msg.results) == 0 {
			b.WriteString("failed, nothing done")
		}
		b.WriteString(": " + msg.err.Error())
	}
	m.status = clean(b.String())
	m.done = append(m.done, m.status)
	m.summarize()
}

func sessionCount(n int) string {
	if n == 1 {
		return "1 session"
	}
	return fmt.Sprintf("%d sessions", n)
}

func (m *Model) selected() *row {
	if m.cursor < 0 || m.cursor >= len(m.view) {
		return nil
	}
	return &m.view[m.cursor]
}

func (m *Model) move(d int) {
	m.cursor = max(min(m.cursor+d, len(m.view)-1), 0)
	m.scroll()
}

// scroll keeps the cursor on the screen.
func (m *Model) scroll() {
	n := m.rowsOnScreen()
	if m.cursor < m.top {
		m.top = m.cursor
	}
	if m.cursor >= m.top+n {
		m.top = m.cursor - n + 1
	}
	m.top = max(min(m.top, len(m.view)-n), 0)
}

func (m *Model) setFilter(s string) {
	m.filter = strings.ToLower(strings.TrimSpace(s))
	m.rebuild()
}

// setFrame takes a new snapshot: marks of sessions that ended are
// dropped, the cursor stays on the same session when it still is there.
func (m *Model) setFrame(f *Frame) {
	if m.frame != nil && sameSessions(m.frame.Snap, f.Snap) {
		// The same sessions at a later time (a quiet server): only the
		// ages move, and the rows keep their other cells.
		m.frame = f
		ages := map[time.Duration]string{}
		// The list's rows share their cells with all's; the tree's have
		// their own.
		if m.age(m.all, ages, true) && m.age(m.view, ages, m.blockers) {
			// Ages all moved by the same time: the order stands, and
			// the width of the age column is all that can change.
			m.widths[colAge] = width(titles[colAge])
			for i := range m.view {
				m.widths[colAge] = max(m.widths[colAge], len(m.view[i].cells[colAge])) // ASCII
			}
			m.layout()
			m.scroll()
			m.summarize()
			return
		}
		m.rebuild()
		return
	}
	m.frame = f
	m.all = rowsOf(f)
	live := make(map[ident]bool, len(m.all))
	for i := range m.all {
		live[m.all[i].id] = true
	}
	for id := range m.marks {
		if !live[id] {
			delete(m.marks, id)
		}
	}
	m.rebuild()
}

// age moves rows to the frame's time, and their age cells with cells;
// false if a row needs more than its age cell made again. Ages are
// written once for each second (ages holds them).
func (m *Model) age(rows []row, ages map[time.Duration]string, cells bool) bool {
	ok := true
	for i := range rows {
		r := &rows[i]
		r.age = r.s.StateAge(m.frame.Snap.Taken)
		switch w := m.frame.Waits[r.s.PID]; {
		case r.replay != nil:
			// Its cells are the replay's lag and wait, not a state's age.
			r.cells, ok = nil, false
		case w != r.wait || r.s.IsPrepared():
			r.wait, r.cells, ok = w, nil, false
		case cells && r.cells != nil:
			key := r.age
			if key >= time.Second {
				key = key.Truncate(time.Second) // all Age shows
			}
			a, seen := ages[key]
			if !seen {
				a = output.Age(r.age)
				ages[key] = a
			}
			r.cells[colAge] = a
		}
	}
	return ok
}

// sameSessions reports whether two snapshots hold the very same sessions
// (Source.Frame's answer on a quiet server).
func sameSessions(a, b *activity.Snapshot) bool {
	return len(a.Sessions) == len(b.Sessions) && len(a.Prepared) == len(b.Prepared) && a.Replay == b.Replay &&
		(len(a.Sessions) == 0 || &a.Sessions[0] == &b.Sessions[0]) &&
		(len(a.Prepared) == 0 || &a.Prepared[0] == &b.Prepared[0])
}

// replayRow is the row of the standby's WAL replay; nil on a primary.
func (m *Model) replayRow() *row {
	if len(m.all) > 0 && m.all[0].replay != nil {
		return &m.all[0]
	}
	return nil
}

// rebuild makes the view from all rows: the filter, then the sort or the
// blocking tree; the cursor follows its session.
func (m *Model) rebuild() {
	var at ident
	if r := m.selected(); r != nil {
		at = r.id
	}
	now := time.Time{}
	if m.frame != nil {
		now = m.frame.Snap.Taken
	}
	var rows []row
	if m.blockers {
		// The tree of every row, then the filter keeps whole trees: a
		// waiter found by the filter comes with the session at its root.
		tree := blockingTree(m.all)
		rows = make([]row, 0, len(tree)+1)
		if r := m.replayRow(); r != nil && r.replay.BlockersUnknown() {
			// A buffer pin: the server does not say whose, no tree
			// shows it, and it matters.
			rows = append(rows, *r)
		}
		for start := 0; start < len(tree); {
			end := start + 1
			for end < len(tree) && tree[end].depth > 0 {
				end++
			}
			if slices.ContainsFunc(tree[start:end], func(r row) bool { return r.matches(m.filter) }) {
				rows = append(rows, tree[start:end]...)
			}
			start = end
		}
	} else {
		rows = make([]row, 0, len(m.all))
		for i := range m.all {
			if !m.all[i].s.IsPrepared() && m.all[i].replay == nil && m.all[i].matches(m.filter) {
				m.all[i].render(now) // once per snapshot, whatever the view
				rows = append(rows, m.all[i])
			}
		}
		sortRows(rows, m.sortBy)
		if r := m.replayRow(); r != nil {
			// A standby's replay comes first, whatever the sort and the
			// filter, as in ls.
			rows = slices.Insert(rows, 0, *r)
		}
	}
	for i := range rows {
		rows[i].render(now) // the tree's rows: their pid cell is indented
	}
	m.view = rows
	m.widths = [ncols]int{}
	for i := range m.view {
		for c, cell := range m.view[i].cells[:colQuery] {
			m.widths[c] = max(m.widths[c], width(cell))
		}
	}
	for c, w := range columnMax {
		if w > 0 {
			m.widths[c] = min(m.widths[c], w)
		}
	}
	for i, title := range titles[:colQuery] {
		m.widths[i] = max(m.widths[i], width(title))
	}
	m.layout()
	m.cursor = min(m.cursor, max(len(m.view)-1, 0))
	for i := range m.view {
		if m.view[i].id == at {
			m.cursor = i
			break
		}
	}
	m.scroll()
	m.summarize()
}
