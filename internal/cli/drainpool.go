package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
)

// pauseName is how messages name a pause: the pooler, and the pooler's
// name of the database when it is not the server's.
func pauseName(p maintenance.PoolerPause, db string) string {
	if p.Database == db {
		return "pgbouncer " + p.Pooler
	}
	return fmt.Sprintf("pgbouncer %s (as %s)", p.Pooler, output.Clean(p.Database))
}

// holderText names a server connection that holds a PAUSE up: its backend,
// the pooled client using it, what it does and, once pgreap acted, what
// became of it.
func holderText(h maintenance.Holder, now time.Time) string {
	s := fmt.Sprintf("pid %d", h.PID)
	if k := h.Link; k != nil && k.Served {
		addr := k.ClientAddr
		if addr == "" {
			addr = "unix socket"
		} else if k.ClientPort > 0 {
			addr = fmt.Sprintf("%s:%d", addr, k.ClientPort)
		}
		s += fmt.Sprintf(" (client %s via %s", addr, k.Pooler)
		if k.ApplicationName != "" {
			s += ", app " + output.Clean(k.ApplicationName)
		}
		s += ", user " + output.Clean(k.User) + ")"
	} else if k != nil {
		s += fmt.Sprintf(" (server connection of %s, no client)", k.Pooler)
	}
	state := output.Clean(h.State)
	if !h.XactStart.IsZero() {
		state += ", transaction open " + output.Age(now.Sub(h.XactStart))
	}
	if state != "" {
		s += " " + state
	}
	if h.Outcome != "" && h.Outcome != "planned" {
		s += ": " + string(h.Outcome)
		if h.Detail != "" {
			s += " (" + output.Clean(h.Detail) + ")"
		}
	}
	return s
}

