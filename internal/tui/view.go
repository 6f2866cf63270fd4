package tui

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/mattn/go-runewidth"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
)

var (
	titles = output.ListTitles()
	// columnMax caps a column, as ls does, so that one long name does not
	// push the query off the screen.
	columnMax = [ncols]int{colDB: 16, colUser: 16, colApp: 20, colClient: 39, colWait: 28, colBlockedBy: 24}
)

// The smallest screen top draws on.
const (
	minWidth  = 40
	minHeight = 8
)

// minQueryWidth is the least room the query gets before columns are
// left out (dropOrder), on a narrow terminal.
const minQueryWidth = 24

// dropOrder is the order in which columns give way to the query; pid,
// state and age always stay (enter shows every field).
var dropOrder = []int{colClient, colApp, colDB, colUser, colWait, colBlockedBy}

// layout chooses the columns that fit the screen.
func (m *Model) layout() {
	m.cols = m.cols[:0]
	used := 2 + minQueryWidth
	for c := 0; c < colQuery; c++ {
		used += m.widths[c] + 2
	}
	dropped := map[int]bool{}
	for _, c := range dropOrder {
		if used <= m.width {
			break
		}
		if c == colBlockedBy && m.blockers {
			continue // in the tree, it tells a root that waits on a session not shown
		}
		dropped[c] = true
		used -= m.widths[c] + 2
	}
	for c := 0; c < colQuery; c++ {
		if !dropped[c] {
			m.cols = append(m.cols, c)
		}
	}
}

// A query whose age passes these is worth a look, then worth acting on.
const (
	ageWarn  = time.Minute
	ageAlarm = 10 * time.Minute
)

// styles are the colours; without colour, text stays plain. The program
// brings them down to what the terminal shows.
type styles struct {
	on                                              bool
	bold, dim, cursor, mark, green, yellow, red, hi style
}

// style is a lipgloss style as the escape sequences around one line of
// text: lipgloss renders it once, not for every cell of every frame.
type style struct{ before, after string }

func newStyle(s lipgloss.Style) style {
	before, after, _ := strings.Cut(s.Render("\x00"), "\x00")
	return style{before, after}
}

func newStyles(color bool) styles {
	if !color {
		return styles{}
	}
	c := func(n string) lipgloss.Style { return lipgloss.NewStyle().Foreground(lipgloss.Color(n)) }
	return styles{
		on:     true,
		bold:   newStyle(lipgloss.NewStyle().Bold(true)),
		dim:    newStyle(lipgloss.NewStyle().Faint(true)),
		cursor: newStyle(lipgloss.NewStyle().Reverse(true)),
		mark:   newStyle(c("5").Bold(true)),
		green:  newStyle(c("2")),
		yellow: newStyle(c("3")),
		red:    newStyle(c("1")),
		hi:     newStyle(c("6")),
	}
}

// paint styles one line of text (no newline).
func (st *styles) paint(s style, text string) string {
	if !st.on || text == "" || s.before == "" {
		return text
	}
	return s.before + text + s.after
}

func width(s string) int { return runewidth.StringWidth(s) }

// clean: text from the server, or an error that quotes it, made safe for
// one line of the terminal.
func clean(s string) string { return output.Clean(s) }

const blanks = "                                                                                " +
	"                                                                                "

// pad writes text and spaces up to w columns.
func pad(b *strings.Builder, text string, w int) {
	b.WriteString(text)
	for n := w - width(text); n > 0; n -= len(blanks) {
		b.WriteString(blanks[:min(n, len(blanks))])
	}
}

// View is the screen, on the terminal's alternate screen. It is drawn
// again only when a message changed the model: the program asks for it
// after every message, the ticks between refreshes included.
func (m *Model) View() tea.View {
	if m.dirty {
		m.drawn, m.dirty = m.draw(), false
	}
	v := tea.NewView(m.drawn)
	v.AltScreen = true
	return v
}

