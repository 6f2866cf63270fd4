// Command pgreap finds PostgreSQL sessions and ends them safely.
package main

import (
	"os"

	"github.com/pgreap/pgreap/internal/cli"
)

func main() {
	os.Exit(cli.Main())
}
