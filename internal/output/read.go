package output

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pooler"
)

// SavedSnapshot is `ls -o json` read back: either its plain array of rows,
// or an object {"taken_at": TIME, "sessions": [rows]} that says when the
// snapshot was taken (the array alone does not: ReadSnapshot then takes
// the caller's time, a file's modification time). The rows of a standby's
// replay and of prepared transactions are read but are no sessions (the
// daemon never acts on them).
type SavedSnapshot struct {
	TakenAt  *time.Time        `json:"taken_at"`
	Sessions []json.RawMessage `json:"sessions"`
}

// savedRow is one row of `ls -o json`, as fields writes it.
type savedRow struct {
	PID               *int32        `json:"pid"`
	LeaderPID         *int32        `json:"leader_pid"`
	Datname           *string       `json:"datname"`
	Usename           *string       `json:"usename"`
	ApplicationName   string        `json:"application_name"`
	ClientAddr        *string       `json:"client_addr"`
	ClientPort        *int32        `json:"client_port"`
	BackendType       *string       `json:"backend_type"`
	State             *string       `json:"state"`
	BackendStart      *time.Time    `json:"backend_start"`
	XactStart         *time.Time    `json:"xact_start"`
	QueryStart        *time.Time    `json:"query_start"`
	StateChange       *time.Time    `json:"state_change"`
	WaitEventType     *string       `json:"wait_event_type"`
	WaitEvent         *string       `json:"wait_event"`
	Query             string        `json:"query"`
	QueryID           *int64        `json:"query_id"`
	BlockedBy         []int32       `json:"blocked_by"`
	BlockedByPrepared []string      `json:"blocked_by_prepared"`
	WaitStart         *time.Time    `json:"wait_start"`
	BlockingReplay    bool          `json:"blocking_replay"`
	Pooler            *PooledClient `json:"pooler"`
	Replay            *struct{}     `json:"replay"`
	GID               *string       `json:"gid"`
}

// MaxSnapshotSize bounds a snapshot file: an `ls -o json` of 10,000
// sessions with long queries fits.
const MaxSnapshotSize = 256 << 20

// ReadSnapshotFile reads the snapshot file name (ReadSnapshot), taken at
// the file's modification time when it does not say (mtime is then true).
// A file that is not a regular one (a device, a FIFO, a directory) or is
// larger than MaxSnapshotSize is refused before it is read: /dev/zero
// would be read for ever. Its errors say what is wrong in one line,
// without the file's name.
func ReadSnapshotFile(name string) (snap *activity.Snapshot, mtime bool, err error) {
	st, err := os.Stat(name)
	if err != nil {
		return nil, false, pathError(err)
	}
	if err := snapshotFile(st); err != nil {
		return nil, false, err
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, false, pathError(err)
	}
	defer f.Close()
	// Again on what was opened: the name may have been replaced since.
	if st, err = f.Stat(); err != nil {
		return nil, false, pathError(err)
	}
	if err := snapshotFile(st); err != nil {
		return nil, false, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSnapshotSize+1))
	if err != nil {
		return nil, false, pathError(err)
	}
	if len(data) > MaxSnapshotSize {
		return nil, false, fmt.Errorf("more than %d MiB: not a snapshot", MaxSnapshotSize>>20)
	}
	snap, err = ReadSnapshot(data, time.Time{})
	if err != nil {
		return nil, false, err
	}
	if snap.Taken.IsZero() {
		snap.Taken, mtime = st.ModTime(), true
	}
	return snap, mtime, nil
}

func snapshotFile(st os.FileInfo) error {
	switch {
	case !st.Mode().IsRegular():
		return errors.New("not a regular file (a snapshot is an ls -o json output saved to a file)")
	case st.Size() > MaxSnapshotSize:
		return fmt.Errorf("more than %d MiB: not a snapshot", MaxSnapshotSize>>20)
	}
	return nil
}

