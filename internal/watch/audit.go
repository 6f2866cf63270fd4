package watch

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/ownfile"
	"github.com/pgreap/pgreap/internal/policy"
)

// Entry is one line of the audit log: one attempt on one session, dry or
// real, with the session's identity as pgreap saw it.
type Entry struct {
	Time            time.Time  `json:"time"`
	Target          string     `json:"target"`
	Rule            string     `json:"rule"`
	DryRun          bool       `json:"dry_run"`
	PID             int32      `json:"pid"`
	BackendStart    time.Time  `json:"backend_start"`
	QueryStart      *time.Time `json:"query_start"`
	Datname         string     `json:"datname"`
	Usename         string     `json:"usename"`
	ApplicationName string     `json:"application_name"`
	ClientAddr      *string    `json:"client_addr"`
	Query           *string    `json:"query"` // null with the policy's audit.query none
	Action          string     `json:"action"`
	Outcome         string     `json:"outcome"`
	Detail          string     `json:"detail"`
	// Pooler is the pooled client of a pooler's server connection (only
	// with poolers: the policy's pgbouncer).
	Pooler *output.PooledClient `json:"pooler,omitempty"`
	// Released are, for a rule on lock pile-ups (blocking_longer_than),
	// the waiters the action released: those that waited behind the
	// session at the snapshot and no longer wait on it once its end (or
	// its query's) is verified. Absent when it released none.
	Released []Released `json:"released,omitempty"`
}

// Released is a waiter an action released, and how long it had waited
// (from its lock wait's start to the look that saw it released; null when
// the server did not show its start).
type Released struct {
	PID           int32    `json:"pid"`
	WaitedSeconds *float64 `json:"waited_seconds"`
}

// waitedSeconds is the time from a wait's start (zero: not shown) to now,
// in seconds to the millisecond; nil when not known. Whole milliseconds
// divided by 1000 are the float nearest the decimal, which JSON writes as
// it is (Duration.Seconds of 1.118s is 1.1179999999999999).
func waitedSeconds(from, now time.Time) *float64 {
	if from.IsZero() || !now.After(from) {
		return nil
	}
	s := float64(now.Sub(from).Round(time.Millisecond).Milliseconds()) / 1000
	return &s
}

func entry(now time.Time, target, rule string, dry bool, r *action.Result) Entry {
	q := r.Query
	e := Entry{
		Time: now.UTC(), Target: target, Rule: rule, DryRun: dry,
		PID: r.PID, BackendStart: r.BackendStart, Datname: r.Datname, Usename: r.Usename,
		ApplicationName: r.ApplicationName, Query: &q,
		Action: string(r.Action), Outcome: string(r.Outcome), Detail: r.Detail,
		Pooler: output.Pooled(r.Pooler),
	}
	if !r.QueryStart.IsZero() {
		qs := r.QueryStart
		e.QueryStart = &qs
	}
	if r.ClientAddr.IsValid() {
		a := r.ClientAddr.String()
		e.ClientAddr = &a
	}
	return e
}

// Audit appends entries to a file, one JSON line each, written in one
// write(2) on a file opened O_APPEND, so that a line is never torn, and
// nothing is buffered in the process. Reopen (on SIGHUP) follows a
// logrotate that moved the file away; copytruncate needs nothing (the next
// write appends at the new end). With no path, it writes to out.
//
// The file must be pgreap's own (package ownfile): never followed through
// a symbolic link, owned by the user pgreap runs as, writable by no one
// else, with no other name; a daemon running as root would otherwise
// append to whatever file a shell user pointed it at.
type Audit struct {
	mu     sync.Mutex
	path   string
	f      *os.File
	out    io.Writer
	stdout io.Writer // when there is no path
	// noQuery leaves the query out of every line (audit.query none): a
	// text can carry a secret as a literal (ALTER ROLE ... PASSWORD).
	noQuery bool
	// events are told of every line written (nil: no one).
	events *notify.Notifier
}

// OpenAudit opens the audit log at path, creating it (0600) if needed;
// with path "", entries go to out. An existing file may be readable by its
// group (chgrp and chmod 0640 it, or have logrotate create it so).
func OpenAudit(path string, out io.Writer) (*Audit, error) {
	a := &Audit{out: out, stdout: out}
	if err := a.Switch(path); err != nil {
		return nil, err
	}
	return a, nil
}

// Reopen closes and reopens the file at the same path.
func (a *Audit) Reopen() error {
	return a.Switch(a.Path())
}

// Switch writes to the file at path from now on (to the writer given
// first, for ""); on error, the file in use stays.
func (a *Audit) Switch(path string) error {
	var f *os.File
	if path != "" {
		var err error
		if f, err = ownfile.OpenAppend(path); err != nil {
			return fmt.Errorf("audit_log: %w", err)
		}
	}
	a.mu.Lock()
	old := a.f
	a.path, a.f = path, f
	if f != nil {
		a.out = f
	} else {
		a.out = a.stdout
	}
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Path is the file written to, "" for the writer given.
func (a *Audit) Path() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.path
}

// SetQuery says whether the lines written from now on carry the query
// (the policy's audit.query).
func (a *Audit) SetQuery(q policy.AuditQuery) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.noQuery = q == policy.QueryNone
}

// Write appends one entry.
func (a *Audit) Write(e Entry) error {
	a.mu.Lock()
	if a.noQuery {
		e.Query = nil
	}
	a.mu.Unlock()
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	// A query text must not drive the terminal of whoever tails the log.
	b = append(output.EscapeJSON(b), '\n')
	a.mu.Lock()
	_, err = a.out.Write(b)
	a.mu.Unlock()
	notifyEntry(a.events, &e, b[:len(b)-1])
	return err
}

// Close closes the file.
func (a *Audit) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		return a.f.Close()
	}
	return nil
}
