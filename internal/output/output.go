// Package output renders sessions (and, for actions, their outcomes) as a
// table for people, or as JSON or CSV for programs. Field names are
// pg_stat_activity's; times are RFC 3339 with zone and microseconds, so a
// JSON row carries a session's exact identity (pid, backend_start).
package output

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

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

// field is one output column: its pg_stat_activity name and its value as
// JSON and as text (CSV). A NULL is JSON null and an empty CSV cell.
type field struct {
	name string
	json any
}

func fields(r *Row, opt Options, results, extra bool) []field {
	s := &r.Session
	f := []field{
		{"pid", s.PID},
		{"leader_pid", nullInt(int64(s.LeaderPID))},
		{"datname", nullStr(s.Datname)},
		{"usename", nullStr(s.Usename)},
		{"application_name", s.ApplicationName},
		{"client_addr", nullAddr(s)},
		{"backend_type", nullStr(s.BackendType)},
		{"state", nullStr(s.State)},
		{"backend_start", nullTime(s.BackendStart)},
		{"xact_start", nullTime(s.XactStart)},
		{"query_start", nullTime(s.QueryStart)},
		{"state_change", nullTime(s.StateChange)},
		{"wait_event_type", nullStr(s.WaitEventType)},
		{"wait_event", nullStr(s.WaitEvent)},
		{"query", s.Query},
	}
	if opt.QueryID {
		f = append(f, field{"query_id", nullInt(s.QueryID)})
	}
	blockedBy := s.BlockedBy
	if blockedBy == nil {
		blockedBy = []int32{}
	}
	f = append(f, field{"blocked_by", blockedBy})
	if results {
		f = append(f, field{"action", nullStr(r.Action)}, field{"outcome", nullStr(r.Outcome)}, field{"detail", nullStr(r.Detail)})
	}
	if extra {
		for _, e := range r.Extra {
			f = append(f, field{e.Name, e.Value})
		}
	}
	return f
}

func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullInt(n int64) any {
	if n == 0 {
		return nil
	}
	return n
}

func nullAddr(s *activity.Session) any {
	if !s.ClientAddr.IsValid() {
		return nil
	}
	return s.ClientAddr.String()
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.Format(time.RFC3339Nano)
}

func writeJSON(w io.Writer, rows []Row, opt Options, results bool) error {
	// Objects are written field by field to keep pg_stat_activity's
	// column order; query text stays readable (no HTML escaping).
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	b.WriteString("[")
	for i := range rows {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n  {")
		for j, f := range fields(&rows[i], opt, results, true) {
			if j > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n    \"" + f.name + "\": ")
			if err := enc.Encode(f.json); err != nil {
				return err
			}
			b.Truncate(b.Len() - 1) // Encode ends with a newline
		}
		b.WriteString("\n  }")
	}
	if len(rows) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}

func writeCSV(w io.Writer, rows []Row, opt Options, results bool) error {
	cw := csv.NewWriter(w)
	var header []string
	for _, f := range fields(&Row{}, opt, results, false) {
		header = append(header, f.name)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	for i := range rows {
		var rec []string
		for _, f := range fields(&rows[i], opt, results, false) {
			rec = append(rec, csvText(f.json))
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func csvText(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case int32:
		return strconv.FormatInt(int64(v), 10)
	case int64:
		return strconv.FormatInt(v, 10)
	case []int32:
		parts := make([]string, len(v))
		for i, p := range v {
			parts[i] = strconv.FormatInt(int64(p), 10)
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(v)
}
