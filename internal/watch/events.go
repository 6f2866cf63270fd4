package watch

import (
	"fmt"
	"strings"

	"github.com/pgreap/pgreap/internal/notify"
)

// notifyEntry sends an audit line (line: its JSON, as written) to the
// sinks; the notifier never blocks.
func notifyEntry(n *notify.Notifier, e *Entry, line []byte) {
	if n == nil {
		return
	}
	kind := notify.Acted
	if e.Outcome == string(Suppressed) { // budget.go: audited, never signalled
		kind = notify.Suppressed
	}
	n.Send(notify.Event{Kind: kind, Time: e.Time, Target: e.Target, Fields: line, Text: entryLine(e)})
}

// entryLine is an audit line for people (Slack): the rule, what it did to
// whom, the outcome; never the query (long, and it may hold a secret).
func entryLine(e *Entry) string {
	what := e.Action
	if e.DryRun {
		what = "dry run: " + what
	}
	s := fmt.Sprintf("rule %s: %s pid %d (user %s, db %s, app %q): %s", e.Rule, what, e.PID, e.Usename, e.Datname, e.ApplicationName, e.Outcome)
	if e.Detail != "" {
		s += " (" + strings.Join(strings.Fields(e.Detail), " ") + ")"
	}
	return s
}

// event tells the sinks what happened to the target (leader, error).
func (t *target) event(kind notify.Kind, text string) {
	if t.notify != nil {
		t.notify.Send(notify.Event{Kind: kind, Time: t.now(), Target: t.name, Text: text})
	}
}
