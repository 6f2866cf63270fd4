package output_test

import (
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
)

func TestBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 kB"},
		{16 * 1024, "16 kB"},
		{10*1024 - 1, "10 kB"},
		{3355443, "3.2 MB"},
		{3 << 40, "3.0 TB"},
	}
	for _, tt := range tests {
		if got := output.Bytes(tt.n); got != tt.want {
			t.Errorf("%d: got %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestReplaySummary(t *testing.T) {
	bytes := int64(16 * 1024)
	tests := []struct {
		name string
		r    activity.Replay
		want string
	}{
		{"nothing replayed", activity.Replay{}, "nothing replayed yet"},
		{"caught up", activity.Replay{ReplayTimestamp: now, LagBytes: new(int64)}, "lag 0s, 0 B to replay"},
		{"behind", activity.Replay{ReplayTimestamp: ago(3 * time.Second), LagBytes: &bytes}, "lag 3s, 16 kB to replay"},
		{"archive", activity.Replay{ReplayTimestamp: ago(3 * time.Minute)}, "lag 3m00s"},
		{"conflicts", activity.Replay{ReplayTimestamp: ago(time.Second), Conflicts: activity.Conflicts{Lock: 1, Snapshot: 2}},
			"lag 1s; 3 queries cancelled for replay: 1 lock, 2 snapshot"},
		{"one conflict", activity.Replay{ReplayTimestamp: ago(time.Second), Conflicts: activity.Conflicts{BufferPin: 1}},
			"lag 1s; 1 query cancelled for replay: 1 buffer pin"},
	}
	for _, tt := range tests {
		if got := output.ReplaySummary(&tt.r, now); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}
