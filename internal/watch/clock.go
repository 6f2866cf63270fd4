package watch

import "time"

// Clock is the daemon's time: every instant it reads and every wait it
// schedules (deadlines, polls, grace, retries, reconnection backoff) go
// through it, so a test can move time itself. The statements' own time
// bounds (context deadlines on the network) stay real: they bound I/O,
// not the daemon's schedule.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's timer: C delivers the instant it fired.
type Timer interface {
	C() <-chan time.Time
	// Reset makes the timer fire d from now, discarding a firing not yet
	// received.
	Reset(d time.Duration)
	Stop()
}

// RealClock is the wall clock, the default.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// NewTimer is time.NewTimer.
func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }

// Reset relies on Go 1.23's timers: Reset drops a value not yet received.
func (r realTimer) Reset(d time.Duration) { r.t.Reset(d) }
func (r realTimer) Stop()                 { r.t.Stop() }

// after is time.After on the clock c.
func after(c Clock, d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }
