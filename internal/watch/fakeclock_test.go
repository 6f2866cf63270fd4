package watch

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// FakeClock is a Clock that moves only when a test moves it. Its timers
// fire when Set reaches their instant; Waiting tells when the daemon waits
// on one, so a test steps the daemon from one of its instants to the next
// without sleeping.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer // armed, not yet fired
	armed  chan struct{}
}

// NewFakeClock is a FakeClock at start.
func NewFakeClock(start time.Time) *FakeClock {
	return &FakeClock{now: start, armed: make(chan struct{})}
}

type fakeTimer struct {
	c    *FakeClock
	ch   chan time.Time
	when time.Time
}

// Now is the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer is a timer of the clock.
func (c *FakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Reset(d time.Duration) {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopLocked(t)
	select { // as time.Timer since Go 1.23: a firing not received is dropped
	case <-t.ch:
	default:
	}
	t.when = c.now.Add(d)
	if d <= 0 {
		t.ch <- c.now
		return
	}
	c.timers = append(c.timers, t)
	close(c.armed)
	c.armed = make(chan struct{})
}

func (t *fakeTimer) Stop() {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.c.stopLocked(t)
}

func (c *FakeClock) stopLocked(t *fakeTimer) {
	c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == t })
}

// Set moves the clock to at (never back) and fires the timers due by then.
func (c *FakeClock) Set(tb testing.TB, at time.Time) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if at.Before(c.now) {
		tb.Fatalf("fake clock: set back from %s to %s", c.now, at)
	}
	c.now = at
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.when.After(at) {
			return false
		}
		t.ch <- at
		return true
	})
}

// Waiting waits until a timer is armed (the daemon has done what it had to
// and waits) and returns the earliest armed instant.
func (c *FakeClock) Waiting(tb testing.TB) time.Time {
	tb.Helper()
	ctx := pgtest.Context(tb)
	for {
		c.mu.Lock()
		armed := c.armed
		if len(c.timers) > 0 {
			next := c.timers[0].when
			for _, t := range c.timers[1:] {
				if t.when.Before(next) {
					next = t.when
				}
			}
			c.mu.Unlock()
			return next
		}
		c.mu.Unlock()
		select {
		case <-armed:
		case <-ctx.Done():
			tb.Fatalf("fake clock: no timer armed: %v", ctx.Err())
		}
	}
}

// Step waits until the daemon waits, then moves the clock to the instant
// it waits for, which it returns.
func (c *FakeClock) Step(tb testing.TB) time.Time {
	tb.Helper()
	next := c.Waiting(tb)
	c.Set(tb, next)
	return next
}

// Export for the tests of package watch_test.
const (
	Margin       = margin
	RetryNoMatch = retryNoMatch
	MaxRetries   = maxRetries
	VerifyFor    = verifyFor
	FirstPoll    = firstPoll
	MinBackoff   = minBackoff
	MaxBackoff   = maxBackoff
)
