package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// topCostDuration is how long each tool runs on the same sessions.
const topCostDuration = 30 * time.Second

// BenchmarkTopCost runs `pgreap top` and pg_activity (Debian's pg-activity,
// the baseline, as psql is for ls) one after the other, each for
// topCostDuration with a 1 s refresh, in a tmux terminal of 160x40, on the
// same 2000 and then 5000 idle sessions. It skips when pg_activity or tmux
// is not installed. Run it alone: both tools share the machine's cores with
// the server.
//
// Metrics, per tool (top, pga) and as ratios top/pga (target: below 1):
//
//	client-s    CPU (user+sys) of the tool's process over the run
//	server-s    CPU of the tool's backends over the run (the server
//	            processes that connected while the tool ran)
//	MB-rss      the tool's peak RSS (VmHWM)
func BenchmarkTopCost(b *testing.B) {
	pga, err := exec.LookPath("pg_activity")
	if err != nil {
		b.Skip("pg_activity is not installed (apt-get install -y pg-activity): no baseline")
	}
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		b.Skip("tmux is not installed (apt-get install -y tmux)")
	}
	bin := buildPgreap(b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{MaxConnections: 5100, Settings: map[string]string{"shared_buffers": "64MB"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Stop() })
	env := append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME"), "TERM=xterm-256color"}, c.Env()...)
	tools := []struct{ name, path string }{
		{"top", fmt.Sprintf("exec %s top --interval 1s", bin)},
		{"pga", fmt.Sprintf("exec %s --refresh 1 -h %s -p %d -U %s -d postgres", pga, c.SocketDir(), c.Port, pgtest.Superuser)},
	}
	open := 0
	for _, n := range []int{2000, 5000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			openSessions(b, c, n-open)
			open = n
			for i := 0; i < b.N; i++ {
				var got [2]toolCost
				for t, tool := range tools {
					got[t] = runTool(b, tmux, env, c.DataDir(), tool.path)
				}
				top, pga := got[0], got[1]
				b.ReportMetric(top.client.Seconds(), "top-client-s")
				b.ReportMetric(pga.client.Seconds(), "pga-client-s")
				b.ReportMetric(top.server.Seconds(), "top-server-s")
				b.ReportMetric(pga.server.Seconds(), "pga-server-s")
				b.ReportMetric(float64(top.rssKB)/1024, "top-MB-rss")
				b.ReportMetric(float64(pga.rssKB)/1024, "pga-MB-rss")
				b.ReportMetric(top.client.Seconds()/pga.client.Seconds(), "client/pga")
				b.ReportMetric(top.server.Seconds()/pga.server.Seconds(), "server/pga")
				b.ReportMetric(float64(top.rssKB)/float64(pga.rssKB), "rss/pga")
			}
		})
	}
}

type toolCost struct {
	client, server time.Duration
	rssKB          int64
}

// runTool runs a shell command line in a tmux terminal of its own for
// topCostDuration and measures it and the backends it opened.
func runTool(b *testing.B, tmux string, env []string, dataDir, command string) toolCost {
	b.Helper()
	postmaster := postmasterPID(b, dataDir)
	before := map[int]bool{}
	for _, p := range children(postmaster) {
		before[p] = true
	}
	sock := filepath.Join(b.TempDir(), "tmux")
	cmd := exec.Command(tmux, "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "40", command)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("tmux: %v: %s", err, out)
	}
	defer func() { _ = exec.Command(tmux, "-S", sock, "kill-server").Run() }()
	out, err := exec.Command(tmux, "-S", sock, "display-message", "-p", "-t", "0", "#{pane_pid}").Output()
	if err != nil {
		b.Fatalf("tmux: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		b.Fatal(err)
	}
	// Backends are read along the way as well as at the end: one that
	// ends before the end still counts.
	backends := map[int]time.Duration{}
	look := func() {
		for _, p := range children(postmaster) {
			if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); before[p] || err != nil || !strings.Contains(string(cl), "[local]") {
				continue
			}
			if t, err := cpuTime(p); err == nil {
				backends[p] = t
			}
		}
	}
	end := time.Now().Add(topCostDuration)
	for time.Now().Before(end) {
		time.Sleep(min(5*time.Second, time.Until(end))) // the tool runs for a fixed time
		look()
	}
	var cost toolCost
	if cost.client, err = cpuTime(pid); err != nil {
		screen, _ := exec.Command(tmux, "-S", sock, "capture-pane", "-p", "-t", "0").Output()
		b.Fatalf("%s ended early: %v\n%s", command, err, screen)
	}
	cost.rssKB = peakRSS(b, pid)
	if len(backends) == 0 {
		b.Fatalf("%s: no backend found", command)
	}
	for _, t := range backends {
		cost.server += t
	}
	return cost
}

func postmasterPID(b *testing.B, dataDir string) int {
	b.Helper()
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		b.Fatal(err)
	}
	return pid
}

// children are the pids of the direct children of a process.
func children(pid int) []int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTick = 10 * time.Millisecond

// cpuTime is a process's user+system CPU time so far.
func cpuTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields start
	// after its closing one; utime and stime are fields 14 and 15.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// peakRSS is a process's VmHWM in kB.
func peakRSS(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
