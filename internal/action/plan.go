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
	"strings"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/selector"
)

// PlanVersion is the version of the plan format that --dry-run -o json
// writes and apply reads. Version 2 records the selection.
const PlanVersion = 2

// PlanHeader identifies the server run a plan was made on, and the
// selection it was made with; every row of a plan file carries it as
// "plan".
type PlanHeader struct {
	Version             int       `json:"version"`
	Host                string    `json:"host"`
	Port                uint16    `json:"port"`
	PostmasterStartTime time.Time `json:"postmaster_start_time"`
	// Selection is what chose the sessions (null: named by pid alone):
	// apply's signalling statement checks it again, so a session that no
	// longer matches is left alone.
	Selection *selector.Spec `json:"selection"`
}

// Header is the plan's header.
func (p *Plan) Header() PlanHeader {
	h := PlanHeader{Version: PlanVersion, Host: p.Server.Host, Port: p.Server.Port, PostmasterStartTime: p.Server.Started}
	if p.sel != nil && !reflect.ValueOf(*p.sel).IsZero() {
		spec := p.sel.Spec()
		h.Selection = &spec
	}
	return h
}

// planRow is one row of a plan file: the fields --dry-run -o json writes.
type planRow struct {
	PID             *int32      `json:"pid"`
	LeaderPID       *int32      `json:"leader_pid"`
	Datname         *string     `json:"datname"`
	Usename         *string     `json:"usename"`
	ApplicationName *string     `json:"application_name"`
	ClientAddr      *string     `json:"client_addr"`
	BackendType     *string     `json:"backend_type"`
	State           *string     `json:"state"`
	BackendStart    *time.Time  `json:"backend_start"`
	XactStart       *time.Time  `json:"xact_start"`
	QueryStart      *time.Time  `json:"query_start"`
	StateChange     *time.Time  `json:"state_change"`
	WaitEventType   *string     `json:"wait_event_type"`
	WaitEvent       *string     `json:"wait_event"`
	Query           *string     `json:"query"`
	QueryID         *int64      `json:"query_id"`
	BlockedBy       []int32     `json:"blocked_by"`
	BlockedByPrep   []string    `json:"blocked_by_prepared"`
	GID             *string     `json:"gid"`
	Action          *string     `json:"action"`
	Outcome         *string     `json:"outcome"`
	Detail          *string     `json:"detail"`
	Guard           []string    `json:"guard"`
	Plan            *PlanHeader `json:"plan"`
}

var outcomes = []Outcome{Cancelled, Terminated, Gone, Changed, Denied, Protected, Survived, Planned}

// optionalKeys may be missing from a row: query_id exists on 14+ only.
var optionalKeys = []string{"query_id"}

// maxPlanSize bounds what ReadPlan reads: a plan of every session of a
// server with 10,000 connections and long queries fits.
const maxPlanSize = 256 << 20

