package action

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/selector"
)

// PlanVersion is the version of the plan format that --dry-run -o json
// writes and apply reads. Version 2 records the selection; version 3 the
// server's system_identifier.
const PlanVersion = 3

// PlanHeader identifies the server run a plan was made on, and the
// selection it was made with; every row of a plan file carries it as
// "plan". The server is named by its system_identifier and
// pg_postmaster_start_time(); host and port say how it was reached.
type PlanHeader struct {
	Version int    `json:"version"`
	Host    string `json:"host"`
	Port    uint16 `json:"port"`
	// SystemIdentifier is pg_control_system().system_identifier in
	// decimal, unsigned as pg_controldata prints it, as a string: a
	// 64-bit number is more than a JSON reader such as JavaScript's
	// keeps exactly. Null when the plan has no session to act on.
	SystemIdentifier    *string   `json:"system_identifier"`
	PostmasterStartTime time.Time `json:"postmaster_start_time"`
	// Selection is what chose the sessions (null: named by pid alone):
	// apply's signalling statement checks it again, so a session that no
	// longer matches is left alone.
	Selection *selector.Spec `json:"selection"`
}

// Header is the plan's header.
func (p *Plan) Header() PlanHeader {
	h := PlanHeader{Version: PlanVersion, Host: p.Server.Host, Port: p.Server.Port, PostmasterStartTime: p.Server.Started}
	if p.Server.SystemID != 0 {
		id := strconv.FormatUint(p.Server.SystemID, 10)
		h.SystemIdentifier = &id
	}
	if p.sel != nil && !p.sel.Empty() {
		spec := p.sel.Spec()
		h.Selection = &spec
	}
	return h
}

// planRow is one row of a plan file: the fields --dry-run -o json writes.
// The header ("plan") is read on its own, once per plan when the rows
// repeat it as written.
type planRow struct {
	PID             *int32          `json:"pid"`
	LeaderPID       *int32          `json:"leader_pid"`
	Datname         *string         `json:"datname"`
	Usename         *string         `json:"usename"`
	ApplicationName *string         `json:"application_name"`
	ClientAddr      *string         `json:"client_addr"`
	BackendType     *string         `json:"backend_type"`
	State           *string         `json:"state"`
	BackendStart    *time.Time      `json:"backend_start"`
	XactStart       *time.Time      `json:"xact_start"`
	QueryStart      *time.Time      `json:"query_start"`
	StateChange     *time.Time      `json:"state_change"`
	WaitEventType   *string         `json:"wait_event_type"`
	WaitEvent       *string         `json:"wait_event"`
	Query           *string         `json:"query"`
	QueryID         *int64          `json:"query_id"`
	BlockedBy       []int32         `json:"blocked_by"`
	BlockedByPrep   []string        `json:"blocked_by_prepared"`
	WaitStart       *time.Time      `json:"wait_start"`
	GID             *string         `json:"gid"`
	Action          *string         `json:"action"`
	Outcome         *string         `json:"outcome"`
	Detail          *string         `json:"detail"`
	Guard           []string        `json:"guard"`
	Plan            json.RawMessage `json:"plan"`
	// Behind poolers (--pgbouncer): the backend's client_port, and the
	// pooled client it served when the plan was made. Never acted on:
	// apply asks the poolers again.
	ClientPort *int32          `json:"client_port"`
	Pooler     json.RawMessage `json:"pooler"`
}

var outcomes = []Outcome{Cancelled, Terminated, Gone, Changed, Denied, Protected, Survived, Planned}

// optionalKeys may be missing from a row: query_id exists on 14+ only;
// client_port and pooler are written only behind poolers; wait_start is
// not in the plans of versions before it.
var optionalKeys = []string{"query_id", "client_port", "pooler", "wait_start"}

// The names a row, its header and its selection have, as written.
var (
	rowKeys       = jsonFields(planRow{})
	headerKeys    = jsonFields(PlanHeader{})
	selectionKeys = jsonTags(reflect.TypeOf(selector.Spec{}))
)

// maxPlanSize bounds what ReadPlan reads: a plan of every session of a
// server with 10,000 connections and long queries fits.
const maxPlanSize = 256 << 20

