package tui

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest/v2"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
)

// The model tests feed fixed frames (no server: what is tested here is
// the screen and the keys); db_test.go runs the model on a real server.

var taken = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return taken.Add(-d) }

// incident is a server in trouble: a parallel report, a transaction left
// open that two sessions queue behind, an application name with an escape
// sequence, an autovacuum worker.
func incident() *Frame {
	addr := netip.MustParseAddr
	s := []activity.Session{
		{PID: 101, Datname: "postgres", Usename: "app", ApplicationName: "web-1", ClientAddr: addr("10.0.0.5"), BackendType: "client backend",
			State: "idle", BackendStart: ago(time.Hour), QueryStart: ago(2 * time.Minute), StateChange: ago(2 * time.Minute),
			WaitEventType: "Client", WaitEvent: "ClientRead", Query: "SELECT 1"},
		{PID: 102, Datname: "shop", Usename: "alice", ApplicationName: "report", ClientAddr: addr("10.0.0.7"), BackendType: "client backend",
			State: "active", BackendStart: ago(20 * time.Minute), XactStart: ago(12 * time.Minute), QueryStart: ago(12 * time.Minute), StateChange: ago(12 * time.Minute),
			Query: "SELECT customer_id, sum(total)\n  FROM orders\n GROUP BY customer_id\n ORDER BY 2 DESC"},
		{PID: 103, LeaderPID: 102, Datname: "shop", Usename: "alice", BackendType: "parallel worker", State: "active",
			BackendStart: ago(12 * time.Minute), QueryStart: ago(12 * time.Minute), StateChange: ago(12 * time.Minute), Query: "SELECT customer_id, sum(total)"},
		{PID: 104, LeaderPID: 102, Datname: "shop", Usename: "alice", BackendType: "parallel worker", State: "active",
			BackendStart: ago(12 * time.Minute), QueryStart: ago(12 * time.Minute), StateChange: ago(12 * time.Minute), Query: "SELECT customer_id, sum(total)"},
		{PID: 105, Datname: "shop", Usename: "bob", ApplicationName: "billing", ClientAddr: addr("10.0.0.9"), BackendType: "client backend",
			State: "idle in transaction", BackendStart: ago(time.Hour), XactStart: ago(4 * time.Minute), QueryStart: ago(3 * time.Minute), StateChange: ago(3 * time.Minute),
			WaitEventType: "Client", WaitEvent: "ClientRead", Query: "UPDATE accounts SET balance = balance - 10 WHERE id = 7"},
		{PID: 106, Datname: "shop", Usename: "carol", ApplicationName: "checkout", ClientAddr: addr("10.0.0.11"), BackendType: "client backend",
			State: "active", BackendStart: ago(time.Hour), XactStart: ago(40 * time.Second), QueryStart: ago(40 * time.Second), StateChange: ago(40 * time.Second),
			WaitEventType: "Lock", WaitEvent: "transactionid", BlockedBy: []int32{105}, Query: "UPDATE accounts SET balance = balance + 10 WHERE id = 7"},
		{PID: 107, Datname: "shop", Usename: "dave", ApplicationName: "checkout", ClientAddr: addr("10.0.0.12"), BackendType: "client backend",
			State: "active", BackendStart: ago(time.Hour), XactStart: ago(20 * time.Second), QueryStart: ago(20 * time.Second), StateChange: ago(20 * time.Second),
			WaitEventType: "Lock", WaitEvent: "tuple", BlockedBy: []int32{106}, Query: "UPDATE accounts SET flag = true WHERE id = 7"},
		{PID: 108, Datname: "postgres", Usename: "mallory", ApplicationName: "evil\x1b[2J\x1b[31mapp", BackendType: "client backend",
			State: "active", BackendStart: ago(time.Minute), QueryStart: ago(1500 * time.Millisecond), StateChange: ago(1500 * time.Millisecond),
			Query: "select '\x1b]0;pwned\x07'"},
		{PID: 109, Datname: "shop", BackendType: "autovacuum worker", State: "active",
			BackendStart: ago(30 * time.Second), XactStart: ago(30 * time.Second), QueryStart: ago(30 * time.Second), StateChange: ago(30 * time.Second),
			Query: "autovacuum: VACUUM public.orders"},
	}
	return &Frame{
		Snap:   &activity.Snapshot{Taken: taken, ServerVersion: 160004, Sessions: s},
		Waits:  map[int32]time.Duration{106: 40 * time.Second, 107: 20 * time.Second},
		Server: "localhost:5432/postgres · PostgreSQL 16.4",
	}
}

