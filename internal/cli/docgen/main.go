// Command docgen writes pgreap's man pages (make man) or the Markdown
// reference of its commands (make docs) into a directory, from the
// commands' own help.
//
//	go run ./internal/cli/docgen -man man/
//	go run ./internal/cli/docgen -md docs/commands/
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/pgreap/pgreap/internal/cli"
)

func main() {
	man := flag.String("man", "", "write man pages into `DIR`")
	md := flag.String("md", "", "write Markdown pages into `DIR`")
	flag.Parse()
	if (*man == "") == (*md == "") || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: docgen -man DIR | -md DIR")
		os.Exit(2)
	}
	dir, write := *man, cli.WriteManPages
	if *md != "" {
		dir, write = *md, cli.WriteMarkdown
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
	if err := write(dir); err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
}
