// Package noprobe keeps bubbletea v1 from querying the terminal when
// pgreap starts.
//
// bubbletea v1's package init (tea_init.go) asks the terminal on standard
// output for its background colour (ESC ] 11 ; ? then ESC [ 6 n) and waits
// up to 5 s for an answer: every command, even `pgreap version`, stalled on
// a terminal that does not answer, and wrote the query to it. Nothing in
// pgreap needs the background: top paints with fixed colours.
//
// termenv does not query a terminal whose TERM is dumb. This package's init
// sets TERM=dumb and Restore, called from internal/tui's init (after
// bubbletea's: tui imports it), puts the environment back before main runs.
// The order is the Go spec's: a package is initialised once its imports
// are, the first by import path among those ready. This package imports
// only os; termenv (which bubbletea needs) imports text/template and
// golang.org/x/sys/unix, which sort after it, so this init runs before
// termenv's and bubbletea's. TestTerminalNotQueried in internal/cli checks
// it on a pseudo-terminal.
//
// bubbletea v2 does not query at init: this package goes with the move to
// it.
package noprobe

import "os"

var (
	term  string
	isSet bool
	held  bool
)

func init() {
	term, isSet = os.LookupEnv("TERM")
	held = os.Setenv("TERM", "dumb") == nil
}

// Restore puts TERM back as it was before this package's init.
func Restore() {
	if !held {
		return
	}
	held = false
	if isSet {
		os.Setenv("TERM", term)
	} else {
		os.Unsetenv("TERM")
	}
}