// fakeSource serves frames in turn (the last one again and again) and
// records actions, answering each session with outcome.
type fakeSource struct {
	mu      sync.Mutex
	frames  []*Frame
	err     error // of every Frame after the frames run out, if set
	calls   int
	acted   [][]int32
	outcome func(s *activity.Session) (action.Outcome, string)
}

func (f *fakeSource) Frame(context.Context) (*Frame, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls > len(f.frames) && f.err != nil {
		return nil, f.err
	}
	return f.frames[min(f.calls, len(f.frames))-1], nil
}

func (f *fakeSource) Act(_ context.Context, kind action.Kind, _ *activity.Snapshot, sessions []activity.Session) ([]action.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int32
	var results []action.Result
	for i := range sessions {
		pids = append(pids, sessions[i].PID)
		r := action.Result{Session: sessions[i], Action: kind}
		r.Outcome, r.Detail = f.outcome(&sessions[i])
		results = append(results, r)
	}
	f.acted = append(f.acted, pids)
	return results, nil
}

func (f *fakeSource) actions() [][]int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acted
}

func terminated(s *activity.Session) (action.Outcome, string) {
	if s.BackendType == "autovacuum worker" {
		return action.Protected, "autovacuum worker: --include-autovacuum to allow"
	}
	return action.Terminated, ""
}

// session runs a model with teatest at w x h, waits for its first frame,
// and returns it with a way to send keys.
type session struct {
	t  *testing.T
	tm *teatest.TestModel

	mu     sync.Mutex
	screen string // the model's screen, as of the last look
}

// look is a message that has the program's loop draw the model's screen
// for the test: the renderer writes only the cells that change, so the
// text on the screen is not to be found in the bytes written.
type look struct{}

func start(t *testing.T, opt Options, w, h int) *session {
	t.Helper()
	if w < minWidth || h < minHeight {
		return startUntil(t, opt, w, h, "too small")
	}
	return startUntil(t, opt, w, h, " active, ") // the header of the first frame
}

// startUntil starts the model and waits until the screen shows text.
func startUntil(t *testing.T, opt Options, w, h int, text string) *session {
	t.Helper()
	if opt.Interval == 0 {
		opt.Interval = time.Hour // no refresh unless the test sends one
	}
	s := &session{t: t}
	// The filter runs in the program's loop, before Update: a look sees
	// what every message before it made of the model.
	looks := tea.WithFilter(func(m tea.Model, msg tea.Msg) tea.Msg {
		if _, ok := msg.(look); ok {
			v := m.(*Model).draw()
			s.mu.Lock()
			s.screen = v
			s.mu.Unlock()
		}
		return msg
	})
	s.tm = teatest.NewTestModel(t, New(opt), teatest.WithInitialTermSize(w, h), teatest.WithProgramOptions(looks))
	s.waitFor(text)
	return s
}

// waitFor waits until the screen shows text; the test fails with the
// screen after 10s.
func (s *session) waitFor(text string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.tm.Send(look{})
		time.Sleep(5 * time.Millisecond) // a poll, not a wait for time to pass
		s.mu.Lock()
		screen := s.screen
		s.mu.Unlock()
		if strings.Contains(screen, text) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the screen does not show %q after 10s:\n%s", text, screen)
		}
	}
}

// keys sends keys: runes one by one, and the named keys in <...>.
func (s *session) keys(ks ...string) {
	for _, k := range ks {
		for _, msg := range presses(k) {
			s.tm.Send(msg)
		}
	}
}

