package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// Start interrupted at each step of its way up (initdb, pg_ctl start
// before and after the postmaster writes its pid file) leaves no
// process and no directory behind. CI once saw the demo, interrupted
// while the server started, leave its directory: the postmaster had not
// written its pid file yet, so nothing stopped it, and it wrote into the
// directory as it was removed.
func TestStartInterrupted(t *testing.T) {
	bin, err := pgtest.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	moments := []struct {
		name  string
		files []string // cancel as soon as these exist in the cluster's directory
		times int
	}{
		{"initdb", []string{"data/PG_VERSION"}, 2},
		// The shell pg_ctl starts opens the log, then execs the
		// postmaster, which writes its pid file a little later.
		{"pg_ctl start", []string{"server.log"}, 5},
		{"postmaster", []string{"server.log", "data/postmaster.pid"}, 2},
	}
	for _, m := range moments {
		t.Run(m.name, func(t *testing.T) {
			for i := 0; i < m.times; i++ {
				startAndCancel(t, bin, m.files)
			}
		})
	}
}

func startAndCancel(t *testing.T, bin string, files []string) {
	t.Helper()
	prefix := fmt.Sprintf("pgreap-interrupted-%d-%d-", os.Getpid(), time.Now().UnixNano())
	ctx, cancel := context.WithCancel(pgtest.Context(t))
	defer cancel()
	type result struct {
		c   *cluster.Cluster
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := cluster.Start(ctx, cluster.Options{BinDir: bin, Prefix: prefix})
		done <- result{c, err}
	}()
	var dir string
	// A tight poll: the window between the log file and the pid file is
	// a few milliseconds.
	tick := time.NewTicker(200 * time.Microsecond)
	defer tick.Stop()
wait:
	for {
		select {
		case r := <-done:
			if r.err == nil {
				r.c.Stop()
			}
			t.Fatalf("Start returned before %v appeared: %v", files, r.err)
		case <-tick.C:
			if dir == "" {
				found, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
				if len(found) == 0 {
					continue
				}
				dir = found[0]
			}
			if allExist(dir, files) {
				break wait
			}
		}
	}
	// A slow machine: what Start began is frozen as Start is told to stop,
	// and each process runs again once it has been sent SIGQUIT (the
	// immediate shutdown Start's cleanup asks of a postgres) to act on it.
	// SIGKILL needs no thaw. What is never signalled stays frozen, so a
	// cleanup that misses a process fails here every time.
	frozen := processesIn(dir)
	for _, p := range frozen {
		_ = syscall.Kill(p.pid, syscall.SIGSTOP)
	}
	t.Cleanup(func() {
		for _, p := range processesIn(dir) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	thawed := make(chan struct{})
	go thawWhenSignalled(frozen, thawed)
	cancel()
	r := <-done
	close(thawed)
	if r.err == nil {
		// Start may win the race after the pid file: then Stop cleans up.
		if err := r.c.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	if left := processesIn(dir); len(left) > 0 {
		t.Fatalf("interrupted at %v: processes left: %v (frozen: %v)", files, left, frozen)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		entries, _ := filepath.Glob(filepath.Join(dir, "*"))
		t.Fatalf("interrupted at %v: %s left behind (%v): %v", files, dir, err, entries)
	}
}

// thawWhenSignalled sends SIGCONT to each process once SIGQUIT is pending
// for it, until stop is closed.
func thawWhenSignalled(procs []proc, stop <-chan struct{}) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	waiting := append([]proc(nil), procs...)
	for len(waiting) > 0 {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		left := waiting[:0]
		for _, p := range waiting {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
			if err != nil {
				continue // gone
			}
			if pending(string(status), syscall.SIGQUIT) {
				_ = syscall.Kill(p.pid, syscall.SIGCONT)
				continue
			}
			left = append(left, p)
		}
		waiting = left
	}
}

// pending reads /proc/PID/status: is sig pending for the process?
func pending(status string, sig syscall.Signal) bool {
	for _, line := range strings.Split(status, "\n") {
		k, v, _ := strings.Cut(line, ":")
		if k != "ShdPnd" && k != "SigPnd" {
			continue
		}
		if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&(1<<(sig-1)) != 0 {
			return true
		}
	}
	return false
}

func allExist(dir string, files []string) bool {
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

type proc struct {
	pid  int
	desc string
}

func (p proc) String() string { return p.desc }

// processesIn lists the processes whose command line names dir or that
// work in it.
func processesIn(dir string) []proc {
	var out []proc
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmd, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		if strings.Contains(string(cmd), dir+"/") || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			pid, _ := strconv.Atoi(filepath.Base(p))
			out = append(out, proc{pid, fmt.Sprintf("%d %s (in %s)", pid, strings.ReplaceAll(string(cmd), "\x00", " "), cwd)})
		}
	}
	return out
}