// drainPause is the first step of a drain with poolers: PAUSE on each,
// every step recorded before it happens. It returns nil once every pause is
// done; an error once it gave up, with the pauses rolled back.
func drainPause(ctx context.Context, opts *DrainOptions, conn *pgx.Conn, admins []*pooler.Admin, here *maintenance.Here, path string, rec *maintenance.Record, kept bool) ([]action.Result, error) {
	// A new record holds the pauses already; a kept one not yet.
	written := !kept
	name, w := output.Clean(opts.Database), opts.IO.ErrOut
	var sent []string
	for _, p := range rec.Poolers {
		switch p.State {
		case maintenance.PauseSent, maintenance.PauseDone:
			sent = append(sent, pauseName(p, opts.Database))
		case maintenance.PauseOthers:
			fmt.Fprintf(w, "pgreap: %s: %s was paused already, by someone else: drain leaves it so, and undrain will not resume it\n", name, pauseName(p, opts.Database))
		}
	}
	if len(sent) > 0 {
		fmt.Fprintf(w, "pgreap: %s: PAUSE on %s (recorded in %s): pooled clients wait; the transactions in flight get --grace %s\n",
			name, strings.Join(sent, ", "), path, opts.Grace)
	}
	popt := maintenance.PauseOptions{Timeout: opts.Timeout, Grace: opts.Grace, Now: opts.Now, Here: here,
		Record: func(ps []maintenance.PoolerPause) error {
			if written && slices.Equal(ps, rec.Poolers) {
				return nil // drainRun wrote these already, with the settings
			}
			rec.Poolers, written = ps, true
			return maintenance.WriteRecord(path, rec)
		},
		Step: func(p maintenance.PoolerPause) {
			switch p.State {
			case maintenance.PauseDone:
				fmt.Fprintf(w, "pgreap: %s: paused on %s\n", name, pauseName(p, opts.Database))
			case maintenance.PauseNotServed:
				fmt.Fprintf(w, "pgreap: %s: %s does not serve it (no such database, no * entry): nothing to pause there\n", name, pauseName(p, opts.Database))
			case maintenance.PauseResumed:
				fmt.Fprintf(w, "pgreap: %s: resumed on %s (rollback)\n", name, pauseName(p, opts.Database))
			}
		},
		Ending: func(hs []maintenance.Holder) {
			texts := make([]string, len(hs))
			for i, h := range hs {
				texts[i] = holderText(h, opts.Now())
			}
			fmt.Fprintf(w, "pgreap: %s: after --grace %s, terminating what still holds PAUSE up: %s\n", name, opts.Grace, strings.Join(texts, "; "))
		},
	}
	pd, err := maintenance.Pause(ctx, conn, admins, opts.Database, rec.Poolers, popt)
	var ended []action.Result
	if len(pd.Ended) > 0 {
		texts := make([]string, len(pd.Ended))
		for i, h := range pd.Ended {
			texts[i] = holderText(h, opts.Now())
			ended = append(ended, h.Result)
		}
		fmt.Fprintf(w, "pgreap: %s: ended what held PAUSE up: %s\n", name, strings.Join(texts, "; "))
	}
	if err == nil {
		if len(sent) > 0 {
			fmt.Fprintf(w, "pgreap: %s: every pooler paused in %s\n", name, pd.Took.Round(100*time.Microsecond))
		}
		return ended, nil
	}
	rolled := "every pause of this drain rolled back (RESUME)"
	if !slices.ContainsFunc(pd.Pauses, func(p maintenance.PoolerPause) bool { return p.State == maintenance.PauseResumed }) {
		rolled = "nothing was paused"
	}
	if len(pd.NotResumed) > 0 {
		var left []string
		for _, p := range pd.NotResumed {
			left = append(left, pauseName(p, opts.Database))
		}
		rolled = fmt.Sprintf("RESUME failed on %s, which stay%s paused: %s resumes %s", strings.Join(left, ", "),
			map[bool]string{true: "s", false: ""}[len(left) == 1], undrainHint(opts.Database), map[bool]string{true: "it", false: "them"}[len(left) == 1])
	} else if !kept {
		// Nothing of this drain is left: a later drain records afresh.
		restored := opts.Now().UTC()
		rec.RestoredAt = &restored
		if werr := maintenance.WriteRecord(path, rec); werr != nil {
			opts.Logger.Warn("cannot mark the drain record undone", "err", werr)
		}
	}
	var held string
	if kept {
		held = fmt.Sprintf("; %s stays blocked as the earlier drain left it: %s reopens it", name, undrainHint(opts.Database))
	} else {
		held = fmt.Sprintf("; %s was not blocked", name)
	}
	switch {
	case errors.Is(err, maintenance.ErrPauseTimeout):
		who := "no server connection of it was left, yet the pooler did not list it paused"
		var texts []string
		for _, h := range pd.Holders {
			texts = append(texts, holderText(h, opts.Now()))
		}
		for _, u := range pd.Unmatched {
			texts = append(texts, fmt.Sprintf("pgbouncer %s's server connection to backend pid %d (%s in the pooler; pgreap could not pin it to a session of %s, so it was left alone: a backend of another role shows its start only to pg_read_all_stats)",
				u.Pooler, u.RemotePID, output.Clean(u.State), name))
		}
		if len(texts) > 0 {
			who = "held up by " + strings.Join(texts, "; ")
		}
		return ended, incomplete(fmt.Errorf("%s: not paused on every pooler by --timeout %s, %s; %s%s", name, opts.Timeout, who, rolled, held))
	case errors.Is(err, context.Canceled):
		return ended, incomplete(fmt.Errorf("%s: interrupted while pausing; %s%s", name, rolled, held))
	case len(pd.NotResumed) > 0:
		return ended, incomplete(fmt.Errorf("%s: pausing: %w; %s%s", name, err, rolled, held))
	}
	if strings.Contains(err.Error(), "admin access needed") {
		rolled = "PAUSE needs a role in the pooler's admin_users (stats_users may only SHOW); " + rolled
	}
	return ended, fmt.Errorf("%s: pausing: %w; %s%s", name, err, rolled, held)
}