// Keys as the terminal sends them: one message a key.
var (
	enter = tea.KeyPressMsg{Code: tea.KeyEnter}
	esc   = tea.KeyPressMsg{Code: tea.KeyEscape}
	down  = tea.KeyPressMsg{Code: tea.KeyDown}
	up    = tea.KeyPressMsg{Code: tea.KeyUp}
	space = tea.KeyPressMsg{Code: tea.KeySpace, Text: " "}
	ctrlC = tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
)

// presses is a named key in <...>, or each rune of text as a key.
func presses(k string) []tea.KeyPressMsg {
	named := map[string]tea.KeyPressMsg{"<enter>": enter, "<esc>": esc, "<down>": down, "<up>": up, "<space>": space, "<ctrl+c>": ctrlC}
	if msg, ok := named[k]; ok {
		return []tea.KeyPressMsg{msg}
	}
	var msgs []tea.KeyPressMsg
	for _, r := range k {
		msgs = append(msgs, tea.KeyPressMsg{Code: r, Text: string(r)})
	}
	return msgs
}

// quit presses q and returns the model as it ended.
func (s *session) quit(keys ...string) *Model {
	s.t.Helper()
	if len(keys) == 0 {
		keys = []string{"q"}
	}
	s.keys(keys...)
	return s.tm.FinalModel(s.t, teatest.WithFinalTimeout(10*time.Second)).(*Model)
}

// screen is what the model draws when it ended.
func screen(m *Model) []byte { return []byte(m.draw() + "\n") }

func TestScreens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys []string
		w, h int
	}{
		{name: "start", w: 140, h: 16},
		{name: "narrow", w: 72, h: 12},
		{name: "blocking tree", keys: []string{"b"}, w: 140, h: 12},
		{name: "filter", keys: []string{"/", "checkout", "<enter>"}, w: 140, h: 10},
		{name: "typing a filter", keys: []string{"/", "shop"}, w: 100, h: 10},
		{name: "sort by user", keys: []string{"s", "s", "s"}, w: 140, h: 16},
		{name: "scrolled", keys: []string{"<down>", "<down>", "<down>", "<down>", "<down>", "<down>"}, w: 100, h: 9},
		{name: "details", keys: []string{"<enter>"}, w: 100, h: 30},
		{name: "help", keys: []string{"?"}, w: 100, h: 24},
		{name: "question", keys: []string{"<space>", "<down>", "<space>", "t"}, w: 140, h: 14},
		{name: "too small", w: 30, h: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := start(t, Options{Source: &fakeSource{frames: []*Frame{incident()}}}, tt.w, tt.h)
			s.keys(tt.keys...)
			golden.RequireEqual(t, screen(s.quit("<ctrl+c>")))
		})
	}
}

// Colours on a colour terminal: state, age, lock waits; the line under the
// cursor in reverse video.
func TestColor(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Source: &fakeSource{frames: []*Frame{incident()}}, Color: true}, 140, 14)
	got := s.quit()
	golden.RequireEqual(t, screen(got))
	if !strings.Contains(got.draw(), "\x1b[") {
		t.Fatal("no colour on a colour terminal")
	}
}

// Without colour (NO_COLOR, a dumb terminal) no escape sequence at all is
// drawn: not even those in an application name or a query.
func TestPlainHasNoEscapes(t *testing.T) {
	t.Parallel()
	f := incident()
	for i := range f.Snap.Sessions {
		s := &f.Snap.Sessions[i]
		switch s.PID {
		case 108: // and its application name and query, in incident()
			s.Usename, s.Datname = "mal\x1b[1mlory", "p\x1b]8;;http://x\x07g"
		case 109:
			s.BackendType, s.State = "ext\x1b[5m worker", "act\x1b[7mive"
		}
	}
	for _, keys := range [][]string{nil, {"b"}, {"<down>", "<down>", "<down>", "<down>", "<down>", "<down>", "<enter>"}, {"t"}, {"G", "<up>", "t"}, {"G", "<enter>"}} {
		s := start(t, Options{Source: &fakeSource{frames: []*Frame{f}}}, 140, 20)
		s.keys(keys...)
		m := s.quit("<ctrl+c>")
		if v := m.draw(); strings.ContainsAny(v, "\x1b\x07") {
			t.Fatalf("keys %q: control characters on the screen:\n%q", keys, v)
		}
	}
}

