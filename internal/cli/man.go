package cli

import (
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// WriteManPages writes a man page (section 1) for pgreap and for each of
// its commands into dir: pgreap.1, pgreap-ls.1, ... They are made from the
// commands' own help, so they say what --help says. The date is
// $SOURCE_DATE_EPOCH when set (reproducible builds), else today.
func WriteManPages(dir string) error {
	date := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
			date = time.Unix(sec, 0).UTC()
		}
	}
	return doc.GenManTree(docRoot(), &doc.GenManHeader{
		Title:   "PGREAP",
		Section: "1",
		Source:  "pgreap " + versionInfo().version,
		Manual:  "pgreap manual",
		Date:    &date,
	}, dir)
}

// WriteMarkdown writes a Markdown page for pgreap and each of its commands
// into dir (docs/commands: make docs), linked to each other.
func WriteMarkdown(dir string) error {
	return doc.GenMarkdownTree(docRoot(), dir)
}

// docRoot is the command tree as the docs show it: the help of a terminal
// of no particular width, no "generated on" line (the pages stay the same
// from one run to the next).
func docRoot() *cobra.Command {
	root := NewCmdRoot(&Factory{IO: &IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}})
	root.DisableAutoGenTag = true
	return root
}