// ReadPlan reads a plan file strictly: one JSON array of rows as
// --dry-run -o json writes them, with no unknown, missing or repeated
// field, all made on one server run. Only the rows whose outcome is
// planned are kept: those are the sessions the plan acts on, each named by
// its identity (pid, backend_start, and the query pinned when its guard
// says so) and described by its datname, usename, application_name and
// client_addr, which the signalling statement checks; nothing else of the
// file is kept. Rows with no action, no outcome and no guard (the waiters
// of unblock) are context and skipped.
//
// It reads each row once, in time linear in the size of the file.
func ReadPlan(r io.Reader) (*Plan, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxPlanSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxPlanSize {
		return nil, fmt.Errorf("more than %d MiB: not a plan", maxPlanSize>>20)
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, fmt.Errorf("not a plan (a JSON array of sessions from --dry-run -o json): %s", jsonError(err))
	}
	if len(raws) == 0 {
		return nil, errors.New("the plan has no sessions")
	}
	plan := &Plan{}
	var header json.RawMessage // the first acted row's, as written
	var headerSel *selector.Spec
	planned := map[int32]bool{}
	for n, raw := range raws {
		where := fmt.Sprintf("session %d", n+1)
		keys, err := scanRow(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, k := range rowKeys {
			if !slices.Contains(keys.top, k) && !slices.Contains(optionalKeys, k) {
				return nil, fmt.Errorf("%s: missing field %q", where, k)
			}
		}
		if err := knownKeys(keys.top, rowKeys); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		var row planRow
		if err := json.Unmarshal(raw, &row); err != nil {
			return nil, fmt.Errorf("%s: %s", where, jsonError(err))
		}
		sameHeader := header != nil && bytes.Equal(row.Plan, header)
		if !sameHeader {
			// A plan of another version is refused for what it is, before
			// its fields are: it is no use to say which are missing.
			if err := checkVersion(row.Plan); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if keys.plan != nil {
				if err := knownKeys(keys.plan, headerKeys); err != nil {
					return nil, fmt.Errorf("%s: \"plan\": %w", where, err)
				}
				for _, k := range headerKeys {
					if !slices.Contains(keys.plan, k) {
						return nil, fmt.Errorf("%s: \"plan\": missing field %q", where, k)
					}
				}
			}
			if err := knownKeys(keys.selection, selectionKeys); err != nil {
				return nil, fmt.Errorf("%s: \"selection\": %w", where, err)
			}
		}
		if row.Action == nil && row.Outcome == nil && row.Guard == nil {
			// Context, never acted on: a waiter unblock shows behind
			// its root.
			continue
		}
		if row.GID != nil {
			// A prepared transaction at a root of unblock's tree: apply
			// never rolls one back (it has no pid to guard).
			if row.Outcome != nil && Outcome(*row.Outcome) == Planned {
				return nil, fmt.Errorf("%s: prepared transaction %q: apply does not roll back prepared transactions; 'pgreap unblock --rollback-prepared' does, after showing them", where, *row.GID)
			}
			continue
		}
		if !sameHeader {
			h, err := readHeader(row.Plan)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if header == nil {
				header, headerSel = row.Plan, h.Selection
				plan.Server = Server{Host: h.Host, Port: h.Port, Started: h.PostmasterStartTime}
				if h.SystemIdentifier != nil {
					plan.Server.SystemID, _ = strconv.ParseUint(*h.SystemIdentifier, 10, 64) // checked by readHeader
				}
				if h.Selection != nil {
					sel, err := selector.Parse(*h.Selection)
					if err != nil {
						return nil, fmt.Errorf("%s: \"selection\": %w", where, err)
					}
					if !sel.Empty() {
						plan.sel = sel
					}
				}
			} else {
				first := plan.Header()
				if h.Host != first.Host || h.Port != first.Port || !h.PostmasterStartTime.Equal(first.PostmasterStartTime) ||
					deref(h.SystemIdentifier) != deref(first.SystemIdentifier) {
					return nil, fmt.Errorf("%s: made on another server than the sessions before it (its \"plan\" differs)", where)
				}
				if !sameSelection(h.Selection, headerSel) {
					return nil, fmt.Errorf("%s: made with another selection than the sessions before it (its \"plan\" differs)", where)
				}
			}
		}
		res, err := row.result()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if plan.sel != nil && plan.sel.PinsQuery() && !res.Guard.Query {
			return nil, fmt.Errorf("%s: the selection depends on what the session runs, so its guard must pin its query (query_start, state_change)", where)
		}
		if len(row.Pooler) > 0 && !bytes.Equal(row.Pooler, []byte("null")) {
			plan.BehindPoolers = true
		}
		if res.Outcome == Planned {
			if plan.Server.SystemID == 0 {
				return nil, fmt.Errorf("%s: \"plan\": system_identifier is null: the plan does not name its server (make it again with --dry-run -o json)", where)
			}
			if planned[res.PID] {
				return nil, fmt.Errorf("%s: pid %d is planned twice", where, res.PID)
			}
			planned[res.PID] = true
			plan.Results = append(plan.Results, res)
		}
	}
	return plan, nil
}

// checkVersion refuses a header of another plan version.
func checkVersion(raw json.RawMessage) error {
	var h struct {
		Version *int `json:"version"`
	}
	if json.Unmarshal(raw, &h) != nil || h.Version == nil {
		return nil // said when the header is read
	}
	return versionError(*h.Version)
}

// versionError refuses a plan of another version than PlanVersion.
func versionError(v int) error {
	if v != PlanVersion {
		return fmt.Errorf("plan version %d: this pgreap reads version %d (make the plan again with this pgreap's --dry-run -o json)", v, PlanVersion)
	}
	return nil
}

// readHeader reads a row's "plan".
func readHeader(raw json.RawMessage) (*PlanHeader, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New(`"plan" is null`)
	}
	var h PlanHeader
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf(`"plan": %s`, jsonError(err))
	}
	if err := versionError(h.Version); err != nil {
		return nil, err
	}
	if h.PostmasterStartTime.IsZero() {
		return nil, errors.New(`"plan": no postmaster_start_time`)
	}
	if id := h.SystemIdentifier; id != nil {
		if n, err := strconv.ParseUint(*id, 10, 64); err != nil || n == 0 || strconv.FormatUint(n, 10) != *id {
			return nil, fmt.Errorf(`"plan": system_identifier %q is not a system identifier (a decimal number, as pg_controldata prints it)`, *id)
		}
	}
	return &h, nil
}