func TestTerminateAsksThenActsOnTheMarked(t *testing.T) {
	t.Parallel()
	src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
	s := start(t, Options{Source: src}, 140, 14)
	// The two oldest (the report, 12m, and 105, idle in transaction 3m),
	// and the autovacuum worker, found with a filter: only the marked
	// sessions on the list are asked about, the others are said to be
	// left out.
	s.keys("<space>", "<space>", "/", "vacuum", "<enter>", "<space>", "t")
	s.waitFor("terminate 1 session? y/n   (2 marked, not on the list now, left out)")
	s.keys("n", "<esc>", "t") // esc clears the filter: all three are on the list
	s.waitFor("terminate 3 sessions? y/n")
	if len(src.actions()) != 0 {
		t.Fatal("acted before the answer")
	}
	s.keys("y")
	s.waitFor("terminate: 2 terminated, 1 protected")
	m := s.quit()
	if got := src.actions(); len(got) != 1 || len(got[0]) != 3 || got[0][0] != 102 || got[0][1] != 105 || got[0][2] != 109 {
		t.Fatalf("acted on %v, want [[102 105 109]]", got)
	}
	want := "terminate: 2 terminated, 1 protected — 102 terminated · 105 terminated · 109 protected (autovacuum worker: --include-autovacuum to allow)"
	if len(m.Done()) != 1 || m.Done()[0] != want {
		t.Fatalf("done %q\nwant %q", m.Done(), want)
	}
	if len(m.marks) != 0 {
		t.Fatalf("marks left after the action: %v", m.marks)
	}
}

// Keys in one burst (typed ahead, or pasted where the terminal does not
// mark pastes) never answer a question: they come one a message, all
// from one read of the terminal, and a y read with the key that asks was
// not typed to answer it. A y read after the question answers.
func TestABurstOfKeysNeverAnswers(t *testing.T) {
	t.Parallel()
	for _, burst := range [][]string{{"ty"}, {"pretty"}, {"select yes"}, {"t", "yes"}, {"c", "yy"}} {
		src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
		reads := uint64(1)
		m := New(Options{Source: src, Interval: time.Hour, Reads: func() uint64 { return reads }})
		m.Update(size(140, 20))
		m.Update(FrameMsg{Frame: incident()})
		for _, keys := range burst {
			for _, k := range presses(keys) {
				if _, cmd := m.Update(k); cmd != nil {
					run(cmd)
				}
			}
		}
		if m.ask == nil || m.acting || len(src.actions()) != 0 {
			t.Fatalf("burst %q: question %v, acting %v, acted %v", burst, m.ask != nil, m.acting, src.actions())
		}
		reads++
		if _, cmd := m.Update(runes("y")); cmd == nil || !m.acting {
			t.Fatalf("burst %q: a y read after the question did not answer it", burst)
		}
	}
}

// run runs a command and what it returns, as the program would, without
// the ticks (which would wait).
func run(cmd tea.Cmd) []tea.Msg {
	msg := cmd()
	if batch, ok := msg.(tea.BatchMsg); ok {
		var msgs []tea.Msg
		for _, c := range batch {
			if c != nil {
				msgs = append(msgs, run(c)...)
			}
		}
		return msgs
	}
	return []tea.Msg{msg}
}

