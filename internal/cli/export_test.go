package cli

import tea "charm.land/bubbletea/v2"

// TopProgram is topProgram, for a test that makes top's program panic.
func TopProgram(m tea.Model, io *IOStreams) *tea.Program { return topProgram(m, io) }
