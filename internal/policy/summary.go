package policy

import (
	"fmt"
	"io"
	"sort"
	"strings"
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
	if p.MaxActions != nil {
		fmt.Fprintf(w, "max_actions: %s on each target, all real rules together (past it: audited suppressed, nothing signalled)\n", p.MaxActions)
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
		if r.MaxActions != nil {
			what += ", " + r.MaxActions.String()
			if r.DryRun {
				what += " (not applied to a dry run)"
			}
		}
		fmt.Fprintf(w, "  %d. %s: %s when %s\n", i+1, r.Name, what, r.Spec.Summary())
	}
	for _, s := range p.Notify {
		// Header names only: their values, like the URL, are secrets.
		names := make([]string, 0, len(s.Header))
		for k := range s.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		on := make([]string, len(s.On))
		for i, k := range s.On {
			on[i] = string(k)
		}
		fmt.Fprintf(w, "notify %s: %s on %s, headers %s\n", s.Name, s.Format, strings.Join(on, " "), list(names))
	}
	for _, n := range p.Notes() {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// Notes are what the policy does that its author may not expect.
func (p *Policy) Notes() []string {
	var notes []string
	for _, r := range p.Rules {
		for _, d := range r.Selector.Thresholds() {
			if d.Duration < p.Interval {
				notes = append(notes, fmt.Sprintf("rule %s: %s %s is shorter than the interval %s: a session that starts and crosses it between two snapshots is acted on at the next snapshot, up to %s late (an interval no longer than the shortest threshold avoids it)",
					r.Name, d.Field, d.Duration, p.Interval, p.Interval-d.Duration))
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