func TestNoMeansNothing(t *testing.T) {
	t.Parallel()
	for _, answer := range []string{"n", "<esc>"} {
		src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
		s := start(t, Options{Source: src}, 140, 14)
		s.keys("c", "x", "t", answer) // keys other than y/n do not answer
		s.waitFor("not confirmed, nothing done")
		m := s.quit()
		if len(src.actions()) != 0 || len(m.Done()) != 0 {
			t.Fatalf("answer %s: acted %v", answer, src.actions())
		}
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
	s := start(t, Options{Source: src, ReadOnly: true}, 140, 14)
	s.keys("<space>", "t", "y", "c", "y")
	s.waitFor("read-only (--read-only)")
	m := s.quit()
	if len(src.actions()) != 0 || m.ask != nil {
		t.Fatalf("read-only acted: %v", src.actions())
	}
	golden.RequireEqual(t, screen(m))
}

// A refresh that fails keeps the last frame on the screen and says so; the
// next good one clears it.
func TestRefreshFailure(t *testing.T) {
	t.Parallel()
	src := &fakeSource{frames: []*Frame{incident()}, err: errors.New("connection refused\nsecond line")}
	s := startUntil(t, Options{Source: src, Interval: 10 * time.Millisecond}, 140, 8, "refresh failed, retrying every 10ms: connection refused second line")
	m := s.quit()
	if m.frame == nil || len(m.view) != 7 {
		t.Fatalf("the last frame is gone: %d rows", len(m.view))
	}
}

// Marks and the cursor follow (pid, backend_start): a pid reused by a new
// backend is another session, and loses the mark.
func TestMarksFollowTheSessionNotThePID(t *testing.T) {
	t.Parallel()
	first := incident()
	second := incident()
	for i := range second.Snap.Sessions {
		if s := &second.Snap.Sessions[i]; s.PID == 105 {
			s.BackendStart = taken // 105 ended, and a new backend got its pid
		}
	}
	second.Snap.Taken = taken.Add(time.Second)
	src := &fakeSource{frames: []*Frame{first}, outcome: terminated}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(tea.WindowSizeMsg{Width: 140, Height: 20})
	m.Update(FrameMsg{Frame: first})
	m.key(down)
	if r := m.selected(); r == nil || r.s.PID != 105 {
		t.Fatalf("cursor on %v, want 105", r)
	}
	m.key(space) // marks 105, moves to 101 (by age)
	m.key(space) // marks 101, moves on
	m.key(up)    // back on 101
	if len(m.marks) != 2 {
		t.Fatalf("marks %v", m.marks)
	}
	m.Update(FrameMsg{Frame: second})
	if len(m.marks) != 1 || !m.marks[identOf(&second.Snap.Sessions[0])] {
		t.Fatalf("after pid 105 was reused: marks %v, want 101's only", m.marks)
	}
	if r := m.selected(); r == nil || r.s.PID != 101 {
		t.Fatalf("cursor moved to %v, want it on 101", r)
	}
	m.key(runes("t"))
	if m.ask == nil || len(m.ask.sessions) != 1 || m.ask.sessions[0].PID != 101 {
		t.Fatalf("question %+v", m.ask)
	}
}

// Keys typed faster than they are read come one a message at the same
// instant; each is a key of its own.
func TestKeysInOneBurst(t *testing.T) {
	t.Parallel()
	m := New(Options{Source: &fakeSource{frames: []*Frame{incident()}}, Interval: time.Hour})
	m.Update(tea.WindowSizeMsg{Width: 140, Height: 20})
	m.Update(FrameMsg{Frame: incident()})
	for _, k := range presses("b/carol") {
		m.Update(k)
	}
	m.Update(enter)
	// In the tree, the filter keeps carol's whole tree: 105 at its root.
	if !m.blockers || m.filter != "carol" || len(m.view) != 3 || m.view[0].s.PID != 105 || m.view[1].s.PID != 106 {
		t.Fatalf("blockers %v filter %q view %d", m.blockers, m.filter, len(m.view))
	}
}

// Resizing redraws at the new size, the cursor kept on the screen.
func TestResize(t *testing.T) {
	t.Parallel()
	m := New(Options{Source: &fakeSource{frames: []*Frame{incident()}}, Interval: time.Hour})
	m.Update(tea.WindowSizeMsg{Width: 140, Height: 20})
	m.Update(FrameMsg{Frame: incident()})
	m.key(runes("G"))
	m.Update(tea.WindowSizeMsg{Width: 60, Height: 8})
	lines := strings.Split(m.draw(), "\n")
	if len(lines) != 8 {
		t.Fatalf("%d lines at height 8:\n%s", len(lines), m.draw())
	}
	for _, l := range lines {
		if width(l) > 60 {
			t.Fatalf("line wider than 60: %q", l)
		}
	}
	if !strings.Contains(m.draw(), "> 108 ") {
		t.Fatalf("the cursor's row is off the screen:\n%s", m.draw())
	}
}

func size(w, h int) tea.WindowSizeMsg { return tea.WindowSizeMsg{Width: w, Height: h} }

// runes is a key of one rune.
func runes(s string) tea.KeyPressMsg { return presses(s)[0] }

// The details stay on their session: when it ends, they say so rather
// than show the next row's.
func TestDetailsOfAnEndedSession(t *testing.T) {
	t.Parallel()
	m := New(Options{Source: &fakeSource{frames: []*Frame{incident()}}, Interval: time.Hour})
	m.Update(size(100, 30))
	m.Update(FrameMsg{Frame: incident()})
	m.key(enter)
	if !strings.HasPrefix(m.draw(), "session 102\n") {
		t.Fatalf("details:\n%s", m.draw())
	}
	next := incident()
	next.Snap.Sessions = next.Snap.Sessions[4:] // 102 and its workers ended
	m.Update(FrameMsg{Frame: next})
	if !strings.HasPrefix(m.draw(), "session 102 has ended") {
		t.Fatalf("details after 102 ended:\n%s", m.draw())
	}
	m.key(esc)
	if !strings.Contains(m.draw(), " sort age") {
		t.Fatalf("esc did not go back:\n%s", m.draw())
	}
}

// A question about many sessions names as many as fit, says how many more,
// and the screen keeps its height.
func TestQuestionAboutManySessions(t *testing.T) {
	t.Parallel()
	for _, h := range []int{minHeight, 12, 30} {
		m := New(Options{Source: &fakeSource{frames: []*Frame{incident()}}, Interval: time.Hour})
		m.Update(size(100, h))
		m.Update(FrameMsg{Frame: incident()})
		for range m.view {
			m.key(space)
		}
		m.key(runes("t"))
		v := m.draw()
		if n := strings.Count(v, "\n") + 1; n != h {
			t.Fatalf("height %d: %d lines:\n%s", h, n, v)
		}
		named := strings.Count(v, "\n  1") // the sessions' lines: two spaces and a pid of 1xx
		more := min(maxAsked, h-7)
		if !strings.Contains(v, "terminate 7 sessions? y/n") || named < more ||
			!strings.Contains(v, fmt.Sprintf("… and %d more", 7-more)) {
			t.Fatalf("height %d:\n%s", h, v)
		}
	}
}

// Enter shows every field and the whole query, scrolling when it is
// longer than the screen.
func TestDetailsScroll(t *testing.T) {
	t.Parallel()
	f := incident()
	f.Snap.Sessions[1].Query = "SELECT 1\n" + strings.Repeat("UNION ALL SELECT 2\n", 40) + "-- the last line"
	m := New(Options{Source: &fakeSource{frames: []*Frame{f}}, Interval: time.Hour})
	m.Update(size(100, 12))
	m.Update(FrameMsg{Frame: f})
	m.key(enter)
	if v := m.draw(); !strings.Contains(v, "lines 1-11 of 61") || strings.Contains(v, "the last line") {
		t.Fatalf("first page:\n%s", v)
	}
	for range 100 { // past the end: it stops at the last page
		m.key(runes("j"))
	}
	if v := m.draw(); !strings.Contains(v, "lines 51-61 of 61") || !strings.Contains(v, "-- the last line") {
		t.Fatalf("last page:\n%s", v)
	}
	m.key(runes("g"))
	if v := m.draw(); !strings.Contains(v, "lines 1-11 of 61") {
		t.Fatalf("back to the top:\n%s", v)
	}
}

// Only the latest refresh scheduled counts: an action's outcome fetches a
// frame at once, and the refresh that was due does not start a second loop.
func TestOneRefreshLoop(t *testing.T) {
	t.Parallel()
	src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(140, 20))
	m.Update(FrameMsg{Frame: incident()}) // schedules refresh 1
	m.Update(FrameMsg{Frame: incident()}) // as after an action: schedules 2
	if _, cmd := m.Update(tickMsg{1}); cmd != nil {
		t.Fatal("a stale refresh fetched a frame")
	}
	_, cmd := m.Update(tickMsg{2})
	if cmd == nil {
		t.Fatal("the refresh due did not fetch")
	}
	if msgs := run(cmd); len(msgs) != 1 || msgs[0].(FrameMsg).Frame == nil {
		t.Fatalf("fetched %v", msgs)
	}
	if _, cmd := m.Update(tickMsg{2}); cmd != nil {
		t.Fatal("a second fetch while one is in flight")
	}
}