// draw draws the screen; it reads the model and changes nothing.
func (m *Model) draw() string {
	if m.width <= 0 || m.height <= 0 {
		return ""
	}
	if m.width < minWidth || m.height < minHeight {
		return output.Cut(fmt.Sprintf("too small: %dx%d < %dx%d", m.width, m.height, minWidth, minHeight), m.width)
	}
	switch {
	case m.help:
		return m.fit(helpLines(m.opt.ReadOnly))
	case m.detail != nil:
		for i := range m.all {
			if m.all[i].id == *m.detail {
				return m.scrolled(m.detailLines(&m.all[i]))
			}
		}
		return m.fit([]string{fmt.Sprintf("session %d has ended", m.detail.pid), "", "esc: back"})
	}
	var b strings.Builder
	b.Grow((m.height + 1) * (m.width + 16))
	b.WriteString(m.cutLine(m.headerLine()))
	b.WriteByte('\n')
	b.WriteString(m.cutLine(m.summary))
	b.WriteByte('\n')
	b.WriteString(m.st.paint(m.st.bold, m.cutLine(m.line(titles))))
	n := m.rowsOnScreen()
	for i := m.top; i < m.top+n && i < len(m.view); i++ {
		b.WriteByte('\n')
		b.WriteString(m.rowLine(i))
	}
	if len(m.view) == 0 && m.frame != nil {
		b.WriteString("\n" + m.cutLine("  (no session to show)"))
		n--
	}
	for i := len(m.view) - m.top; i < n; i++ {
		b.WriteByte('\n')
	}
	for _, l := range m.footer() {
		b.WriteByte('\n')
		b.WriteString(l)
	}
	return b.String()
}

// rowsOnScreen is how many table rows fit between the header and the
// footer.
func (m *Model) rowsOnScreen() int {
	return max(m.height-3-len(m.footer()), 1)
}

func (m *Model) headerLine() string {
	h := m.st.paint(m.st.bold, "pgreap top")
	switch {
	case m.frame == nil && m.stale == nil:
		return h + " · connecting…"
	case m.frame != nil:
		h += " · " + clean(m.frame.Server)
		if m.frame.Snap.Replay != nil {
			h += " · standby"
		}
		h += " · " + m.frame.Snap.Taken.Format("15:04:05") + " every " + m.opt.Interval.String()
	}
	if m.opt.ReadOnly {
		h += " · read-only"
	}
	if m.blockers {
		h += " · " + m.st.paint(m.st.hi, "blocking tree")
	} else {
		h += " · sort " + m.sortBy.String()
	}
	if m.filter != "" {
		h += " · " + m.st.paint(m.st.hi, fmt.Sprintf("filter %q: %d shown", m.filter, len(m.view)))
	}
	if len(m.marks) > 0 {
		h += " · " + m.st.paint(m.st.mark, fmt.Sprintf("%d marked", len(m.marks)))
	}
	if m.stale != nil {
		h += " · " + m.st.paint(m.st.red, "stale")
	}
	return h
}

// summarize makes the header's second line: connections by state, the
// longest transaction, the lock waits, and how the view is made.
func (m *Model) summarize() {
	if m.frame == nil {
		m.summary = ""
		return
	}
	var states = map[string]int{}
	workers, waiting, prepared := 0, 0, 0
	var longest time.Duration
	var longestPID int32
	replay := 0
	for i := range m.all {
		s := m.all[i].s
		if m.all[i].replay != nil {
			replay++
			continue
		}
		if s.IsPrepared() {
			prepared++
			continue
		}
		states[s.State]++
		workers += len(m.all[i].workers)
		if s.Waits() {
			waiting++
		}
		if !s.XactStart.IsZero() && m.frame.Snap.Taken.Sub(s.XactStart) > longest {
			longest, longestPID = m.frame.Snap.Taken.Sub(s.XactStart), s.PID
		}
	}
	parts := []string{fmt.Sprintf("%s: %d active, %d idle", sessionCount(len(m.all)-prepared-replay), states["active"], states["idle"])}
	iit := states["idle in transaction"] + states["idle in transaction (aborted)"]
	if iit > 0 {
		parts[0] += m.st.paint(m.st.yellow, fmt.Sprintf(", %d idle in transaction", iit))
	}
	if waiting > 0 {
		parts = append(parts, m.st.paint(m.st.red, fmt.Sprintf("%d waiting on locks", waiting)))
	}
	if m.frame.Poolers {
		// Clients a pooler holds get no backend: no row shows them.
		w := fmt.Sprintf("%d client%s waiting in poolers", m.frame.PoolerWaiting, plural(m.frame.PoolerWaiting))
		if m.frame.PoolerWaiting > 0 {
			w = m.st.paint(m.st.red, w)
		}
		parts = append(parts, w)
	}
	if prepared > 0 {
		hint := " (b shows them)"
		if m.blockers {
			hint = ""
		}
		parts = append(parts, m.st.paint(m.st.red, fmt.Sprintf("prepared transactions blocking: %d%s", prepared, hint)))
	}
	if workers > 0 {
		parts = append(parts, fmt.Sprintf("%d parallel workers", workers))
	}
	if longest > 0 {
		parts = append(parts, fmt.Sprintf("longest transaction %s (pid %d)", output.Age(longest), longestPID))
	}
	if r := m.frame.Snap.Replay; r != nil {
		// First: on a standby, how far behind it is matters most.
		parts = append(m.replayParts(r), parts...)
	}
	m.summary = strings.Join(parts, " · ")
}

