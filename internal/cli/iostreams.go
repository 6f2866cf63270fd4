package cli

import (
	"bytes"
	"io"
	"os"

	"golang.org/x/term"
)

// IOStreams are a command's standard streams and what is known of the
// terminal behind them.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer

	// InTTY: standard input is a terminal, so pgreap may ask.
	InTTY bool
	// OutTTY: standard output is a terminal.
	OutTTY bool
	// ErrTTY: standard error is a terminal.
	ErrTTY bool
	// Width is the terminal's width in columns (0 when not a terminal).
	Width int
	// NoColor: the environment asks for no colour (NO_COLOR, TERM=dumb).
	NoColor bool
}

// System is the process's own streams.
func System() *IOStreams {
	io := &IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	if fd := int(os.Stdout.Fd()); term.IsTerminal(fd) {
		io.OutTTY = true
		if w, _, err := term.GetSize(fd); err == nil {
			io.Width = w
		}
	}
	io.InTTY = term.IsTerminal(int(os.Stdin.Fd()))
	io.ErrTTY = term.IsTerminal(int(os.Stderr.Fd()))
	// https://no-color.org: set and not empty.
	io.NoColor = os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb"
	return io
}

// Test is in-memory streams for tests: what the command printed is in the
// returned buffers.
func Test() (*IOStreams, *bytes.Buffer, *bytes.Buffer) {
	out, errOut := &bytes.Buffer{}, &bytes.Buffer{}
	return &IOStreams{In: &bytes.Buffer{}, Out: out, ErrOut: errOut}, out, errOut
}