// q while an action runs says that its outcome is not known yet; a second
// q quits anyway.
func TestQuitDuringAnAction(t *testing.T) {
	t.Parallel()
	src := &fakeSource{frames: []*Frame{incident()}, outcome: terminated}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(140, 20))
	m.Update(FrameMsg{Frame: incident()})
	m.key(runes("t"))
	if _, cmd := m.key(runes("y")); cmd == nil || !m.Acting() {
		t.Fatal("y did not start the action")
	}
	if _, cmd := m.key(runes("q")); cmd != nil || !strings.Contains(m.status, "q again quits without it") {
		t.Fatalf("the first q: status %q", m.status)
	}
	_, cmd := m.key(runes("q"))
	if cmd == nil {
		t.Fatal("the second q did not quit")
	}
	if _, ok := cmd().(tea.QuitMsg); !ok {
		t.Fatal("the second q did not quit")
	}
}

// A panic in a command (a refresh, an action) is an error on the screen,
// not a crash that takes the terminal with it.
func TestPanicInACommand(t *testing.T) {
	t.Parallel()
	m := New(Options{Source: panicSource{}, Interval: time.Hour})
	m.Update(size(140, 20))
	msgs := run(m.Init())
	if len(msgs) != 1 || msgs[0].(FrameMsg).Err == nil || !strings.Contains(msgs[0].(FrameMsg).Err.Error(), "internal error, please report it: boom") {
		t.Fatalf("%v", msgs)
	}
	m.Update(msgs[0])
	if !strings.Contains(m.draw(), "refresh failed, retrying every 1h0m0s: internal error, please report it: boom") {
		t.Fatalf("screen:\n%s", m.draw())
	}
}