// knownKeys refuses a name not among names, as written (encoding/json
// would also take "PID" for "pid").
func knownKeys(keys, names []string) error {
	var unknown []string
	for _, k := range keys {
		if !slices.Contains(names, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown field %q", unknown[0])
	}
	return nil
}

// keysOf are the names, as written, of a row, of its "plan" (nil when not
// an object) and of the plan's "selection" (nil when not an object).
type keysOf struct {
	top, plan, selection []string
}

// scanRow reads the names of a row of a plan and refuses an object, at
// any depth, with a name twice: encoding/json would take the last value,
// so an edited plan could hide a second pid, or drop its selection,
// behind the first. The row is valid JSON (the array was decoded).
func scanRow(raw []byte) (keysOf, error) {
	sc := scanner{b: raw}
	var k keysOf
	sc.skipSpace()
	if sc.i >= len(sc.b) || sc.b[sc.i] != '{' {
		return k, errors.New("not an object (a session as --dry-run -o json writes it)")
	}
	err := sc.value(nil, func(path []string, key string) {
		switch {
		case len(path) == 0:
			k.top = append(k.top, key)
		case len(path) == 1 && path[0] == "plan":
			k.plan = append(k.plan, key)
		case len(path) == 2 && path[0] == "plan" && path[1] == "selection":
			k.selection = append(k.selection, key)
		}
	})
	return k, err
}

// scanner walks valid JSON and names the keys of its objects.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) skipSpace() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// value walks one value at s.i; key is called with the names of the
// objects that hold each key ("[]" for an array's element).
func (s *scanner) value(path []string, key func(path []string, k string)) error {
	s.skipSpace()
	switch s.b[s.i] {
	case '{':
		s.i++
		seen := map[string]bool{} // a map: an object may hold 200,000 keys
		for {
			s.skipSpace()
			switch s.b[s.i] {
			case '}':
				s.i++
				return nil
			case ',':
				s.i++
				s.skipSpace()
			}
			k, err := s.str()
			if err != nil {
				return err
			}
			if seen[k] {
				return fmt.Errorf("not a plan: the key %q appears twice in one object", k)
			}
			seen[k] = true
			key(path, k)
			s.skipSpace()
			s.i++ // :
			if err := s.value(append(path[:len(path):len(path)], k), key); err != nil {
				return err
			}
		}
	case '[':
		s.i++
		for {
			s.skipSpace()
			switch s.b[s.i] {
			case ']':
				s.i++
				return nil
			case ',':
				s.i++
			}
			if err := s.value(append(path[:len(path):len(path)], "[]"), key); err != nil {
				return err
			}
		}
	case '"':
		_, err := s.str()
		return err
	default:
		for s.i < len(s.b) && !strings.ContainsRune(",]} \t\n\r", rune(s.b[s.i])) {
			s.i++
		}
	}
	return nil
}

// str reads a string at s.i, unescaped as encoding/json reads it.
func (s *scanner) str() (string, error) {
	start := s.i
	s.i++ // "
	escaped := false
	for s.b[s.i] != '"' {
		if s.b[s.i] == '\\' {
			escaped = true
			s.i++
		}
		s.i++
	}
	s.i++
	raw := s.b[start:s.i]
	if !escaped {
		return string(raw[1 : len(raw)-1]), nil
	}
	var str string
	if err := json.Unmarshal(raw, &str); err != nil {
		return "", err
	}
	return str, nil
}

// jsonTags are the JSON names of a struct's fields, sorted: a selection's
// keys are the selector's, whatever selectors it has.
func jsonTags(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// sameSelection: a and b select the same sessions, as written or as
// parsed (a hand-written "5m" is pgreap's "5m0s").
func sameSelection(a, b *selector.Spec) bool {
	norm := func(sp *selector.Spec) *selector.Spec {
		if sp == nil {
			return nil
		}
		sel, err := selector.Parse(*sp)
		if err != nil {
			return sp
		}
		n := sel.Spec()
		if reflect.ValueOf(n).IsZero() {
			return nil
		}
		return &n
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func jsonFields(v any) []string {
	b, _ := json.Marshal(v)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jsonError is a decoding error in one line without Go type names.
func jsonError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: %s is the wrong type", te.Field, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("bad JSON at byte %d: %s", se.Offset, se.Error())
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// result is a row as the session it names: its identity, the query its
// guard pins, and its description; the rest of the row is context for a
// reader of the file.
func (row *planRow) result() (Result, error) {
	var r Result
	if row.PID == nil || *row.PID <= 0 {
		return r, errors.New(`"pid" must be a positive number`)
	}
	if row.BackendStart == nil || row.BackendStart.IsZero() || row.BackendStart.Year() < 2000 {
		return r, errors.New(`"backend_start" is missing or not a real start time: the session cannot be guarded`)
	}
	if row.Action == nil || (Kind(*row.Action) != Cancel && Kind(*row.Action) != Terminate) {
		return r, errors.New(`"action" must be cancel or terminate`)
	}
	if row.Outcome == nil || !slices.Contains(outcomes, Outcome(*row.Outcome)) {
		return r, errors.New(`"outcome" must be one of the outcomes (planned, ...)`)
	}
	switch {
	case slices.Equal(row.Guard, Guard{}.Columns()):
	case slices.Equal(row.Guard, Guard{Query: true}.Columns()):
		r.Guard.Query = true
	default:
		return r, fmt.Errorf(`"guard" must be %q or %q`, Guard{}.Columns(), Guard{Query: true}.Columns())
	}
	if Kind(*row.Action) == Cancel && !r.Guard.Query {
		return r, errors.New(`a cancel must guard its query ("guard" with query_start)`)
	}
	r.Session = activity.Session{PID: *row.PID, BackendStart: *row.BackendStart}
	if r.Guard.Query {
		r.QueryStart, r.StateChange = deref(row.QueryStart), deref(row.StateChange)
	}
	d := &described{datname: deref(row.Datname), usename: deref(row.Usename), applicationName: deref(row.ApplicationName)}
	if row.ClientAddr != nil {
		a, err := netip.ParseAddr(*row.ClientAddr)
		if err != nil || a.Zone() != "" {
			// A zone (fe80::1%eth0) is no inet value: the server would
			// refuse the whole statement.
			return r, fmt.Errorf(`"client_addr" %q is not an address`, *row.ClientAddr)
		}
		d.clientAddr = a
	}
	r.described = d
	r.Action = Kind(*row.Action)
	r.Outcome = Outcome(*row.Outcome)
	r.Named = true
	return r, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
