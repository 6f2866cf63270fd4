package output

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mattn/go-runewidth"

	"github.com/pgreap/pgreap/internal/activity"
)

// A column of the table; caps keep one long name from pushing the query
// off the screen. The last column (the query) takes what is left.
type column struct {
	title string
	max   int
}

var (
	listColumns = []column{
		{"PID", 0}, {"DB", 16}, {"USER", 16}, {"APP", 20}, {"CLIENT", 39}, {"STATE", 0},
		{"AGE", 0}, {"WAIT", 24}, {"BLOCKED BY", 24}, {"QUERY", 0},
	}
	resultColumns = []column{
		{"PID", 0}, {"DB", 16}, {"USER", 16}, {"APP", 20}, {"CLIENT", 39}, {"STATE", 0},
		{"AGE", 0}, {"ACTION", 0}, {"OUTCOME", 0}, {"DETAIL", 60}, {"QUERY", 0},
	}
)

const (
	sgrReset  = "\x1b[0m"
	sgrBold   = "\x1b[1m"
	sgrDim    = "\x1b[2m"
	sgrRed    = "\x1b[31m"
	sgrGreen  = "\x1b[32m"
	sgrYellow = "\x1b[33m"
)

// minQueryWidth is the least room the query gets before the row is cut.
const minQueryWidth = 20