type panicSource struct{}

func (panicSource) Frame(context.Context) (*Frame, error) { panic("boom") }

func (panicSource) Act(context.Context, action.Kind, *activity.Snapshot, []activity.Session) ([]action.Result, error) {
	panic("boom")
}

// A blocker left out by the selectors: its waiters form a tree of their
// own after the true roots, and BLOCKED BY stays on a narrow screen to say
// what they wait for.
func TestTreeWithABlockerNotShown(t *testing.T) {
	t.Parallel()
	f := incident()
	f.Snap.Sessions = slices.DeleteFunc(f.Snap.Sessions, func(s activity.Session) bool { return s.PID == 105 })
	m := New(Options{Source: &fakeSource{frames: []*Frame{f}}, Interval: time.Hour})
	m.Update(size(80, 12))
	m.Update(FrameMsg{Frame: f})
	m.key(runes("b"))
	if len(m.view) != 2 || m.view[0].s.PID != 106 || m.view[0].depth != 0 || m.view[1].depth != 1 {
		t.Fatalf("tree %+v", m.view)
	}
	if !slices.Contains(m.cols, colBlockedBy) || !strings.Contains(m.draw(), " 105 ") {
		t.Fatalf("BLOCKED BY is not shown:\n%s", m.draw())
	}
}

