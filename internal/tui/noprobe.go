package tui

import (
	"os"

	"github.com/muesli/termenv"

	"github.com/pgreap/pgreap/internal/tui/noprobe"
)

// bubbletea's init, which would query the terminal, has run with TERM=dumb
// (see package noprobe): put TERM back, and termenv's default output, whose
// colour profile was read with it.
func init() {
	noprobe.Restore()
	termenv.SetDefaultOutput(termenv.NewOutput(os.Stdout))
}