func writeTable(w io.Writer, in []Row, opt Options, results bool) error {
	tableColumns := listColumns
	if results {
		tableColumns = resultColumns
	}
	rows := make([][]string, 0, len(in)+1)
	header := make([]string, len(tableColumns))
	for i, c := range tableColumns {
		header[i] = c.title
	}
	rows = append(rows, header)
	for i := range in {
		rows = append(rows, tableRow(&in[i], opt.Now, results))
	}
	widths := make([]int, len(tableColumns))
	for _, r := range rows {
		for i, cell := range r[:len(r)-1] {
			if w := runewidth.StringWidth(cell); w > widths[i] {
				widths[i] = w
			}
		}
	}
	for i, c := range tableColumns {
		if c.max > 0 && widths[i] > c.max {
			widths[i] = c.max
		}
	}
	queryWidth := 0 // no limit
	if opt.Width > 0 {
		used := 0
		for _, w := range widths[:len(widths)-1] {
			used += w + 2
		}
		queryWidth = max(opt.Width-used, minQueryWidth)
	}
	var b strings.Builder
	for n, r := range rows {
		b.Reset()
		used := 0 // columns on the line so far
		for i, cell := range r {
			last := i == len(r)-1
			width := widths[i]
			if last {
				width = queryWidth
			}
			if opt.Width > 0 && (width == 0 || width > opt.Width-used) {
				// A narrow terminal: what does not fit is cut, the
				// line never wraps.
				width = max(opt.Width-used, 0)
			}
			if width > 0 || opt.Width > 0 {
				cell = cut(cell, width)
			}
			var r *Row // nil: the header
			if n > 0 {
				r = &in[n-1]
			}
			b.WriteString(colorize(cell, tableColumns[i].title, r, opt))
			used += runewidth.StringWidth(cell)
			if !last {
				pad := widths[i] - runewidth.StringWidth(cell) + 2
				if opt.Width > 0 {
					pad = min(pad, max(opt.Width-used, 0))
				}
				b.WriteString(strings.Repeat(" ", pad))
				used += pad
			}
		}
		line := strings.TrimRight(b.String(), " ")
		if _, err := io.WriteString(w, line+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// Cut fits text in width terminal columns, marking a cut with an ellipsis.
func Cut(cell string, width int) string { return cut(cell, width) }

// cut fits a cell in width columns, marking a cut with an ellipsis.
func cut(cell string, width int) string {
	switch {
	case runewidth.StringWidth(cell) <= width:
		return cell
	case width <= 1:
		return runewidth.Truncate(cell, max(width, 0), "")
	}
	return runewidth.Truncate(cell, width, "…")
}

func colorize(cell, title string, r *Row, opt Options) string {
	if !opt.Color || cell == "" {
		return cell
	}
	if r == nil {
		return sgrBold + cell + sgrReset
	}
	s := &r.Session
	sgr := ""
	switch title {
	case "STATE":
		switch s.State {
		case "active":
			sgr = sgrGreen
		case "idle in transaction":
			sgr = sgrYellow
		case "idle in transaction (aborted)":
			sgr = sgrRed
		case "idle":
			sgr = sgrDim
		}
	case "WAIT":
		if s.WaitEventType == "Lock" {
			sgr = sgrRed
		}
	case "BLOCKED BY":
		sgr = sgrRed
	case "OUTCOME":
		switch r.Outcome {
		case "cancelled", "terminated", "rolled back", "planned":
			sgr = sgrGreen
		case "gone", "protected":
			sgr = sgrDim
		default: // changed, denied, survived: someone should look
			sgr = sgrRed
		}
	}
	if sgr == "" {
		return cell
	}
	return sgr + cell + sgrReset
}

// ListTitles are the titles of the columns of `ls`, in order.
func ListTitles() []string {
	titles := make([]string, len(listColumns))
	for i, c := range listColumns {
		titles[i] = c.title
	}
	return titles
}

// ListCells are a session's cells in the table of `ls` (ListTitles), ages
// measured at now, every cell safe to print on a terminal.
func ListCells(s *activity.Session, now time.Time) []string {
	return tableRow(&Row{Session: *s}, now, false)
}

// ReplayCells are the cells of a hot standby's replay row (ReplayRow) in
// the table of `ls`.
func ReplayCells(r *activity.Replay, now time.Time) []string {
	row := ReplayRow(r, now)
	return tableRow(&row, now, false)
}

func tableRow(r *Row, now time.Time, results bool) []string {
	s := &r.Session
	pid := strconv.Itoa(int(s.PID))
	switch {
	case s.IsPrepared():
		// No backend, no pid: its GID names it, cut as a cell is (an XA
		// GID is 130 characters and more; JSON has it whole).
		pid = cut(PreparedName(s.GID), maxGIDCell)
	case s.LeaderPID != 0 && s.LeaderPID != s.PID:
		pid = "└ " + pid
	}
	user, app, client := Who(s)
	client = clean(client)
	wait := s.WaitEventType
	if s.WaitEvent != "" {
		wait += ":" + s.WaitEvent
	}
	if wait == "Client:ClientRead" && strings.HasPrefix(s.State, "idle") {
		wait = "" // what idle means; JSON and CSV keep it
	}
	blocked := make([]string, 0, len(s.BlockedBy)+len(s.BlockedByPrepared))
	for _, p := range s.BlockedBy {
		blocked = append(blocked, strconv.Itoa(int(p)))
	}
	for _, g := range s.BlockedByPrepared {
		blocked = append(blocked, PreparedName(g))
	}
	state := clean(s.State)
	if s.BackendType != "client backend" && s.BackendType != "" {
		// Not an ordinary client: a parallel worker, an autovacuum
		// worker, a logical walsender ... say so where the eye looks.
		// (An extension names its background workers' type.)
		state = strings.TrimSpace(clean(s.BackendType) + " " + state)
	}
	age := Age(s.StateAge(now))
	query := clean(s.Query)
	if r.Replay != nil {
		state, age, query = "WAL replay", "", ReplaySummary(r.Replay, now)
		if s.PID == 0 {
			pid = "?" // hidden from this role, and waiting for no lock
		}
		if d := r.Replay.WaitAge(now); d > 0 {
			age = Age(d)
		}
		if r.Replay.BlockersUnknown() {
			blocked = append(blocked, "?")
		}
	}
	if results {
		return []string{
			pid,
			clean(s.Datname),
			clean(user),
			clean(app),
			client,
			state,
			age,
			r.Action,
			r.Outcome,
			clean(r.Detail),
			query,
		}
	}
	return []string{
		pid,
		clean(s.Datname),
		clean(user),
		clean(app),
		client,
		state,
		age,
		clean(wait),
		strings.Join(blocked, ","),
		query,
	}
}

// maxGIDCell is how wide a prepared transaction's PID cell gets.
const maxGIDCell = 32

// PreparedName is how a table names a prepared transaction: prepared:GID,
// the GID cleaned like a query (its owner chose the text).
func PreparedName(gid string) string { return "prepared:" + clean(gid) }

// clean makes text safe for one table cell on a terminal: runs of
// whitespace become one space, control characters (escape sequences among
// them) and invalid UTF-8 become U+FFFD, so no query text or application
// name can move the cursor, change colours or break a row.
func clean(s string) string {
	if plainASCII(s) {
		return s // the common case, without a copy
	}
	return cleanAll(s)
}

func cleanAll(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				b.WriteRune(utf8.RuneError)
				space = false
				continue
			}
		}
		switch {
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v':
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		case drivesTerminal(r):
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r)
		}
		space = false
	}
	return strings.TrimSpace(b.String())
}