// pausedNote says, once drained, where the pooled clients are, and how
// long each pooler lets them wait.
func pausedNote(ctx context.Context, opts *DrainOptions, admins []*pooler.Admin, rec *maintenance.Record) string {
	var ours []string
	for _, a := range admins {
		if !slices.ContainsFunc(rec.Poolers, func(p maintenance.PoolerPause) bool { return p.Pooler == a.Pooler.Name && p.Ours() }) {
			continue
		}
		wait := "its query_wait_timeout"
		if v, err := a.Setting(ctx, "query_wait_timeout"); err == nil && v != "" {
			switch v {
			case "0":
				wait += " (0: no limit)"
			default:
				wait += " (" + output.Clean(v) + "s: a client queued longer gets an error)"
			}
		}
		ours = append(ours, fmt.Sprintf("pgbouncer %s (paused) for as long as %s allows", a.Pooler.Name, wait))
	}
	if len(ours) == 0 {
		return ""
	}
	return fmt.Sprintf("; pooled clients wait in %s; undrain resumes %s", strings.Join(ours, ", "), map[bool]string{true: "it", false: "them"}[len(ours) == 1])
}

// drainResumeAfterBlockFailed: the block failed, so nothing is held: the
// pauses are lifted again.
func drainResume(ctx context.Context, opts *DrainOptions, admins []*pooler.Admin, path string, rec *maintenance.Record) string {
	if len(rec.Poolers) == 0 {
		return ""
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	ps, err := maintenance.Resume(rctx, adminsByName(admins), rec.Poolers, opts.Now().UTC(), func(ps []maintenance.PoolerPause) error {
		rec.Poolers = ps
		return maintenance.WriteRecord(path, rec)
	})
	rec.Poolers = ps
	if err != nil {
		return fmt.Sprintf("; the poolers could not all be resumed (%v): %s resumes them", err, undrainHint(opts.Database))
	}
	return "; the poolers were resumed"
}

func adminsByName(admins []*pooler.Admin) map[string]*pooler.Admin {
	m := map[string]*pooler.Admin{}
	for _, a := range admins {
		m[a.Pooler.Name] = a
	}
	return m
}

// dryRunPauses says what the drain's first step would do on each pooler,
// and which transactions would hold it up now.
func dryRunPauses(ctx context.Context, opts *DrainOptions, conn *pgx.Conn, admins []*pooler.Admin, rec *maintenance.Record) error {
	name, w := output.Clean(opts.Database), opts.IO.ErrOut
	var sent []string
	for _, p := range rec.Poolers {
		switch p.State {
		case maintenance.PauseSent:
			sent = append(sent, pauseName(p, opts.Database))
			fmt.Fprintf(w, "pgreap: dry run: drain would then send PAUSE %s to %s (recorded before it is sent): its clients wait instead of failing\n",
				output.Clean(p.Database), pauseName(p, opts.Database))
		case maintenance.PauseDone:
			fmt.Fprintf(w, "pgreap: dry run: %s is paused by the drain on record: drain would keep it so\n", pauseName(p, opts.Database))
		case maintenance.PauseOthers:
			fmt.Fprintf(w, "pgreap: dry run: %s is paused already, by someone else: drain would leave it so, and undrain would not resume it\n", pauseName(p, opts.Database))
		}
	}
	if len(sent) == 0 {
		return nil
	}
	hs, err := maintenance.Holders(ctx, conn, admins, opts.Database)
	if err != nil {
		return err
	}
	var busy []string
	for _, h := range hs {
		if h.Link.Served {
			busy = append(busy, holderText(h, opts.Now()))
		}
	}
	now := "no pooled client is in a transaction now"
	if len(busy) > 0 {
		now = "in a transaction now: " + strings.Join(busy, "; ")
	}
	fmt.Fprintf(w, "pgreap: dry run: PAUSE waits for the transactions in flight (%s); those still open after --grace %s would have their backends terminated; a pooler not paused by --timeout %s would have every pause rolled back (RESUME), %s left unblocked, exit 3\n",
		now, opts.Grace, opts.Timeout, name)
	return nil
}
