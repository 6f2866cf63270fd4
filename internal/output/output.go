// Package output renders sessions (and, for actions, their outcomes) as a
// table for people, or as JSON or CSV for programs. Field names are
// pg_stat_activity's; times are RFC 3339 with zone and microseconds, so a
// JSON row carries a session's exact identity (pid, backend_start).
package output

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/pgreap/pgreap/internal/activity"
)

// Format is an output format.
type Format string

// The output formats.
const (
	Table Format = "table"
	JSON  Format = "json"
	CSV   Format = "csv"
)

// ParseFormat checks an -o value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Table, JSON, CSV:
		return f, nil
	}
	return "", fmt.Errorf("--output %q: not an output format (table, json, csv)", s)
}

// Options shape the output.
type Options struct {
	// Now is what ages are measured against (the snapshot's server clock).
	Now time.Time
	// QueryID includes query_id (the server has it: 14+).
	QueryID bool
	// Color uses ANSI colours (a terminal, and no NO_COLOR, no --no-color).
	Color bool
	// Width cuts table rows to the terminal's width; 0 does not cut.
	Width int
	// Terminal: the output is a terminal. CSV cells, exact otherwise, get
	// their control characters (escape sequences, carriage returns, bidi
	// overrides) replaced, so a query text cannot drive the terminal.
	// Tables are always clean; JSON escapes them.
	Terminal bool
	// Pooler: poolers were asked (--pgbouncer): rows have client_port and
	// the pooled client of each pooler's server connection (pooler).
	Pooler bool
	// Standby: the server is a hot standby: rows have blocking_replay.
	Standby bool
}

// Row is a session and, in an action's output, what was done to it.
type Row struct {
	activity.Session
	// Action is cancel or terminate; empty in a listing.
	Action string
	// Outcome is one of PRODUCT.md's outcomes (terminated, changed, ...).
	Outcome string
	// Detail says why, when the outcome needs a reason.
	Detail string
	// Extra fields follow in JSON only (a plan's guard and server).
	Extra []Field
	// Replay is set on the row of a standby's startup process: it stands
	// for WAL replay, and says how far behind it is and who holds it up.
	Replay *activity.Replay
}

// ReplayRow is the row that shows a hot standby's WAL replay (its startup
// process, which is no client): in JSON with a "replay" object.
func ReplayRow(r *activity.Replay, now time.Time) Row {
	return Row{Session: r.Startup, Replay: r, Extra: []Field{{"replay", replayJSON(r, now)}}}
}

// replayObject is the "replay" object of the startup process's row.
type replayObject struct {
	// Lag is now() - pg_last_xact_replay_timestamp() in seconds; null
	// before anything was replayed.
	Lag             *float64           `json:"lag_seconds"`
	LagBytes        *int64             `json:"lag_bytes"`
	ReplayTimestamp *time.Time         `json:"replay_timestamp"`
	ReceiveLSN      *string            `json:"receive_lsn"`
	ReplayLSN       *string            `json:"replay_lsn"`
	WaitingSince    *time.Time         `json:"waiting_since"`
	Conflicts       activity.Conflicts `json:"conflicts"`
}

func replayJSON(r *activity.Replay, now time.Time) replayObject {
	o := replayObject{LagBytes: r.LagBytes, Conflicts: r.Conflicts}
	if lag := r.Lag(now); lag >= 0 {
		sec := lag.Seconds()
		o.Lag = &sec
		o.ReplayTimestamp = &r.ReplayTimestamp
	}
	if r.ReceiveLSN != "" {
		o.ReceiveLSN = &r.ReceiveLSN
	}
	if r.ReplayLSN != "" {
		o.ReplayLSN = &r.ReplayLSN
	}
	if !r.WaitingSince.IsZero() {
		o.WaitingSince = &r.WaitingSince
	}
	return o
}

// Field is an extra named JSON value of a row.
type Field struct {
	Name  string
	Value any
}

// Write renders sessions in the format.
func Write(w io.Writer, f Format, sessions []activity.Session, opt Options) error {
	rows := make([]Row, len(sessions))
	for i := range sessions {
		rows[i].Session = sessions[i]
	}
	return write(w, f, rows, opt, false)
}

// WriteRows renders a listing's rows: sessions, and the row of a standby's
// replay (ReplayRow).
func WriteRows(w io.Writer, f Format, rows []Row, opt Options) error {
	return write(w, f, rows, opt, false)
}

// WriteResults renders an action's rows: the sessions with their action,
// outcome and detail.
func WriteResults(w io.Writer, f Format, rows []Row, opt Options) error {
	return write(w, f, rows, opt, true)
}

func write(w io.Writer, f Format, rows []Row, opt Options, results bool) error {
	switch f {
	case JSON:
		return writeJSON(w, rows, opt, results)
	case CSV:
		return writeCSV(w, rows, opt, results)
	default:
		return writeTable(w, rows, opt, results)
	}
}