// replayParts say how a standby's replay stands: its lag; when it waits,
// for how long and on whom; the queries the server cancelled for it.
func (m *Model) replayParts(r *activity.Replay) []string {
	now := m.frame.Snap.Taken
	parts := []string{"replay " + output.ReplayLag(r, now)}
	if r.Waits() {
		w := "replay waits"
		if d := r.WaitAge(now); d > 0 {
			w += " " + output.Age(d)
		}
		switch {
		case r.BlockersUnknown():
			w += " on a " + r.WaitKind() + ": blockers unknown"
		default:
			w += " on pid " + joinPIDs(r.Startup.BlockedBy)
			if !m.blockers {
				w += " (b shows them)"
			}
		}
		parts = append(parts, m.st.paint(m.st.red, w))
	}
	if c := output.ConflictsSummary(r.Conflicts); c != "" {
		parts = append(parts, m.st.paint(m.st.yellow, c))
	}
	return parts
}

// line lays out cells in the columns; the query takes what is left.
func (m *Model) line(cells []string) string {
	var b strings.Builder
	b.WriteString("  ")
	used := 2
	for _, c := range m.cols {
		cell := output.Cut(cells[c], m.widths[c])
		pad(&b, cell, m.widths[c]+2)
		used += m.widths[c] + 2
	}
	b.WriteString(output.Cut(cells[colQuery], max(m.width-used, 0)))
	return b.String()
}

// rowLine draws row i of the view: the cursor, the mark, the cells,
// coloured by state and age unless it is under the cursor.
func (m *Model) rowLine(i int) string {
	r := &m.view[i]
	cur, mark := " ", " "
	if i == m.cursor {
		cur = ">"
	}
	if m.marks[r.id] {
		mark = "*"
	}
	if i == m.cursor || !m.st.on {
		l := cur + mark + m.cutLine(m.line(r.cells))[2:]
		if i == m.cursor && m.st.on {
			var b strings.Builder
			pad(&b, l, m.width)
			return m.st.paint(m.st.cursor, b.String())
		}
		return l
	}
	var b strings.Builder
	b.WriteString(cur)
	if mark == "*" {
		mark = m.st.paint(m.st.mark, mark)
	}
	b.WriteString(mark)
	used := 2
	for _, c := range m.cols {
		w := m.widths[c]
		if used+w > m.width {
			w = max(m.width-used, 0)
		}
		cell := output.Cut(r.cells[c], w)
		b.WriteString(m.st.paint(m.cellStyle(r, c), cell))
		used += width(cell)
		n := min(m.widths[c]+2-width(cell), max(m.width-used, 0))
		b.WriteString(blanks[:min(n, len(blanks))])
		used += n
	}
	b.WriteString(output.Cut(r.cells[colQuery], max(m.width-used, 0)))
	return b.String()
}

func (m *Model) cellStyle(r *row, c int) style {
	s := r.s
	switch c {
	case colState:
		switch s.State {
		case "active":
			return m.st.green
		case "idle in transaction":
			return m.st.yellow
		case "idle in transaction (aborted)":
			return m.st.red
		case "idle":
			return m.st.dim
		}
	case colAge:
		if s.State == "idle" {
			return m.st.dim
		}
		switch {
		case r.age >= ageAlarm:
			return m.st.red
		case r.age >= ageWarn:
			return m.st.yellow
		}
	case colWait:
		if s.WaitEventType == "Lock" {
			return m.st.red
		}
	case colBlockedBy:
		return m.st.red
	case colPID:
		if len(r.workers) > 0 {
			return m.st.hi
		}
	}
	return style{}
}

// cutLine cuts a line with no escape sequences to the screen's width.
func (m *Model) cutLine(s string) string {
	if m.st.on && strings.Contains(s, "\x1b") {
		return ansi.Truncate(s, m.width, "")
	}
	return output.Cut(s, m.width)
}

