package maintenance

import (
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
)

// Between two of a row's lockers a waiter waits on no lock, and no one
// blocks it: inside its wait for the row, it is not released.
func TestStillWaitingBetweenTwoLockers(t *testing.T) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	w := activity.Session{PID: 10, BackendStart: start}
	l := &Look{snap: &activity.Snapshot{Sessions: []activity.Session{w}}, byPID: map[int32]*activity.Session{10: &w},
		rowWaiting: map[int32]bool{10: true}}
	waiters := map[sessionID]bool{idOf(&w): true}
	if still, _ := l.stillWaiting(waiters, map[sessionID]bool{}); still != "10 waits for a row's next locker" {
		t.Fatalf("still %q", still)
	}
	l.rowWaiting = nil
	if still, _ := l.stillWaiting(waiters, map[sessionID]bool{}); still != "" {
		t.Fatalf("released, yet still %q", still)
	}
}
