// Command demobin prints the directory of PostgreSQL's server binaries that
// `pgreap demo` would run, or nothing when it would find none: `make demo`
// then fetches them (scripts/pg-fetch) into the cache the demo looks in.
package main

import (
	"fmt"
	"os"

	"github.com/pgreap/pgreap/internal/cli"
)

func main() {
	dir, err := cli.DemoBinDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demobin:", err)
		os.Exit(2)
	}
	if dir != "" {
		fmt.Println(dir)
	}
}