// footer is the bottom of the screen: the question, the filter being
// typed, the status of the last action, or the keys.
func (m *Model) footer() []string {
	switch {
	case m.ask != nil:
		return m.questionLines()
	case m.typing:
		return []string{m.input.View() + "   " + m.st.paint(m.st.dim, "enter apply · esc clear")}
	case m.stale != nil || m.status != "":
		var lines []string
		if m.status != "" {
			st := m.st.green
			if m.bad {
				st = m.st.red
			}
			// Every outcome of an action, on up to three lines.
			for _, l := range wrap(m.status, m.width)[:min(len(wrap(m.status, m.width)), maxStatusLines)] {
				lines = append(lines, m.st.paint(st, m.cutLine(l)))
			}
		}
		if m.stale != nil {
			lines = append(lines, m.st.paint(m.st.red, m.cutLine("refresh failed, retrying every "+m.opt.Interval.String()+": "+clean(m.stale.Error()))))
		}
		return lines
	}
	return []string{m.st.paint(m.st.dim, m.cutLine(keymap.footerKeys(m.opt.ReadOnly)))}
}

// maxStatusLines is how many lines the status of an action takes at most
// (all of it is printed again when top exits).
const maxStatusLines = 3

// maxAsked is how many sessions a question lists before "and N more".
const maxAsked = 5

// questionLines name what y will do: how many sessions, and which.
func (m *Model) questionLines() []string {
	q := m.ask
	verb := map[bool]string{true: "cancel the query of", false: "terminate"}[q.kind == "cancel"]
	title := fmt.Sprintf("%s %s? y/n", verb, sessionCount(len(q.sessions)))
	if q.hidden > 0 {
		title += fmt.Sprintf("   (%d marked, not on the list now, left out)", q.hidden)
	}
	lines := []string{m.st.paint(m.st.yellow, m.cutLine(title))}
	// As many as fit with a few rows of the table still on the screen.
	most := max(min(maxAsked, m.height-7), 1)
	for i := range q.sessions {
		if i == most && len(q.sessions) > most+1 {
			lines = append(lines, m.cutLine(fmt.Sprintf("  … and %d more", len(q.sessions)-most)))
			break
		}
		lines = append(lines, m.cutLine("  "+describe(&q.sessions[i], q.snap.Taken)))
	}
	return lines
}

// describe is one session in a line: enough to know it is the right one.
func describe(s *activity.Session, now time.Time) string {
	c := output.ListCells(s, now)
	who := c[colUser] + "@" + c[colDB]
	if c[colApp] != "" {
		who += " " + c[colApp]
	}
	if c[colClient] != "" {
		who += " " + c[colClient]
	}
	state := c[colState]
	if c[colAge] != "" {
		state += " " + c[colAge]
	}
	return fmt.Sprintf("%d %s, %s: %s", s.PID, who, state, c[colQuery])
}

// scrolled shows the lines from detailTop, as many as fit above a line
// that says where one is and how to move.
func (m *Model) scrolled(lines []string) string {
	n := m.height - 1
	top := max(min(m.detailTop, len(lines)-n), 0)
	end := min(top+n, len(lines))
	shown := append([]string(nil), lines[top:end]...)
	for len(shown) < n {
		shown = append(shown, "")
	}
	where := "esc: back"
	if len(lines) > n {
		where = fmt.Sprintf("lines %d-%d of %d · ↑↓ PgUp PgDn scroll · esc: back", top+1, end, len(lines))
	}
	return m.fit(append(shown, m.st.paint(m.st.dim, where)))
}

// fit cuts lines to the screen.
func (m *Model) fit(lines []string) string {
	if len(lines) > m.height {
		lines = lines[:m.height]
	}
	for i, l := range lines {
		lines[i] = m.cutLine(l)
	}
	return strings.Join(lines, "\n")
}

func helpLines(readOnly bool) []string {
	lines := append([]string{"pgreap top: keys", ""}, keymap.helpKeys()...)
	lines = append(lines,
		"",
		"c and t ask y/n first, naming the sessions. The statement that signals re-checks",
		"each session's identity (pid and backend_start, and for a cancel query_start):",
		"a session that moved on is reported changed and left alone. Parallel workers",
		"(+N after a pid) die with their leader; pgreap's own session, walsenders and",
		"autovacuum workers are protected. Terminate waits up to 5s for each to be gone.",
	)
	if readOnly {
		lines = append(lines, "", "read-only (--read-only): c and t are off.")
	}
	return append(lines, "", "any key: back")
}

