package pooler

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
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

// A pid and a start alone do not make a link: over TCP the ports must be
// the same (another server behind the same pooler has its own pids), and a
// socket connection is never a TCP backend.
func TestFindNeedsTheSameConnection(t *testing.T) {
	start := time.Date(2026, 12, 1, 22, 41, 36, 500_000_000, time.UTC)
	stamp := start.Truncate(time.Second)
	tcp := Link{PID: 42, Datname: "shop", LocalPort: 50682, ConnectTime: stamp}
	sock := Link{PID: 42, Datname: "shop", ConnectTime: stamp}
	for _, c := range []struct {
		name string
		link Link
		port int
		want bool
	}{
		{"tcp, same port", tcp, 50682, true},
		{"tcp, another port at the same time", tcp, 50683, false},
		{"tcp pooler, socket backend", tcp, -1, false},
		{"tcp, port hidden from us", tcp, 0, true},
		{"socket, socket backend", sock, -1, true},
		{"socket pooler, tcp backend", sock, 50682, false},
	} {
		l := &Look{links: map[int32][]Link{42: {c.link}}}
		if got := l.Find(42, c.port, start, "shop") != nil; got != c.want {
			t.Errorf("%s: found %v, want %v", c.name, got, c.want)
		}
	}
}

// What a pooler says reaches a terminal: an error of it carries no control
// character, and a count it cannot mean is 0.
func TestPoolerTextIsTamed(t *testing.T) {
	e := &Error{Pooler: "127.0.0.1:6432", Err: errors.New("bad \x1b]0;TITLE\a\x1b[2J thing\u009b")}
	if msg := e.Error(); strings.ContainsFunc(msg, unicode.IsControl) {
		t.Fatalf("control characters in %q", msg)
	}
	r := row{"a": "-7", "b": "999999999999999999999", "c": "12"}
	if r.int("a") != 0 || r.int("b") != 0 || r.int("c") != 12 {
		t.Fatalf("int: %d %d %d", r.int("a"), r.int("b"), r.int("c"))
	}
}

// PGREAP_PGBOUNCER is space-separated, and keyword/value strings have
// spaces: a keyword that comes again starts the next pooler.
func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"host=127.0.0.1 port=6432 user=stats": {"host=127.0.0.1 port=6432 user=stats"},
		"  host=a port=1   host=b port=2 ":    {"host=a port=1", "host=b port=2"},
		"postgres://s@a:1 postgres://s@b:2":   {"postgres://s@a:1", "postgres://s@b:2"},
		"host=a postgres://s@b:2 port=3":      {"host=a", "postgres://s@b:2", "port=3"},
		`host=a password='x y' user=u host=b`: {`host=a password='x y' user=u`, "host=b"},
		`host=a password='it\'s here' host=b`: {`host=a password='it\'s here'`, "host=b"},
		"":                                    nil,
		"host = a port =1 host= b port= 2":    {"host=a port=1", "host=b port=2"},
	} {
		if got := SplitList(in); !slices.Equal(got, want) {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}