// A prepared transaction at the root of a wait: the tree shows it as the
// root (it has no backend, so no pid), the list of sessions does not, and
// top never acts on it.
func TestTreeWithAPreparedRoot(t *testing.T) {
	t.Parallel()
	f := incident()
	f.Snap.Sessions = append(f.Snap.Sessions, activity.Session{PID: 110, Datname: "shop", Usename: "erin", ApplicationName: "ledger",
		BackendType: "client backend", State: "active", BackendStart: ago(time.Hour), XactStart: ago(90 * time.Second),
		QueryStart: ago(90 * time.Second), StateChange: ago(90 * time.Second), WaitEventType: "Lock", WaitEvent: "relation",
		BlockedByPrepared: []string{"tx-42"}, Query: "SELECT count(*) FROM ledger"})
	f.Snap.Prepared = []activity.Session{{GID: "tx-42", BackendType: activity.BackendTypePrepared, Datname: "shop", Usename: "erin", XactStart: ago(3 * time.Hour)}}
	f.Waits[110] = 90 * time.Second
	src := &fakeSource{frames: []*Frame{f}, outcome: terminated}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(140, 16))
	m.Update(FrameMsg{Frame: f})
	for i := range m.view {
		if m.view[i].s.IsPrepared() {
			t.Fatalf("the list of sessions shows a prepared transaction:\n%s", m.draw())
		}
	}
	if !strings.Contains(m.draw(), "prepared:tx-42") || !strings.Contains(m.draw(), "prepared transactions blocking: 1") {
		t.Fatalf("BLOCKED BY or the summary does not name it:\n%s", m.draw())
	}
	m.key(runes("b"))
	at := slices.IndexFunc(m.view, func(r row) bool { return r.s.IsPrepared() })
	if at < 0 || m.view[at].depth != 0 || at+1 >= len(m.view) || m.view[at+1].s.PID != 110 || m.view[at+1].depth != 1 {
		t.Fatalf("tree:\n%s", m.draw())
	}
	if !strings.Contains(m.draw(), "prepared:tx-42") || !strings.Contains(m.draw(), "prepared transaction") {
		t.Fatalf("the root is not named:\n%s", m.draw())
	}
	m.cursor = at
	m.key(runes(" "))
	m.key(runes("t"))
	if len(m.marks) != 0 || m.ask != nil || !strings.Contains(m.status, "ROLLBACK PREPARED") {
		t.Fatalf("marks %v, question %v, status %q", m.marks, m.ask, m.status)
	}
}

// The same sessions later (a quiet server's refresh, which shares the
// last snapshot's sessions) draw as a snapshot taken then would: the ages
// move, their colours and the age column's width with them.
func TestSameSessionsLater(t *testing.T) {
	t.Parallel()
	for _, keys := range []string{"", "b", "s", "/shop\r"} {
		first := incident()
		later := *first
		snap := *first.Snap
		snap.Taken = snap.Taken.Add(9 * time.Minute)
		later.Snap = &snap
		fresh := incident()
		fresh.Snap.Taken = snap.Taken

		quiet := New(Options{Source: &fakeSource{}, Interval: time.Hour, Color: true})
		full := New(Options{Source: &fakeSource{}, Interval: time.Hour, Color: true})
		for _, m := range []*Model{quiet, full} {
			m.Update(size(140, 16))
		}
		quiet.Update(FrameMsg{Frame: first})
		full.Update(FrameMsg{Frame: fresh})
		for _, k := range keys {
			key := runes(string(k))
			if k == '\r' {
				key = enter
			}
			quiet.Update(key)
			full.Update(key)
		}
		quiet.Update(FrameMsg{Frame: &later})
		if got, want := quiet.View().Content, full.View().Content; got != want {
			t.Fatalf("keys %q: the same sessions 9m later:\n%s\nwant, as a new snapshot:\n%s", keys, got, want)
		}
	}
}
