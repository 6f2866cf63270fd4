package watch

import (
	"sort"
	"time"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/policy"
)

// Suppressed is the audit outcome of a session a real rule would have
// signalled past its max_actions (or the policy's): nothing was sent. It
// is the daemon's alone, never a command's outcome.
const Suppressed action.Outcome = "suppressed"

// budget is one max_actions in force: when the sessions it counts were
// signalled, within the last Per (a sliding window: an action at t counts
// until t+Per).
type budget struct {
	policy.Budget
	acts []time.Time // oldest first
	// warned is when the ERROR line last said it is spent (zero: never).
	warned time.Time
}

func (b *budget) trim(now time.Time) {
	n := 0
	for n < len(b.acts) && !now.Before(b.acts[n].Add(b.Per)) {
		n++
	}
	b.acts = b.acts[n:]
}

// room is how many more sessions may be signalled now.
func (b *budget) room(now time.Time) int {
	b.trim(now)
	return max(b.Count-len(b.acts), 0)
}

// freeAt is when the budget, spent, has room again.
func (b *budget) freeAt() time.Time { return b.acts[0].Add(b.Per) }

// budgets are a target's max_actions: each rule's by name, and the
// policy's (all the real rules together). They live with the target, so
// they outlast reconnections and leadership changes in this process; a
// replica that takes over starts with its own, empty ones.
type budgets struct {
	rules map[string]*budget
	all   *budget
	// said is when each (rule, session) was last audited suppressed: once
	// per window of the budget that held it.
	said map[key]time.Time
}

// set takes a policy: a budget whose rule keeps its name and its count and
// per keeps what it counted (a reload); others start empty.
func (bs *budgets) set(pol *policy.Policy) {
	keep := func(old *budget, b *policy.Budget) *budget {
		switch {
		case b == nil:
			return nil
		case old != nil && old.Budget == *b:
			return old
		}
		return &budget{Budget: *b}
	}
	rules := map[string]*budget{}
	for _, r := range pol.Rules {
		if b := keep(bs.rules[r.Name], r.MaxActions); b != nil {
			rules[r.Name] = b
		}
	}
	bs.rules, bs.all = rules, keep(bs.all, pol.MaxActions)
	if bs.said == nil {
		bs.said = map[key]time.Time{}
	}
}

// split keeps a real rule within its budgets: of the sessions due (the
// earliest first), those it may signal now, and those it holds back.
func (bs *budgets) split(r *rule, due []armed, now time.Time) (send, held []armed) {
	room := len(due)
	for _, b := range []*budget{bs.rules[r.Name], bs.all} {
		if b != nil {
			room = min(room, b.room(now))
		}
	}
	return due[:room], due[room:]
}

// suppress, once what was sent is charged, arms the sessions held back
// for when the budgets have room again (the next snapshot arms them too,
// while they match). Those a spent budget holds are audited suppressed
// (once per rule and session per window) and counted, and the budget says
// so in one ERROR line per window.
func (s *session) suppress(r *rule, k int, held []armed, now time.Time) {
	if len(held) == 0 {
		return
	}
	t := s.t
	bs := t.budgets
	own := bs.rules[r.Name]
	var spent *budget
	whose := ""
	free := now
	for _, b := range []*budget{bs.all, own} {
		if b == nil || b.room(now) > 0 {
			continue
		}
		spent, whose = b, "the policy's (all rules on this target)"
		if b == own {
			whose = "the rule's"
		}
		if b.freeAt().After(free) {
			free = b.freeAt()
		}
	}
	for _, a := range held {
		s.armed = append(s.armed, armed{session: a.session, rule: k, due: free})
	}
	sort.SliceStable(s.armed, func(i, j int) bool { return s.armed[i].due.Before(s.armed[j].due) })
	if spent == nil {
		return // what was let through was not all sent: room is left
	}
	if spent.warned.IsZero() || !now.Before(spent.warned.Add(spent.Per)) {
		spent.warned = now
		t.log.Error("a rule hit its max_actions: the sessions it would act on are audited suppressed, not signalled, until the window has room",
			"rule", r.Name, "budget", whose, "count", spent.Count, "per", spent.Per.String(), "room_at", free.UTC().Format(time.RFC3339Nano))
	}
	keepFor := maxPer(bs)
	for at, when := range bs.said {
		if !now.Before(when.Add(keepFor)) {
			delete(bs.said, at)
		}
	}
	kind := action.Terminate
	if r.Action == policy.Cancel {
		kind = action.Cancel
	}
	for _, a := range held {
		sk := r.keyOf(&a.session)
		if when, ok := bs.said[sk]; ok && now.Before(when.Add(spent.Per)) {
			continue
		}
		bs.said[sk] = now
		res := action.Result{Session: a.session, Action: kind, Outcome: Suppressed,
			Detail: whose + " max_actions (" + spent.String() + ") is spent: not signalled"}
		t.metrics.Suppressed.WithLabelValues(t.name, r.Name).Inc()
		if err := t.audit.Write(entry(now, t.name, r.Name, false, &res)); err != nil {
			t.log.Error("cannot write the audit log", "err", err)
		}
		t.log.Info("suppressed", "rule", r.Name, "pid", a.session.PID, "action", string(kind))
	}
}

// charge counts, against the rule's budgets, the sessions the plan
// signalled (or may have: a statement that failed as it ran).
func (s *session) charge(r *rule, p *action.Plan, now time.Time) {
	n := 0
	for i := range p.Results {
		switch res := &p.Results[i]; {
		case res.Pending(), res.Signalled():
			n++
		case res.Outcome == action.Cancelled, res.Outcome == action.Terminated, res.Outcome == action.Survived, res.Outcome == action.RolledBack:
			n++
		}
	}
	for _, b := range []*budget{s.t.budgets.rules[r.Name], s.t.budgets.all} {
		if b != nil {
			for range n {
				b.acts = append(b.acts, now)
			}
		}
	}
}

// maxPer is the longest window of the budgets: what said need remember.
func maxPer(bs *budgets) time.Duration {
	var d time.Duration
	if bs.all != nil {
		d = bs.all.Per
	}
	for _, b := range bs.rules {
		d = max(d, b.Per)
	}
	return d
}
