package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set by a release build (make build, make release):
//
//	-ldflags "-X github.com/pgreap/pgreap/internal/cli.buildVersion=v1.2.3
//	          -X github.com/pgreap/pgreap/internal/cli.buildCommit=SHA
//	          -X github.com/pgreap/pgreap/internal/cli.buildDate=RFC3339"
var buildVersion, buildCommit, buildDate string

// NewCmdVersion builds `pgreap version`.
func NewCmdVersion(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pgreap's version, commit and build date",
		Long: `Print pgreap's version, the commit it was built from and when.

A release build says what its build flags set; a build by go install says
the module version and, from a checkout, the commit that go recorded
(debug.ReadBuildInfo); what is not known is said to be unknown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := versionInfo()
			fmt.Fprintf(f.IO.Out, "pgreap %s\ncommit %s\nbuilt %s\n%s %s/%s\n", v.version, v.commit, v.date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

type buildInfo struct{ version, commit, date string }

// versionInfo is what the build flags set, else what go recorded in the
// binary: the module version of go install, the VCS revision and time of
// a build in a checkout.
func versionInfo() buildInfo {
	v := buildInfo{version: buildVersion, commit: buildCommit, date: buildDate}
	if info, ok := debug.ReadBuildInfo(); ok {
		if mv := info.Main.Version; v.version == "" && mv != "" && mv != "(devel)" {
			v.version = mv
		}
		dirty := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if v.commit == "" {
					v.commit = s.Value
				}
			case "vcs.time":
				if v.date == "" {
					v.date = s.Value
				}
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && v.commit != "" && buildCommit == "" {
			v.commit += " (modified)"
		}
	}
	if v.version == "" {
		v.version = "devel"
	}
	if v.commit == "" {
		v.commit = "unknown"
	}
	if v.date == "" {
		v.date = "unknown"
	}
	return v
}
