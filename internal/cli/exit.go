package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
)

// The exit codes of shared/PRODUCT.md. They are decided in this file
// only: a command returns what happened (ErrNoMatch, a usageError, an
// incomplete error, or its results through resultsError) and ExitCode
// maps that to a code.
const (
	ExitOK         = 0 // every chosen session reached the asked outcome, or ls listed
	ExitNoMatch    = 1 // nothing matched
	ExitUsage      = 2 // usage, configuration or connection error
	ExitIncomplete = 3 // some sessions denied, survived, changed, or protected by pid
)

// ErrNoMatch: the selection matched no session.
var ErrNoMatch = maintenance.ErrNoMatch

// exitError carries the code of an error whose kind is not its type:
// made by usageError and incomplete only.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks bad input: exit 2.
func usageError(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{ExitUsage, err}
}

// incomplete marks a run that did part of what was asked, or cannot tell
// whether it did: exit 3.
func incomplete(err error) error {
	return &exitError{ExitIncomplete, err}
}

// ExitCode maps an error to the exit code of shared/PRODUCT.md.
func ExitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrNoMatch):
		return ExitNoMatch
	case errors.As(err, &ee):
		return ee.code
	}
	return ExitUsage
}

// resultsError is what the results of an action, and err, which stopped
// it after signals were sent (nil: nothing did), mean for the exit
// status: incomplete when it was stopped, or a session was denied,
// survived, changed, or protected though named by pid; nothing matched
// when no session could be acted on at all.
func resultsError(kind action.Kind, results []action.Result, err error) error {
	if err != nil {
		return incomplete(fmt.Errorf("%w; signals were sent and not all verified (see outcome survived)", err))
	}
	counts := map[action.Outcome]int{}
	n, acted := 0, 0
	for i := range results {
		r := &results[i]
		counts[r.Outcome]++
		if r.Incomplete() {
			n++
		}
		if r.Outcome != action.Protected {
			acted++
		}
	}
	if n > 0 {
		var parts []string
		for _, o := range []action.Outcome{action.Denied, action.Survived, action.Changed, action.Protected} {
			if counts[o] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", counts[o], o))
			}
		}
		reach := string(want(kind))
		if slices.ContainsFunc(results, func(r action.Result) bool { return r.IsPrepared() }) {
			reach += " or " + string(action.RolledBack) // unblock's prepared roots
		}
		return incomplete(fmt.Errorf("%d of %d sessions did not reach %s: %s (see detail)",
			n, len(results), reach, strings.Join(parts, ", ")))
	}
	if acted == 0 {
		return fmt.Errorf("%w that pgreap may act on (%d protected)", ErrNoMatch, counts[action.Protected])
	}
	return nil
}

// Message is the one line printed for an error, with a hint for the
// SQLSTATEs an operator can fix.
func Message(err error) string {
	msg := err.Error()
	var ce *conn.Error
	var pgErr *pgconn.PgError
	if !errors.As(err, &ce) && errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42501":
			if errors.As(err, new(*maintenance.SQLError)) {
				break // exec's SQL lacks a privilege of its own, not one of pgreap's
			}
			msg += " (hint: this needs pg_read_all_stats, or pg_signal_backend to signal other roles' sessions)"
		case "57014":
			msg += " (hint: statement_timeout ended it; set a longer one in the connection string, e.g. statement_timeout=2min)"
		}
	}
	if !errors.As(err, &ce) {
		switch {
		case errors.Is(err, context.DeadlineExceeded) && errors.As(err, new(*pooler.Error)):
			msg += " (hint: the pooler's console did not answer within the connection's connect_timeout: PgBouncer stalled, or the network)"
		case errors.Is(err, context.DeadlineExceeded):
			msg += fmt.Sprintf(" (hint: no answer from the server within its statement_timeout plus %s: "+
				"the network or the server stalled, and pgreap closed its connection)", conn.DeadlineMargin)
		case lostConnection(err) && errors.As(err, new(*pooler.Error)):
			msg += " (hint: the connection to the pooler's console was lost: a restart or a crash of PgBouncer, or the network)"
		case lostConnection(err):
			msg += " (hint: the connection to the server was lost: a restart, a crash, the network, or pg_terminate_backend)"
		}
	}
	// One line, always: a server message or a wrapped error may have more.
	// And nothing a terminal would act on: the server's text is anyone's
	// (a RAISE in a trigger, a relation's name), as a table's cells are.
	return strings.Join(strings.Fields(output.Clean(msg)), " ")
}

// lostConnection says whether err means pgreap's connection is gone: the
// server closed it (EOF, reset, broken pipe), pgx had closed it already,
// or the server ended the session with a FATAL of class 57P (a shutdown,
// a crash of another backend, pg_terminate_backend). Which of these a
// client sees for the same restart depends on when it next reads.
func lostConnection(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		severity := pgErr.SeverityUnlocalized // 9.6+; Severity is translated
		if severity == "" {
			severity = pgErr.Severity
		}
		return (severity == "FATAL" || severity == "PANIC") && strings.HasPrefix(pgErr.Code, "57P")
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, pgconn.ErrConnClosed)
}

// Main runs pgreap with the process's arguments and streams.
func Main() int {
	// A command's heap is a few MB for thousands of sessions and lives
	// for milliseconds: collecting at every doubling costs more time than
	// the memory is worth. GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// SIGQUIT (Ctrl-\) too: Go's default dumps goroutines and exits, and
	// the work under way on the server (an exec attempt) runs on unseen.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGQUIT)
	defer stop()
	return run(ctx, os.Args[1:], System(), true)
}

// Run runs pgreap with the given arguments and streams and returns the
// exit code. Errors are printed as one line on standard error.
func Run(ctx context.Context, args []string, streams *IOStreams) (code int) {
	return run(ctx, args, streams, false)
}

// run is Run; hangup (the process's own run) stops a command on SIGHUP too.
func run(ctx context.Context, args []string, streams *IOStreams, hangup bool) (code int) {
	f := &Factory{IO: streams, hangup: hangup}
	defer func() {
		if f.stopHangup != nil {
			f.stopHangup()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(streams.ErrOut, "pgreap: internal error: %v (please report it, with the output of -v)\n", r)
			if f.verbose {
				streams.ErrOut.Write(debug.Stack())
			}
			code = ExitUsage
		}
	}()
	cmd := NewCmdRoot(f)
	cmd.SetArgs(args)
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	err := cmd.ExecuteContext(ctx)
	report(streams.ErrOut, err, f.conn.DSN)
	return ExitCode(err)
}

// report prints err with the password of -d masked, whichever layer
// quoted it.
func report(w io.Writer, err error, dsn string) {
	if err == nil {
		return
	}
	fmt.Fprintln(w, "pgreap: "+conn.Redact(Message(err), dsn))
}