// field is one output column: its pg_stat_activity name and its value.
// A NULL is JSON null and an empty CSV cell.
type field struct {
	name string
	v    value
}

type kind uint8

const (
	kindNull kind = iota
	kindString
	kindInt
	kindInts
	kindStrs
	kindTime
	kindBool
	kindAny
)

// value is a field's value without boxing it in an interface: a listing of
// thousands of sessions would spend its time allocating otherwise.
type value struct {
	kind kind
	s    string
	n    int64
	ints []int32
	strs []string
	t    time.Time
	any  any
}

func str(s string) value { return value{kind: kindString, s: s} }

func boolValue(b bool) value {
	v := value{kind: kindBool}
	if b {
		v.n = 1
	}
	return v
}

func nullStr(s string) value {
	if s == "" {
		return value{}
	}
	return str(s)
}

func nullInt(n int64) value {
	if n == 0 {
		return value{}
	}
	return value{kind: kindInt, n: n}
}

func nullAddr(s *activity.Session) value {
	if !s.ClientAddr.IsValid() {
		return value{}
	}
	return str(s.ClientAddr.String())
}

func nullTime(t time.Time) value {
	if t.IsZero() {
		return value{}
	}
	return value{kind: kindTime, t: t}
}

// pidValue is the session's pid; a prepared transaction has none.
func pidValue(s *activity.Session) value {
	if s.IsPrepared() || s.PID == 0 {
		return value{}
	}
	return value{kind: kindInt, n: int64(s.PID)}
}

// fields appends the row's fields to dst.
func fields(dst []field, r *Row, opt Options, results, extra bool) []field {
	s := &r.Session
	f := append(dst,
		field{"pid", pidValue(s)},
		field{"leader_pid", nullInt(int64(s.LeaderPID))},
		field{"datname", nullStr(s.Datname)},
		field{"usename", nullStr(s.Usename)},
		field{"application_name", str(s.ApplicationName)},
		field{"client_addr", nullAddr(s)},
	)
	if opt.Pooler {
		f = append(f, field{"client_port", nullInt(int64(s.ClientPort))})
	}
	f = append(f,
		field{"backend_type", nullStr(s.BackendType)},
		field{"state", nullStr(s.State)},
		field{"backend_start", nullTime(s.BackendStart)},
		field{"xact_start", nullTime(s.XactStart)},
		field{"query_start", nullTime(s.QueryStart)},
		field{"state_change", nullTime(s.StateChange)},
		field{"wait_event_type", nullStr(s.WaitEventType)},
		field{"wait_event", nullStr(s.WaitEvent)},
		field{"query", str(s.Query)},
	)
	if opt.QueryID {
		f = append(f, field{"query_id", nullInt(s.QueryID)})
	}
	f = append(f, field{"blocked_by", value{kind: kindInts, ints: s.BlockedBy}},
		field{"blocked_by_prepared", value{kind: kindStrs, strs: s.BlockedByPrepared}},
		field{"wait_start", nullTime(s.WaitStart)})
	if opt.Standby {
		f = append(f, field{"blocking_replay", boolValue(s.BlockingReplay)})
	}
	if opt.Pooler {
		f = pooledFields(f, s, extra)
	}
	if results {
		f = append(f, field{"gid", nullStr(s.GID)}, field{"action", nullStr(r.Action)}, field{"outcome", nullStr(r.Outcome)}, field{"detail", nullStr(r.Detail)})
	}
	if extra {
		for _, e := range r.Extra {
			f = append(f, field{e.Name, value{kind: kindAny, any: e.Value}})
		}
	}
	return f
}

func writeJSON(w io.Writer, rows []Row, opt Options, results bool) error {
	// One object per line, so a session is one line for grep and diff;
	// fields in pg_stat_activity's column order; query text readable (no
	// HTML escaping). Values are appended directly: a listing of
	// thousands of sessions is on an operator's critical path.
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 4096)
	var fs []field
	buf = append(buf, '[')
	for i := range rows {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, "\n{"...)
		fs = fields(fs[:0], &rows[i], opt, results, true)
		for j, f := range fs {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, '"')
			buf = append(buf, f.name...)
			buf = append(buf, '"', ':')
			var err error
			if buf, err = appendJSON(buf, f.v); err != nil {
				return err
			}
		}
		buf = append(buf, '}')
		if _, err := bw.Write(buf); err != nil {
			return err
		}
		buf = buf[:0]
	}
	if len(rows) > 0 {
		buf = append(buf, '\n')
	}
	buf = append(buf, "]\n"...)
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	return bw.Flush()
}

