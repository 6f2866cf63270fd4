// Package cli wires pgreap's commands (cobra) to the pipeline: connection,
// activity snapshot, selector, output. Each command has an Options struct
// and a run function; errors map to the exit codes of the product contract
// in exit.go, printed as one line on standard error.
package cli
