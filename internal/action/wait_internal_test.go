package action

import (
	"testing"
	"time"
)

// How one look after a cancel settles it; the looks are what the wait's
// statement returns (its SQL is tested against servers elsewhere).
func TestSettleCancel(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(ms int) *time.Time { v := t0.Add(time.Duration(ms) * time.Millisecond); return &v }
	str := func(s string) *string { return &s }
	tests := []struct {
		name    string
		pinned  signalled // at the signal
		look    look
		settled bool
		outcome Outcome
		detail  string
	}{
		{"still running", signalled{state: "active"},
			look{present: true, queryStart: at(0), stateChange: at(0), state: str("active")}, false, "", ""},
		{"aborted transaction", signalled{state: "active", xactStart: *at(-5)},
			look{present: true, queryStart: at(0), stateChange: at(20), state: str("idle in transaction (aborted)"), xactStart: at(-5)}, true, Cancelled, ""},
		{"completed in its transaction", signalled{state: "active", xactStart: *at(-5)},
			look{present: true, queryStart: at(0), stateChange: at(20), state: str("idle in transaction"), xactStart: at(-5)}, true, Changed, completedDetail + " (its transaction goes on)"},
		{"write rolled back", signalled{state: "active", xid: "123"},
			look{present: true, queryStart: at(0), stateChange: at(20), state: str("idle"), xidStatus: str("aborted")}, true, Cancelled, "its transaction rolled back"},
		{"write committed", signalled{state: "active", xid: "123"},
			look{present: true, queryStart: at(0), stateChange: at(20), state: str("idle"), xidStatus: str("committed")}, true, Changed, completedDetail + " (its transaction committed)"},
		{"block committed later", signalled{state: "active", xid: "123", xactStart: *at(-5)},
			look{present: true, queryStart: at(30), stateChange: at(31), state: str("idle"), xidStatus: str("committed")}, true, Changed,
			"its transaction committed: the query completed, or the cancel may have ended it inside a savepoint its client rolled back to"},
		{"rolled back to a savepoint", signalled{state: "active", xactStart: *at(-5)},
			look{present: true, queryStart: at(30), stateChange: at(31), state: str("idle in transaction"), xactStart: at(-5)}, true, Changed,
			"its transaction went on with another statement: the query completed, or the cancel may have ended it and its client rolled back to a savepoint"},
		{"synchronous standby wait", signalled{state: "active", xid: "123", waitEvent: "IPC:SyncRep"},
			look{present: true, queryStart: at(0), stateChange: at(20), state: str("idle"), xidStatus: str("committed")}, true, Cancelled, syncRepDetail},
		{"ended before the signal", signalled{state: "active", sent: *at(10)},
			look{present: true, queryStart: at(0), stateChange: at(5), state: str("idle")}, true, Changed, "its query ended (idle) before the cancel was sent"},
		{"connection ended", signalled{state: "active"}, look{}, true, Cancelled, "the connection ended too"},
		// A fastpath call leaves query_start where it was: the next call
		// is another query, not the cancelled one still running.
		{"next fastpath call", signalled{state: "fastpath function call", sent: *at(10)},
			look{present: true, queryStart: at(0), stateChange: at(30), state: str("fastpath function call")}, true, Cancelled, ""},
		{"same fastpath call", signalled{state: "fastpath function call", sent: *at(10)},
			look{present: true, queryStart: at(0), stateChange: at(2), state: str("fastpath function call")}, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Result{Action: Cancel, sig: sigSent, at: tt.pinned}
			r.QueryStart, r.StateChange = *at(0), *at(0)
			if tt.pinned.state == "fastpath function call" {
				r.StateChange = *at(2)
			}
			settled := r.settleCancel(&tt.look)
			if settled != tt.settled || (settled && (r.Outcome != tt.outcome || r.Detail != tt.detail)) {
				t.Fatalf("settled %v, %s (%q); want %v, %s (%q)", settled, r.Outcome, r.Detail, tt.settled, tt.outcome, tt.detail)
			}
		})
	}
}
