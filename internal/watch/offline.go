package watch

import (
	"slices"
	"sort"
	"time"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/selector"
)

// Verdict is what the daemon would do to one session of a snapshot.
type Verdict struct {
	Session activity.Session
	// Rule and Action: the rule that acts on the session (or audits it
	// planned) and its action; empty when none does.
	Rule, Action string
	DryRun       bool
	// Grace is a cancel-then-terminate's grace.
	Grace time.Duration
	// Due is when, by the server's clock, the rule acts: not before the
	// snapshot's time (then it acts at once).
	Due time.Time
	// Outcome is "" for an action sent at Due, or the audit outcome the
	// daemon would write instead: planned (a dry run), suppressed (a
	// budget is spent), protected (the guard refuses it), denied (the
	// role that took the snapshot could not see the session's
	// backend_start: the guard cannot make sure it signals that session). A session no
	// rule takes because protect: (or its being a parallel worker) keeps
	// it off is protected with no Rule.
	Outcome string
	// Detail says why, for protected and suppressed.
	Detail string
}

// Test is what a daemon with the policy would do to the sessions of a
// snapshot read back (`ls -o json`), had it just taken it, without a
// server: which rule matches which session but for durations is decided
// in Go (selector.Holds) where the daemon has the server mark the
// snapshot; the rest is the daemon's own code: chooseAll (the roots of
// lock waits, choose), the budgets' split, the guard's protections
// (action.Protects). A snapshot alone knows nothing of what rules did
// before: nothing is done yet, nothing in flight, every budget empty,
// every action sent succeeds. dryRun is --dry-run. One verdict per
// session, in the snapshot's order, and one more per dry-run rule that
// audits a session.
func Test(pol *policy.Policy, snap *activity.Snapshot, dryRun bool) []Verdict {
	rules := rulesOf(pol)
	dry := func(r *rule) bool { return r.DryRun || dryRun }
	var out []Verdict
	// real are the verdicts whose rule acts for real: the budgets see
	// them in the order they fall due.
	var real []int
	// The snapshot is the caller's: the marks and roots are set on a copy.
	own := *snap
	own.Sessions = slices.Clone(snap.Sessions)
	for i := range own.Sessions {
		sess := &own.Sessions[i]
		sess.Marks = make([]bool, len(rules))
		for k := range rules {
			sess.Marks[k] = rules[k].guarded.Untimed().Holds(sess, &own)
		}
	}
	chooseAll(&own, rules, dry, map[key]bool{}, nil, nil, func(sess *activity.Session, choices []choice) {
		if len(choices) == 0 {
			out = append(out, unchosen(pol, rules, sess, &own))
			return
		}
		for _, c := range choices {
			r := &rules[c.rule]
			due := c.due
			if due.Before(own.Taken) {
				due = own.Taken
			}
			v := Verdict{Session: *sess, Rule: r.Name, Action: string(r.Action), DryRun: dry(r), Due: due}
			if r.Action == policy.CancelThenTerminate {
				v.Grace = r.Grace
			}
			switch {
			case v.DryRun:
				v.Outcome = string(action.Planned)
			default:
				real = append(real, len(out))
			}
			out = append(out, v)
		}
	})
	sort.SliceStable(real, func(i, j int) bool { return out[real[i]].Due.Before(out[real[j]].Due) })
	bs := &budgets{}
	bs.set(pol)
	byName := map[string]*rule{}
	for k := range rules {
		byName[rules[k].Name] = &rules[k]
	}
	for _, i := range real {
		v := &out[i]
		r := byName[v.Rule]
		if send, _ := bs.split(r, []armed{{session: v.Session}}, v.Due); len(send) == 0 {
			v.Outcome, v.Detail = string(Suppressed), spentDetail(bs, r, v.Due)
			continue
		}
		if why := action.Protects(&v.Session, AppName); why != "" {
			v.Outcome, v.Detail = string(action.Protected), why
			continue
		}
		if why := action.Unseen(&v.Session); why != "" {
			v.Outcome, v.Detail = string(action.Denied), why
			continue
		}
		for _, b := range []*budget{bs.rules[r.Name], bs.all} {
			if b != nil {
				b.acts = append(b.acts, v.Due)
			}
		}
	}
	return out
}

// spentDetail is suppress's detail for the budget spent at now.
func spentDetail(bs *budgets, r *rule, now time.Time) string {
	own := bs.rules[r.Name]
	if own != nil && own.room(now) == 0 {
		return "the rule's max_actions (" + own.String() + ") is spent: not signalled"
	}
	return "the policy's (all rules on this target) max_actions (" + bs.all.String() + ") is spent: not signalled"
}

// unchosen is the verdict on a session no rule takes: protected when a
// parallel worker, or when a rule would take it but for protect: (a rule
// its guarded selection matches takes no session only when it can never
// be due, as blocking_longer_than on a session that is no root: that is
// no protection).
func unchosen(pol *policy.Policy, rules []rule, sess *activity.Session, snap *activity.Snapshot) Verdict {
	v := Verdict{Session: *sess}
	if sess.IsParallelWorker() {
		v.Outcome, v.Detail = string(action.Protected), "parallel worker: act on its leader"
		return v
	}
	for k := range rules {
		r := &rules[k]
		if _, due := r.Selector.Due(sess); !sess.Marks[k] && due && r.Selector.Untimed().Holds(sess, snap) && r.Selector.Keep(sess) {
			v.Outcome = string(action.Protected)
			switch {
			case (&selector.Selector{User: pol.Protect.Users}).Holds(sess, snap) && len(pol.Protect.Users) > 0:
				v.Detail = "protect: users"
			default:
				v.Detail = "protect: apps"
			}
			v.Detail += " (rule " + r.Name + " matches it otherwise)"
			return v
		}
	}
	return v
}
