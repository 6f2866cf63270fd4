package bench

import (
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/tui"
)

// topSessions is how many sessions the frame of BenchmarkTop holds.
const topSessions = 2000

// BenchmarkTop measures what `pgreap top` spends drawing 2000 sessions on a
// 200x60 colour terminal, against the baseline of printing the same 2000
// sessions as `ls` does (output.Write, table, colour, width 200) in the same
// run. The sessions are made up, with the variety of a busy server (states,
// lock waits, parallel workers, long queries): drawing does not depend on
// where they came from, and the snapshot itself is BenchmarkLs's.
//
// Metrics:
//
//	ms/frame      one key (the cursor moves) and the redraw: Update + View;
//	              what a person waits for (target: at most 16)
//	ms/refresh    a new snapshot arrives: the rows, the sort, the widths,
//	              and the redraw (Update + View), once per --interval
//	ms/ls-table   the baseline: the same sessions printed as ls's table
//	frame/ls      ms/frame / ms/ls-table
//	refresh/ls    ms/refresh / ms/ls-table
//	KB/frame      bytes allocated per frame
func BenchmarkTop(b *testing.B) {
	f := topFrame(topSessions)
	m := tui.New(tui.Options{Source: nil, Interval: time.Hour, Color: true})
	m.Update(tea.WindowSizeMsg{Width: 200, Height: 60})
	m.Update(tui.FrameMsg{Frame: f})
	if v := m.View().Content; len(f.Snap.Sessions) != topSessions || !strings.Contains(v, "waiting on locks") || strings.Count(v, "\n") != 59 {
		b.Fatalf("not a full screen of %d sessions:\n%s", len(f.Snap.Sessions), v)
	}
	down := tea.KeyPressMsg{Code: tea.KeyDown}
	up := tea.KeyPressMsg{Code: tea.KeyUp}

	var frame, refresh, ls time.Duration
	var frameBytes uint64
	const frames = 200 // per iteration: a person holding a key down
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := output.Write(io.Discard, output.Table, f.Snap.Sessions, output.Options{Now: f.Snap.Taken, Color: true, Width: 200}); err != nil {
			b.Fatal(err)
		}
		ls += time.Since(start)

		start = time.Now()
		m.Update(tui.FrameMsg{Frame: f})
		_ = m.View().Content
		refresh += time.Since(start)

		before := allocated()
		start = time.Now()
		for k := 0; k < frames; k++ {
			key := down
			if k%80 >= 40 { // down 40 rows (scrolling), up 40, ...
				key = up
			}
			m.Update(key)
			_ = m.View().Content
		}
		frame += time.Since(start)
		frameBytes += allocated() - before
	}
	b.StopTimer()
	n := float64(b.N)
	msFrame := float64(frame.Microseconds()) / 1000 / n / frames
	msRefresh := float64(refresh.Microseconds()) / 1000 / n
	msLs := float64(ls.Microseconds()) / 1000 / n
	b.ReportMetric(msFrame, "ms/frame")
	b.ReportMetric(msRefresh, "ms/refresh")
	b.ReportMetric(msLs, "ms/ls-table")
	b.ReportMetric(msFrame/msLs, "frame/ls")
	b.ReportMetric(msRefresh/msLs, "refresh/ls")
	b.ReportMetric(float64(frameBytes)/n/frames/1024, "KB/frame")
}

// topFrame makes n sessions as a busy server has them: mostly idle pool
// connections, queries of a few hundred bytes and one in fifty of 7 KB
// over 170 lines (an ORM's), transactions left open, lock waits queued behind them, parallel queries with two
// workers each.
func topFrame(n int) *tui.Frame {
	taken := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	sessions := make([]activity.Session, 0, n)
	apps := []string{"checkout", "billing-worker", "report", "api-gateway", "pgbouncer", "metabase"}
	states := []string{"idle", "idle", "idle", "idle", "active", "idle in transaction"}
	for pid := int32(10000); len(sessions) < n; pid++ {
		i := len(sessions)
		s := activity.Session{
			PID: pid, Datname: fmt.Sprintf("shop_%d", i%7), Usename: fmt.Sprintf("role_%d", i%13),
			ApplicationName: apps[i%len(apps)], ClientAddr: netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i % 250)}),
			BackendType: "client backend", State: states[i%len(states)],
			BackendStart: taken.Add(-time.Duration(i+3600) * time.Second),
		}
		age := time.Duration(i%900) * time.Second
		s.QueryStart, s.StateChange = taken.Add(-age), taken.Add(-age)
		s.Query = fmt.Sprintf("SELECT o.id, o.customer_id, sum(l.amount) FROM orders o JOIN lines l ON l.order_id = o.id WHERE o.created_at > now() - interval '%d days' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 100 /* %s */", i%30, strings.Repeat("x", i%400))
		if i%50 == 7 {
			// An ORM's query: 7 KB over 170 lines.
			s.Query = "SELECT\n" + strings.Repeat("    t0.some_rather_long_column_name AS c,\n", 170) + "    1\nFROM t0\nWHERE t0.id = $1"
		}
		switch s.State {
		case "idle":
			s.WaitEventType, s.WaitEvent = "Client", "ClientRead"
		case "idle in transaction":
			s.XactStart = s.QueryStart.Add(-time.Minute)
		case "active":
			s.XactStart = s.QueryStart
			if i%60 == 4 && i > 0 { // queued behind the open transaction before it
				s.WaitEventType, s.WaitEvent = "Lock", "transactionid"
				s.BlockedBy = []int32{pid - 4}
			}
		}
		sessions = append(sessions, s)
		if s.State == "active" && i%100 == 10 && len(sessions)+2 <= n {
			for w := int32(1); w <= 2; w++ {
				sessions = append(sessions, activity.Session{
					PID: pid + w, LeaderPID: pid, Datname: s.Datname, Usename: s.Usename, BackendType: "parallel worker",
					State: "active", BackendStart: s.QueryStart, QueryStart: s.QueryStart, StateChange: s.QueryStart, Query: s.Query,
				})
			}
			pid += 2
		}
	}
	waits := map[int32]time.Duration{}
	for _, s := range sessions {
		if len(s.BlockedBy) > 0 {
			waits[s.PID] = taken.Sub(s.QueryStart)
		}
	}
	return &tui.Frame{
		Snap:   &activity.Snapshot{Taken: taken, ServerVersion: 170000, Sessions: activity.GroupWorkers(sessions)},
		Waits:  waits,
		Server: "127.0.0.1:5432/postgres · PostgreSQL 17.0",
	}
}

// allocated is the bytes the process has allocated so far.
func allocated() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}
