package cli

import (
	"context"

	tea "github.com/charmbracelet/bubbletea"
)

// TopProgram is topProgram, for a test that makes top's program panic.
func TopProgram(ctx context.Context, m tea.Model, io *IOStreams) *tea.Program {
	return topProgram(ctx, m, io)
}
