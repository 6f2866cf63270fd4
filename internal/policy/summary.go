package policy

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgreap/pgreap/internal/selector"
)

// Summary writes what the policy will do, for `pgreap watch --check`.
func (p *Policy) Summary(w io.Writer) {
	fmt.Fprintf(w, "%s: ok\n", p.Path)
	names := make([]string, len(p.Targets))
	for i, t := range p.Targets {
		names[i] = t.Name
	}
	fmt.Fprintf(w, "targets (%d): %s\n", len(p.Targets), strings.Join(names, ", "))
	fmt.Fprintf(w, "interval: %s\n", p.Interval)
	audit := p.AuditLog
	if audit == "" {
		audit = "standard output"
	}
	if p.AuditQuery == QueryNone {
		audit += " (without query texts)"
	}
	fmt.Fprintf(w, "audit log: %s\n", audit)
	metrics := p.MetricsAddr
	if metrics == "" {
		metrics = "off"
	}
	fmt.Fprintf(w, "metrics: %s\n", metrics)
	if p.HA.EvictImpostor {
		fmt.Fprintln(w, "election lock held by a session that is not a pgreap watch: ended (ha.evict_impostor)")
	} else {
		fmt.Fprintln(w, "election lock held by a session that is not a pgreap watch: reported (ha.evict_impostor: false)")
	}
	if len(p.Protect.Users)+len(p.Protect.Apps) > 0 {
		fmt.Fprintf(w, "protected: users %s, apps %s\n", list(p.Protect.Users), list(p.Protect.Apps))
	}
	fmt.Fprintf(w, "rules (%d; the first to match a session acts, the first listed at the same instant):\n", len(p.Rules))
	for i, r := range p.Rules {
		what := string(r.Action)
		if r.Action == CancelThenTerminate {
			what += fmt.Sprintf(" (grace %s)", r.Grace)
		}
		if r.DryRun {
			what += ", dry run"
		}
		fmt.Fprintf(w, "  %d. %s: %s when %s\n", i+1, r.Name, what, describe(r.Spec))
	}
	for _, n := range p.Notes() {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// Notes are what the policy does that its author may not expect.
func (p *Policy) Notes() []string {
	var notes []string
	for _, r := range p.Rules {
		for _, d := range []struct {
			key string
			v   time.Duration
		}{{"longer_than", r.Selector.LongerThan}, {"xact_longer_than", r.Selector.XactLongerThan}} {
			if d.v > 0 && d.v < p.Interval {
				notes = append(notes, fmt.Sprintf("rule %s: %s %s is shorter than the interval %s: a session that starts and crosses it between two snapshots is acted on at the next snapshot, up to %s late (an interval no longer than the shortest threshold avoids it)",
					r.Name, d.key, d.v, p.Interval, p.Interval-d.v))
			}
		}
	}
	return notes
}

func list(v []string) string {
	if len(v) == 0 {
		return "-"
	}
	return strings.Join(v, " ")
}

// describe is a match in words: key values, in the order of the schema.
func describe(s selector.Spec) string {
	var parts []string
	add := func(key string, v []string) {
		if len(v) > 0 {
			parts = append(parts, key+" "+strings.Join(v, " | "))
		}
	}
	add("db", s.DB)
	add("user", s.User)
	add("app", s.App)
	add("client", s.Client)
	add("state", s.State)
	add("backend_type", s.BackendType)
	add("exclude_db", s.ExcludeDB)
	add("exclude_user", s.ExcludeUser)
	add("exclude_app", s.ExcludeApp)
	if s.Query != "" {
		parts = append(parts, fmt.Sprintf("query ~ %q", s.Query))
	}
	if s.LongerThan != "" {
		parts = append(parts, "longer than "+s.LongerThan)
	}
	if s.XactLongerThan != "" {
		parts = append(parts, "transaction longer than "+s.XactLongerThan)
	}
	if s.Waiting {
		parts = append(parts, "waiting on a lock")
	}
	if s.Blocking {
		parts = append(parts, "blocking others")
	}
	return strings.Join(parts, ", ")
}
