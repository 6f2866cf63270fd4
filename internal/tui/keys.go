package tui

import (
	"io"
	"strings"
	"sync/atomic"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
)

// binding is a key of the table: what it matches, its label and word in
// the footer (key.Binding's help), and its line on the help screen.
type binding struct {
	key.Binding
	// long is its line on the help screen; "" for a key whose partner
	// (the row above) says it for both.
	long string
	// footer: the key is named in the footer; acts: it is left out of the
	// footer with --read-only.
	footer, acts bool
}

// keyMap is top's keys: what they match, the footer and the help screen
// are this one table.
type keyMap struct {
	up, down, pageUp, pageDown, home, end       binding
	mark, cancel, terminate, filter, sortBy     binding
	blockers, details, clear, showHelp, quit    binding
	apply, back, yes, no, scrollPage, interrupt binding
}

func bind(keys []string, label, short, long string, footer, acts bool) binding {
	b := key.NewBinding(key.WithKeys(keys...))
	if label != "" {
		b.SetHelp(label, short)
	}
	return binding{Binding: b, long: long, footer: footer, acts: acts}
}

var keymap = keyMap{
	up:        bind([]string{"up", "k"}, "↑↓/jk", "move", "move", true, false),
	down:      bind([]string{"down", "j"}, "", "", "", false, false),
	pageUp:    bind([]string{"pgup", "ctrl+b"}, "PgUp PgDn", "page", "page", false, false),
	pageDown:  bind([]string{"pgdown", "ctrl+f"}, "", "", "", false, false),
	home:      bind([]string{"home", "g"}, "g G", "first, last", "first, last", false, false),
	end:       bind([]string{"end", "G"}, "", "", "", false, false),
	mark:      bind([]string{"space"}, "space", "mark", "mark the session (marks follow the session, not the pid)", true, true),
	cancel:    bind([]string{"c"}, "c", "cancel", "cancel the query of the marked sessions, or of the selected one", true, true),
	terminate: bind([]string{"t"}, "t", "terminate", "terminate the marked sessions, or the selected one", true, true),
	filter:    bind([]string{"/"}, "/", "filter", "filter on db, user, app, client, pid, query (enter applies, esc clears)", true, false),
	sortBy:    bind([]string{"s"}, "s", "sort", "sort: age, state, db, user, app", true, false),
	blockers:  bind([]string{"b"}, "b", "blockers", "blocking tree only: the roots, the sessions queued behind them", true, false),
	details:   bind([]string{"enter"}, "enter", "details", "every field of the session and its whole query", true, false),
	clear:     bind([]string{"esc"}, "esc", "clear", "clear the status line and the filter", false, false),
	showHelp:  bind([]string{"?"}, "?", "help", "this help", true, false),
	quit:      bind([]string{"q"}, "q", "quit", "quit", true, false),

	// Keys of the filter being typed, the question, the details.
	apply:      bind([]string{"enter"}, "", "", "", false, false),
	back:       bind([]string{"esc", "enter", "q", "backspace"}, "", "", "", false, false),
	yes:        bind([]string{"y", "Y"}, "", "", "", false, false),
	no:         bind([]string{"n", "N", "esc", "q"}, "", "", "", false, false),
	scrollPage: bind([]string{"pgdown", "ctrl+f", "space"}, "", "", "", false, false),
	interrupt:  bind([]string{"ctrl+c"}, "", "", "", false, false),
}

// table is the keys of the list, in the order the help screen and the
// footer name them.
func (k *keyMap) table() []*binding {
	return []*binding{&k.up, &k.down, &k.pageUp, &k.pageDown, &k.home, &k.end, &k.mark, &k.cancel,
		&k.terminate, &k.filter, &k.sortBy, &k.blockers, &k.details, &k.clear, &k.showHelp, &k.quit}
}

// plainHelp draws help with no colour: top paints the footer as a whole.
var plainHelp = func() help.Model {
	h := help.New()
	h.ShortSeparator = " · "
	h.Styles = help.Styles{}
	return h
}()

// footerKeys is the footer's line of keys.
func (k *keyMap) footerKeys(readOnly bool) string {
	var short []key.Binding
	for _, b := range k.table() {
		if b.footer && !(readOnly && b.acts) {
			short = append(short, b.Binding)
		}
	}
	s := plainHelp.ShortHelpView(short)
	if readOnly {
		s += " · read-only"
	}
	return s
}

// helpKeys is the help screen's list of keys, one a line.
func (k *keyMap) helpKeys() []string {
	var full []key.Binding
	for _, b := range k.table() {
		if b.long != "" {
			l := b.Binding
			l.SetHelp(b.Help().Key+" ", b.long) // two spaces between the columns
			full = append(full, l)
		}
	}
	lines := strings.Split(plainHelp.FullHelpView([][]key.Binding{full}), "\n")
	for i, l := range lines {
		lines[i] = "  " + strings.TrimRight(l, " ")
	}
	return lines
}

// CountReads wraps the terminal's input to count its reads, for
// Options.Reads. A terminal stays a file (bubbletea puts it in raw mode
// and cancels its reads through the descriptor).
func CountReads(in io.Reader) (io.Reader, func() uint64) {
	n := new(atomic.Uint64)
	if f, ok := in.(file); ok {
		return countedFile{f, n}, n.Load
	}
	return countedReader{in, n}, n.Load
}

type file interface {
	io.ReadWriteCloser
	Fd() uintptr
	Name() string
}

type countedFile struct {
	file
	n *atomic.Uint64
}

func (f countedFile) Read(p []byte) (int, error) {
	n, err := f.file.Read(p)
	f.n.Add(1)
	return n, err
}

type countedReader struct {
	io.Reader
	n *atomic.Uint64
}

func (r countedReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	r.n.Add(1)
	return n, err
}
