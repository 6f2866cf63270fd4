package selector

import (
	"reflect"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
)

// TestDue covers when a session becomes due, from the same instants the
// server measures the durations from.
func TestDue(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name string
		sel  Selector
		sess activity.Session
		due  time.Time
		ok   bool
	}{
		{"no durations", Selector{}, activity.Session{State: "idle"}, time.Time{}, true},
		{"active: its query", Selector{LongerThan: time.Minute},
			activity.Session{State: "active", QueryStart: at(10), StateChange: at(20)}, at(70), true},
		{"idle: its state", Selector{LongerThan: time.Minute},
			activity.Session{State: "idle", QueryStart: at(10), StateChange: at(20)}, at(80), true},
		{"fastpath: its state", Selector{LongerThan: time.Minute},
			activity.Session{State: "fastpath function call", QueryStart: at(10), StateChange: at(30)}, at(90), true},
		{"times not shown", Selector{LongerThan: time.Minute}, activity.Session{State: "active"}, time.Time{}, false},
		{"no transaction", Selector{XactLongerThan: time.Minute}, activity.Session{State: "idle", StateChange: at(0)}, time.Time{}, false},
		{"the later of both", Selector{LongerThan: time.Minute, XactLongerThan: time.Hour},
			activity.Session{State: "active", QueryStart: at(10), XactStart: at(0)}, at(3600), true},
		{"the later of both, the other way", Selector{LongerThan: 2 * time.Hour, XactLongerThan: time.Hour},
			activity.Session{State: "active", QueryStart: at(10), XactStart: at(0)}, at(7210), true},
		{"a root: its oldest wait", Selector{BlockingLongerThan: time.Minute},
			activity.Session{State: "idle in transaction", StateChange: at(0), BlockingSince: at(30)}, at(90), true},
		{"no root", Selector{BlockingLongerThan: time.Minute},
			activity.Session{State: "active", QueryStart: at(0), WaitStart: at(5)}, time.Time{}, false},
		{"a root, and its query", Selector{LongerThan: 2 * time.Minute, BlockingLongerThan: time.Minute},
			activity.Session{State: "active", QueryStart: at(0), BlockingSince: at(30)}, at(120), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			due, ok := tt.sel.Due(&tt.sess)
			if ok != tt.ok || !due.Equal(tt.due) {
				t.Errorf("Due = %v, %v; want %v, %v", due, ok, tt.due, tt.ok)
			}
			if u := tt.sel.Untimed(); u.isTimed() {
				t.Errorf("Untimed kept a duration: %+v", u)
			}
		})
	}
}

// TestEveryDurationIsTimed: a duration of a Selector is a timed selector
// (Due, Untimed, Thresholds, Compile know it).
func TestEveryDurationIsTimed(t *testing.T) {
	typ := reflect.TypeOf(Selector{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type != reflect.TypeOf(time.Duration(0)) {
			continue
		}
		var s Selector
		reflect.ValueOf(&s).Elem().Field(i).SetInt(int64(time.Minute))
		if len(s.Thresholds()) != 1 {
			t.Errorf("Selector.%s is not in timedSelectors", f.Name)
		}
	}
}

// TestSummarySaysEveryKey: every key a policy's match may have shows in
// its summary (watch --check).
func TestSummarySaysEveryKey(t *testing.T) {
	typ := reflect.TypeOf(Spec{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Tag.Get("yaml") == "-" {
			continue
		}
		var s Spec
		v := reflect.ValueOf(&s).Elem().Field(i)
		switch f.Type.Kind() {
		case reflect.String:
			v.SetString("5m")
		case reflect.Slice:
			v.Set(reflect.ValueOf([]string{"x"}))
		case reflect.Bool:
			v.SetBool(true)
		default:
			t.Fatalf("Spec.%s: a kind this test does not know", f.Name)
		}
		if s.Summary() == "" {
			t.Errorf("Spec.%s is not in its summary", f.Name)
		}
	}
}
