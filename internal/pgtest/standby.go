package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/cluster"
)

// StandbyOptions tune a standby before it starts.
type StandbyOptions = cluster.StandbyOptions

var standby struct {
	sync.Mutex
	c   *Cluster
	err error
}

// Standby is the package's hot standby of the shared cluster: started by
// the first test that asks, stopped by Main before the shared cluster.
// A test that must stop replay or change the standby's settings starts
// its own (OwnStandby).
func Standby(t testing.TB) *Cluster {
	t.Helper()
	c := Shared(t)
	standby.Lock()
	defer standby.Unlock()
	if standby.c == nil && standby.err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		standby.c, standby.err = c.StartStandby(ctx, StandbyOptions{Prefix: "pgreap-test-standby-"})
		cancel()
	}
	if standby.err != nil {
		t.Fatalf("pgtest: start standby: %v", standby.err)
	}
	return standby.c
}

// OwnStandby starts a hot standby of primary for the test, stopped and
// removed when the test ends (before a primary the test started itself,
// which was started first).
func OwnStandby(t testing.TB, primary *Cluster, opt StandbyOptions) *Cluster {
	t.Helper()
	if opt.Prefix == "" {
		opt.Prefix = "pgreap-test-standby-"
	}
	s, err := primary.StartStandby(Context(t), opt)
	if err != nil {
		t.Fatalf("pgtest: own standby: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: stop standby: %v", err)
		}
	})
	return s
}

// WaitReplay waits until standby has replayed what primary has written.
func WaitReplay(t testing.TB, standby, primary *Cluster) {
	t.Helper()
	if err := standby.WaitReplay(Context(t), primary); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// stopStandby stops the package's standby at the end of Run, with the
// tail of its log when the tests failed.
func stopStandby(failed bool) {
	standby.Lock()
	defer standby.Unlock()
	if standby.c == nil {
		return
	}
	if failed {
		printTail(fmt.Sprintf("standby log tail (PostgreSQL %d)", standby.c.Major), standby.c.LogFile())
	}
	if err := standby.c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop standby: %v\n", err)
	}
	standby.c, standby.err = nil, nil
}