// detailLines are every field of a session and its whole query.
func (m *Model) detailLines(r *row) []string {
	s := r.s
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format("2006-01-02 15:04:05.000000Z07:00")
	}
	now := m.frame.Snap.Taken
	state := s.State
	if r.age > 0 {
		state += " for " + output.Age(r.age)
	}
	wait := s.WaitEventType
	if s.WaitEvent != "" {
		wait += ":" + s.WaitEvent
	}
	if r.wait > 0 {
		wait += " for " + output.Age(r.wait)
	}
	client := ""
	if s.ClientAddr.IsValid() {
		client = s.ClientAddr.String()
	}
	xact := ts(s.XactStart)
	if !s.XactStart.IsZero() {
		xact += " (" + output.Age(now.Sub(s.XactStart)) + ")"
	}
	fields := [][2]string{
		{"pid", pidOrEmpty(s.PID)}, // none for a prepared transaction or a hidden startup process
		{"leader_pid", pidOrEmpty(s.LeaderPID)},
		{"datname", s.Datname},
		{"usename", s.Usename},
		{"application_name", s.ApplicationName},
		{"client_addr", client},
		{"backend_type", s.BackendType},
		{"state", state},
		{"backend_start", ts(s.BackendStart)},
		{"xact_start", xact},
		{"query_start", ts(s.QueryStart)},
		{"state_change", ts(s.StateChange)},
		{"wait_event", wait},
		{"blocked_by", joinPIDs(s.BlockedBy)},
	}
	if s.Pooler != nil {
		_, _, who := output.Who(s)
		if k := s.Pooler; k.Served && !k.Unknown {
			addr := "local"
			if k.ClientAddr != "" {
				addr = net.JoinHostPort(k.ClientAddr, strconv.Itoa(k.ClientPort))
			}
			who = fmt.Sprintf("%s via %s · user %s · app %s · %s mode", addr, k.Pooler, k.User, k.ApplicationName, k.PoolMode)
		}
		fields = append(fields, [2]string{"pooler", who})
	}
	if len(s.BlockedByPrepared) > 0 {
		fields = append(fields, [2]string{"prepared blockers", strings.Join(s.BlockedByPrepared, ", ")})
	}
	if s.IsPrepared() {
		fields[0] = [2]string{"gid", s.GID}
	}
	if m.frame.Snap.HasQueryID() && s.QueryID != 0 {
		fields = append(fields, [2]string{"query_id", strconv.FormatInt(s.QueryID, 10)})
	}
	if len(r.workers) > 0 {
		pids := make([]int32, len(r.workers))
		for i, w := range r.workers {
			pids[i] = w.PID
		}
		fields = append(fields, [2]string{"parallel workers", joinPIDs(pids)})
	}
	title := "session " + pidOrEmpty(s.PID)
	if s.PID == 0 {
		title = "WAL replay" // the startup process, hidden from this role
	}
	lines := []string{m.st.paint(m.st.bold, title), ""}
	for _, f := range fields {
		lines = append(lines, fmt.Sprintf("  %-18s %s", f[0], clean(f[1])))
	}
	lines = append(lines, "", "  query:")
	for _, l := range strings.Split(strings.ReplaceAll(s.Query, "\t", "    "), "\n") {
		l = strings.TrimRight(l, "\r ")
		if strings.TrimSpace(l) == "" {
			lines = append(lines, "")
			continue
		}
		indent := len(l) - len(strings.TrimLeft(l, " "))
		l = clean(l) // one line: no control characters
		lines = append(lines, wrap("    "+strings.Repeat(" ", min(indent, 40))+l, max(m.width, 8))...)
	}
	return lines
}

// wrap cuts a line into lines of at most w columns.
func wrap(s string, w int) []string {
	var out []string
	for width(s) > w {
		head := runewidth.Truncate(s, w, "")
		if head == "" {
			break
		}
		out = append(out, head)
		s = "    " + s[len(head):]
	}
	return append(out, s)
}

func pidOrEmpty(p int32) string {
	if p == 0 {
		return ""
	}
	return strconv.Itoa(int(p))
}

func joinPIDs(pids []int32) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