// ReadPlan reads a plan file strictly: one JSON array of rows as
// --dry-run -o json writes them, with no unknown and no missing field,
// all made on one server run. Only the rows whose outcome is planned are
// kept: those are the sessions the plan acts on. Rows with no action, no
// outcome and no guard (the waiters of unblock) are context and skipped.
func ReadPlan(r io.Reader) (*Plan, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxPlanSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxPlanSize {
		return nil, fmt.Errorf("more than %d MiB: not a plan", maxPlanSize>>20)
	}
	var raws []map[string]json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, fmt.Errorf("not a plan (a JSON array of sessions from --dry-run -o json): %s", jsonError(err))
	}
	// A key twice would be read as its last value: an edited plan could
	// hide a second pid, or drop its selection, behind the first.
	if err := noDuplicateKeys(data); err != nil {
		return nil, err
	}
	if len(raws) == 0 {
		return nil, errors.New("the plan has no sessions")
	}
	known := map[string]bool{}
	var required []string
	for _, f := range jsonFields(planRow{}) {
		known[f] = true
		if !slices.Contains(optionalKeys, f) {
			required = append(required, f)
		}
	}
	plan := &Plan{}
	first := true
	planned := map[int32]bool{}
	for n, raw := range raws {
		where := fmt.Sprintf("session %d", n+1)
		for _, k := range required {
			if _, ok := raw[k]; !ok {
				return nil, fmt.Errorf("%s: missing field %q", where, k)
			}
		}
		var unknown []string
		for k := range raw {
			if !known[k] {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, fmt.Errorf("%s: unknown field %q", where, unknown[0])
		}
		if err := exactKeys(raw["plan"], jsonFields(PlanHeader{}), true); err != nil {
			return nil, fmt.Errorf("%s: \"plan\": %w", where, err)
		}
		var header map[string]json.RawMessage
		if json.Unmarshal(raw["plan"], &header) == nil {
			if err := exactKeys(header["selection"], jsonFields(fullSpec()), false); err != nil {
				return nil, fmt.Errorf("%s: \"selection\": %w", where, err)
			}
		}
		obj, _ := json.Marshal(raw)
		dec := json.NewDecoder(bytes.NewReader(obj))
		dec.DisallowUnknownFields()
		var row planRow
		if err := dec.Decode(&row); err != nil {
			return nil, fmt.Errorf("%s: %s", where, jsonError(err))
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
		res, err := row.result()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if first {
			first = false
			plan.Server = Server{Host: row.Plan.Host, Port: row.Plan.Port, Started: row.Plan.PostmasterStartTime}
			if row.Plan.Selection != nil {
				sel, err := selector.Parse(*row.Plan.Selection)
				if err != nil {
					return nil, fmt.Errorf("%s: \"selection\": %w", where, err)
				}
				if !reflect.ValueOf(*sel).IsZero() {
					plan.sel = sel
				}
			}
		} else if h := plan.Header(); row.Plan.Host != h.Host || row.Plan.Port != h.Port ||
			!row.Plan.PostmasterStartTime.Equal(h.PostmasterStartTime) {
			return nil, fmt.Errorf("%s: made on another server than the sessions before it (its \"plan\" differs)", where)
		} else if !sameSelection(row.Plan.Selection, h.Selection) {
			return nil, fmt.Errorf("%s: made with another selection than the sessions before it (its \"plan\" differs)", where)
		}
		if plan.sel != nil && plan.sel.PinsQuery() && !res.Guard.Query {
			return nil, fmt.Errorf("%s: the selection depends on what the session runs, so its guard must pin its query (query_start, state_change)", where)
		}
		if res.Outcome == Planned {
			if planned[res.PID] {
				return nil, fmt.Errorf("%s: pid %d is planned twice", where, res.PID)
			}
			planned[res.PID] = true
			plan.Results = append(plan.Results, res)
		}
	}
	return plan, nil
}

// noDuplicateKeys walks the JSON document and refuses an object with a
// key twice, at any depth.
func noDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func() error
	walk = func() error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				key, err := dec.Token()
				if err != nil {
					return err
				}
				k, _ := key.(string)
				if seen[k] {
					return fmt.Errorf("not a plan: the key %q appears twice in one object", k)
				}
				seen[k] = true
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token() // }
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token() // ]
			return err
		}
		return nil
	}
	return walk()
}

// exactKeys checks an object's keys against the names it may have, as
// written (encoding/json would also take "PID" for "pid"), and with all
// of them when all is set. Null is left to the decoding.
func exactKeys(raw json.RawMessage, names []string, all bool) error {
	var obj map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &obj) != nil || obj == nil {
		return nil
	}
	var unknown []string
	for k := range obj {
		if !slices.Contains(names, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown field %q", unknown[0])
	}
	if all {
		for _, n := range names {
			if _, ok := obj[n]; !ok {
				return fmt.Errorf("missing field %q", n)
			}
		}
	}
	return nil
}

// fullSpec has every field set, so that its JSON has every name.
func fullSpec() selector.Spec {
	one := []string{"x"}
	return selector.Spec{DB: one, User: one, App: one, Client: one, State: one, BackendType: one,
		ExcludeDB: one, ExcludeUser: one, ExcludeApp: one, Query: "x", LongerThan: "x", XactLongerThan: "x",
		Waiting: true, Blocking: true, BlockingLongerThan: "x"}
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

func (row *planRow) result() (Result, error) {
	var r Result
	if row.Plan == nil {
		return r, errors.New(`"plan" is null`)
	}
	if row.Plan.Version != PlanVersion {
		return r, fmt.Errorf("plan version %d: this pgreap reads version %d (make the plan again with this pgreap's --dry-run -o json)", row.Plan.Version, PlanVersion)
	}
	if row.Plan.PostmasterStartTime.IsZero() {
		return r, errors.New(`"plan": no postmaster_start_time`)
	}
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
	s := activity.Session{
		PID:             *row.PID,
		LeaderPID:       deref(row.LeaderPID),
		Datname:         deref(row.Datname),
		Usename:         deref(row.Usename),
		ApplicationName: deref(row.ApplicationName),
		BackendType:     deref(row.BackendType),
		State:           deref(row.State),
		BackendStart:    *row.BackendStart,
		XactStart:       deref(row.XactStart),
		QueryStart:      deref(row.QueryStart),
		StateChange:     deref(row.StateChange),
		WaitEventType:   deref(row.WaitEventType),
		WaitEvent:       deref(row.WaitEvent),
		Query:           deref(row.Query),
		QueryID:         deref(row.QueryID),
		BlockedBy:       row.BlockedBy,
	}
	if row.ClientAddr != nil {
		a, err := netip.ParseAddr(*row.ClientAddr)
		if err != nil {
			return r, fmt.Errorf(`"client_addr" %q is not an address`, *row.ClientAddr)
		}
		s.ClientAddr = a
	}
	r.Session = s
	r.Action = Kind(*row.Action)
	r.Outcome = Outcome(*row.Outcome)
	r.Detail = deref(row.Detail)
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
