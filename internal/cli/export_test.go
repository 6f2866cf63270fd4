package cli

import (
	"os"

	tea "charm.land/bubbletea/v2"
)

// TopProgram is topProgram, for a test that makes top's program panic.
func TopProgram(m tea.Model, io *IOStreams) *tea.Program { return topProgram(m, io) }

// OpenCheckLinks is openCheckLinks, the way -f opens its file where the
// kernel has no openat2.
func OpenCheckLinks(path string) (*os.File, error) { return openCheckLinks(path) }