// drivesTerminal: a terminal would act on r rather than show it (control
// characters, line and paragraph separators, format characters such as
// bidi overrides). Tables replace them, JSON escapes them, CSV on a
// terminal replaces them.
func drivesTerminal(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Cf, r)
}

// Clean is what the table does to a cell: one line, no control
// characters, safe to print on a terminal.
func Clean(s string) string { return clean(s) }

// ShellQuote makes s one word for a POSIX shell, to paste from a hint: a
// plain word stays as it is, others are single-quoted, and a word a
// terminal would act on is written $'...' with its control bytes escaped
// (bash, zsh, ksh), so that the hint is safe to print too.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return s
	}
	escape := !utf8.ValidString(s)
	for _, r := range s {
		escape = escape || drivesTerminal(r)
	}
	if !escape {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	var b strings.Builder
	b.WriteString("$'")
	for i, r := range s {
		switch size := utf8.RuneLen(r); {
		case r == '\\' || r == '\'':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case drivesTerminal(r):
			for j := range size {
				fmt.Fprintf(&b, "\\x%02x", s[i+j])
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// plainASCII: printable ASCII, no leading, trailing or doubled space:
// clean would return it unchanged.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || (c == ' ' && (i == 0 || i == len(s)-1 || s[i-1] == ' ')) {
			return false
		}
	}
	return true
}

// Age renders a duration compactly: 850ms, 42s, 3m07s, 2h05m, 3d04h.
func Age(d time.Duration) string {
	switch {
	case d <= 0:
		return ""
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// ReplaySummary says in a few words how a hot standby's replay stands: its
// lag, the WAL received and not yet replayed, and the queries the server
// cancelled for it ("lag 3s, 16 kB to replay; 2 queries cancelled for
// replay: 1 lock, 1 snapshot").
func ReplaySummary(r *activity.Replay, now time.Time) string {
	s := ReplayLag(r, now)
	if r.Paused() {
		s += "; paused (pg_wal_replay_resume() resumes it)"
	}
	if r.Hidden {
		s += "; this role cannot see the startup process (pg_read_all_stats)"
	}
	if c := ConflictsSummary(r.Conflicts); c != "" {
		s += "; " + c
	}
	return s
}

// ReplayLag says how far behind a hot standby's replay is: "lag 3s, 16 kB
// to replay" (the bytes only when the standby streams).
func ReplayLag(r *activity.Replay, now time.Time) string {
	var b strings.Builder
	switch lag := r.Lag(now); {
	case lag < 0:
		b.WriteString("nothing replayed yet")
	case lag < time.Millisecond:
		b.WriteString("lag 0s") // Age writes nothing for no time
	default:
		fmt.Fprintf(&b, "lag %s", Age(lag))
	}
	if r.LagBytes != nil {
		fmt.Fprintf(&b, ", %s to replay", Bytes(*r.LagBytes))
	}
	return b.String()
}

// ConflictsSummary says how many queries a standby cancelled for replay,
// by cause ("2 queries cancelled for replay: 1 lock, 1 snapshot"); "" when
// none.
func ConflictsSummary(c activity.Conflicts) string {
	n := c.Total()
	if n == 0 {
		return ""
	}
	var causes []string
	for _, k := range []struct {
		n    int64
		what string
	}{{c.Lock, "lock"}, {c.Snapshot, "snapshot"}, {c.BufferPin, "buffer pin"}, {c.Tablespace, "tablespace"}, {c.Deadlock, "deadlock"}} {
		if k.n > 0 {
			causes = append(causes, fmt.Sprintf("%d %s", k.n, k.what))
		}
	}
	return fmt.Sprintf("%d %s cancelled for replay: %s", n, plural(n, "query", "queries"), strings.Join(causes, ", "))
}

// Bytes is a byte count for people, in PostgreSQL's units
// (pg_size_pretty: 1 kB is 1024 bytes): 512 B, 16 kB, 3.2 MB, 1.5 GB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, suffix := float64(n), []string{"kB", "MB", "GB", "TB", "PB"}
	i := -1
	for f >= unit && i < len(suffix)-1 {
		f /= unit
		i++
	}
	if f < 9.95 {
		return fmt.Sprintf("%.1f %s", f, suffix[i])
	}
	return fmt.Sprintf("%.0f %s", f, suffix[i])
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
