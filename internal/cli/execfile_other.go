//go:build !linux

package cli

import "os"

// openNoLinks opens path to read, refusing a symbolic link in any of its
// components.
func openNoLinks(path string) (*os.File, error) { return openCheckLinks(path) }
