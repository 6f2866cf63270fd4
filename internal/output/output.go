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

// Write renders sessions in the format.
func Write(w io.Writer, f Format, sessions []activity.Session, opt Options) error {
	switch f {
	case JSON:
		return writeJSON(w, sessions, opt)
	case CSV:
		return writeCSV(w, sessions, opt)
	default:
		return writeTable(w, sessions, opt)
	}
}

// field is one output column: its pg_stat_activity name and its value as
// JSON and as text (CSV). A NULL is JSON null and an empty CSV cell.
type field struct {
	name string
	json any
}

func fields(s *activity.Session, opt Options) []field {
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
	return append(f, field{"blocked_by", blockedBy})
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

func writeJSON(w io.Writer, sessions []activity.Session, opt Options) error {
	// Objects are written field by field to keep pg_stat_activity's
	// column order; query text stays readable (no HTML escaping).
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	b.WriteString("[")
	for i := range sessions {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n  {")
		for j, f := range fields(&sessions[i], opt) {
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
	if len(sessions) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}

func writeCSV(w io.Writer, sessions []activity.Session, opt Options) error {
	cw := csv.NewWriter(w)
	var header []string
	for _, f := range fields(&activity.Session{}, opt) {
		header = append(header, f.name)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	for i := range sessions {
		var rec []string
		for _, f := range fields(&sessions[i], opt) {
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
