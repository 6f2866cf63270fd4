package pooler

import (
	"testing"
	"time"
)

// PgBouncer stamps connect_time in its host's zone, by abbreviation: in
// pgreap's own zone or UTC the instant is exact; in a zone pgreap cannot
// resolve it is off by the zone's offset, and the backend that started
// within the window of it, modulo a quarter hour, is still the one.
func TestOpenedAcrossZones(t *testing.T) {
	start := time.Date(2026, 12, 1, 22, 41, 36, 500_000_000, time.UTC)
	for _, c := range []struct {
		stamp string
		start time.Time
		want  bool
	}{
		{"2026-12-01 22:41:36 UTC", start, true},
		{"2026-12-01 22:41:36 UTC", start.Add(-time.Hour), false},
		{"2026-12-01 22:41:30 UTC", start.Add(30 * time.Second), false},
		// CET is not this test's zone: the time package gives it offset 0
		{"2026-12-01 23:41:36 CET", start, true},
		{"2026-12-02 04:11:36 IST", start, true},
		{"2026-12-01 23:41:36 CET", start.Add(7 * time.Minute), false},
		{"2026-12-03 23:41:36 CET", start, false},
	} {
		r := row{"connect_time": c.stamp}
		if got := opened(r.time("connect_time"), c.start); got != c.want {
			t.Errorf("connect_time %s, backend_start %s: %v, want %v", c.stamp, c.start, got, c.want)
		}
	}
}