// appendJSON appends v as JSON, as encoding/json without HTML escaping
// would.
func appendJSON(b []byte, v value) ([]byte, error) {
	switch v.kind {
	case kindNull:
		return append(b, "null"...), nil
	case kindString:
		return appendJSONString(b, v.s), nil
	case kindInt:
		return strconv.AppendInt(b, v.n, 10), nil
	case kindBool:
		return strconv.AppendBool(b, v.n != 0), nil
	case kindTime:
		b = append(b, '"')
		b = v.t.AppendFormat(b, time.RFC3339Nano)
		return append(b, '"'), nil
	case kindInts:
		b = append(b, '[')
		for i, n := range v.ints {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(n), 10)
		}
		return append(b, ']'), nil
	case kindStrs:
		b = append(b, '[')
		for i, x := range v.strs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, x)
		}
		return append(b, ']'), nil
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v.any); err != nil {
		return b, err
	}
	return append(b, EscapeJSON(bytes.TrimSuffix(out.Bytes(), []byte("\n")))...), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does with SetEscapeHTML(false)
// (invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped: JavaScript
// reads them as line ends), and escapes more: every control character (DEL
// and C1 too) and format character (bidi overrides), so that JSON shown on
// a terminal cannot drive it. The JSON means the same string.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\\ufffd"...)
			i += size
			start = i
			continue
		}
		if drivesTerminal(r) {
			b = append(b, s[start:i]...)
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				b = appendU(appendU(b, r1), r2)
			} else {
				b = appendU(b, r)
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// EscapeJSON rewrites, in JSON that encoding/json wrote, the characters
// appendJSONString escapes and encoding/json leaves raw (DEL, C1 controls,
// format characters such as bidi overrides): the same JSON, safe to show
// on a terminal (an audit log under tail -f). encoding/json writes them
// only inside strings, where an escape means the same.
func EscapeJSON(b []byte) []byte {
	unsafe := func(r rune) bool {
		// Tab, newline and CR are raw only as whitespace between values
		// (a line's end): in a string encoding/json escapes them.
		return r != '\t' && r != '\n' && r != '\r' && drivesTerminal(r)
	}
	if bytes.IndexFunc(b, unsafe) < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		switch {
		case size == 1 && r == utf8.RuneError, !unsafe(r):
			out = append(out, b[:size]...)
		default:
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				out = appendU(appendU(out, r1), r2)
			} else {
				out = appendU(out, r)
			}
		}
		b = b[size:]
	}
	return out
}

// JSONSafe is a writer for JSON lines (one complete JSON value per Write,
// as slog's JSON handler writes a record) that escapes what EscapeJSON
// escapes before passing them on to w.
func JSONSafe(w io.Writer) io.Writer { return jsonSafe{w} }

type jsonSafe struct{ w io.Writer }

func (j jsonSafe) Write(b []byte) (int, error) {
	if _, err := j.w.Write(EscapeJSON(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// appendU appends the JSON escape \uXXXX of a UTF-16 code unit.
func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

func writeCSV(w io.Writer, rows []Row, opt Options, results bool) error {
	cw := csv.NewWriter(w)
	var header []string
	for _, f := range fields(nil, &Row{}, opt, results, false) {
		header = append(header, f.name)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	for i := range rows {
		var rec []string
		for _, f := range fields(nil, &rows[i], opt, results, false) {
			cell := csvText(f.v)
			if opt.Terminal {
				cell = terminalSafe(cell)
			}
			rec = append(rec, cell)
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// terminalSafe replaces what a terminal would act on rather than show:
// control characters but newline and tab (CSV quotes those), line and
// paragraph separators, and format characters (bidi overrides).
func terminalSafe(s string) string {
	unsafe := func(r rune) bool {
		return r != '\n' && r != '\t' && drivesTerminal(r)
	}
	if strings.IndexFunc(s, unsafe) < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for _, r := range s { // invalid UTF-8 reads as U+FFFD
		if unsafe(r) {
			r = utf8.RuneError
		}
		b.WriteRune(r)
	}
	return b.String()
}

func csvText(v value) string {
	switch v.kind {
	case kindNull:
		return ""
	case kindString:
		return v.s
	case kindInt:
		return strconv.FormatInt(v.n, 10)
	case kindBool:
		return strconv.FormatBool(v.n != 0)
	case kindTime:
		return v.t.Format(time.RFC3339Nano)
	case kindInts:
		parts := make([]string, len(v.ints))
		for i, p := range v.ints {
			parts[i] = strconv.FormatInt(int64(p), 10)
		}
		return strings.Join(parts, " ")
	case kindStrs:
		// A GID may hold any text, spaces and commas too: a JSON array
		// keeps each one whole.
		if len(v.strs) == 0 {
			return ""
		}
		b, _ := appendJSON(nil, v)
		return string(b)
	}
	return fmt.Sprint(v.any)
}
