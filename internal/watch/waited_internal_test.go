package watch

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// A released waiter's waited_seconds is written to the millisecond, as the
// decimal it is, never with a binary tail (1.1179999999999999); a wait of
// unknown start is null.
func TestWaitedSecondsMilliseconds(t *testing.T) {
	from := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for ms := int64(1); ms <= 100_000; ms++ {
		// 400µs more: rounded down to the millisecond.
		now := from.Add(time.Duration(ms)*time.Millisecond + 400*time.Microsecond)
		b, err := json.Marshal(Released{PID: 7, WaitedSeconds: waitedSeconds(from, now)})
		// The decimal, as JSON writes it: 2.5, 2.
		secs := strings.TrimRight(strings.TrimRight(fmt.Sprintf("%d.%03d", ms/1000, ms%1000), "0"), ".")
		if want := `{"pid":7,"waited_seconds":` + secs + `}`; err != nil || string(b) != want {
			t.Fatalf("%dms: %s (%v), want %s", ms, b, err, want)
		}
	}
	for _, tc := range []struct {
		name      string
		from, now time.Time
	}{
		{"start not shown", time.Time{}, from},
		{"a start after the look", from.Add(time.Second), from},
	} {
		if got := waitedSeconds(tc.from, tc.now); got != nil {
			t.Errorf("%s: %v, want nil (null)", tc.name, *got)
		}
	}
}