// pathError is err without the file's name, which the caller gives.
func pathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// ReadSnapshot reads an `ls -o json` output (either form of
// SavedSnapshot). taken is the snapshot's time when the file does not say
// it. Its errors say what is wrong in one line, without the file's name.
func ReadSnapshot(data []byte, taken time.Time) (*activity.Snapshot, error) {
	var saved SavedSnapshot
	data = bytes.TrimSpace(data)
	switch {
	case len(data) > 0 && data[0] == '[':
		if err := json.Unmarshal(data, &saved.Sessions); err != nil {
			return nil, fmt.Errorf("not an ls -o json output: %s", jsonError(err))
		}
	case len(data) > 0 && data[0] == '{':
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&saved); err != nil {
			return nil, fmt.Errorf("not {\"taken_at\": ..., \"sessions\": [ls -o json rows]}: %s", jsonError(err))
		}
		if dec.More() {
			// Two snapshots appended to one file (>>): the second would go
			// untested.
			return nil, fmt.Errorf("more after the snapshot (at byte %d): one snapshot per file", dec.InputOffset())
		}
		if saved.Sessions == nil {
			return nil, errors.New(`no "sessions": want {"taken_at": ..., "sessions": [ls -o json rows]}`)
		}
		if saved.TakenAt != nil {
			if saved.TakenAt.Year() < 2000 {
				return nil, fmt.Errorf("taken_at %s: no time a snapshot was taken", saved.TakenAt.Format(time.RFC3339))
			}
			taken = *saved.TakenAt
		}
	default:
		return nil, errors.New("not an ls -o json output (a JSON array of sessions)")
	}
	snap := &activity.Snapshot{Taken: taken}
	// A pid names one backend of a snapshot: the daemon keys what it
	// does by it, so a row with none, or one listed twice, is no
	// server's.
	first := map[int32]int{}
	for i, raw := range saved.Sessions {
		var r savedRow
		dec := json.NewDecoder(bytes.NewReader(raw))
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("session %d: %s", i+1, jsonError(err))
		}
		if r.Replay != nil || r.GID != nil || r.PID == nil {
			continue // the replay, a prepared transaction: no session
		}
		if *r.PID <= 0 {
			return nil, fmt.Errorf("session %d: pid %d: not a backend's (a pid is positive)", i+1, *r.PID)
		}
		if at, dup := first[*r.PID]; dup {
			return nil, fmt.Errorf("session %d: pid %d is listed twice (first as session %d)", i+1, *r.PID, at)
		}
		first[*r.PID] = i + 1
		s, err := r.session()
		if err != nil {
			return nil, fmt.Errorf("session %d (pid %d): %v", i+1, *r.PID, err)
		}
		snap.Sessions = append(snap.Sessions, s)
	}
	return snap, nil
}

func (r *savedRow) session() (activity.Session, error) {
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	tm := func(p *time.Time) time.Time {
		if p == nil {
			return time.Time{}
		}
		return *p
	}
	s := activity.Session{
		PID: *r.PID, Datname: str(r.Datname), Usename: str(r.Usename), ApplicationName: r.ApplicationName,
		BackendType: str(r.BackendType), State: str(r.State),
		BackendStart: tm(r.BackendStart), XactStart: tm(r.XactStart), QueryStart: tm(r.QueryStart), StateChange: tm(r.StateChange),
		WaitEventType: str(r.WaitEventType), WaitEvent: str(r.WaitEvent), Query: r.Query,
		BlockedBy: r.BlockedBy, BlockedByPrepared: r.BlockedByPrepared, BlockingReplay: r.BlockingReplay,
		WaitStart: tm(r.WaitStart),
	}
	if r.LeaderPID != nil {
		s.LeaderPID = *r.LeaderPID
	}
	if r.ClientPort != nil {
		s.ClientPort = *r.ClientPort
	}
	if r.QueryID != nil {
		s.QueryID = *r.QueryID
	}
	if r.ClientAddr != nil {
		a, err := netip.ParseAddr(*r.ClientAddr)
		if err != nil {
			return s, fmt.Errorf("client_addr %q: not an address", *r.ClientAddr)
		}
		s.ClientAddr = a
	}
	if p := r.Pooler; p != nil {
		k := &pooler.Link{Pooler: p.Pooler, PoolMode: str(p.PoolMode), ApplicationName: str(p.ApplicationName),
			User: str(p.User), ClientAddr: str(p.ClientAddr), PID: s.PID}
		switch p.Serving {
		case servingClient:
			k.Served = true
		case servingUnknown:
			k.Served, k.Unknown = true, true
		case servingNone:
		default:
			return s, fmt.Errorf("pooler serving %q: not client, none or unknown", p.Serving)
		}
		if p.ClientPort != nil {
			k.ClientPort = *p.ClientPort
		}
		s.Pooler = k
	}
	return s, nil
}

// jsonError is a JSON error in one line, with the offset where it has one.
func jsonError(err error) string {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Sprintf("%v (at byte %d)", err, syn.Offset)
	}
	return err.Error()
}
