package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/watch"
)

// watchTest is `watch --test`: the policy on each snapshot file, offline
// (watch.Test). Every file is read before anything is printed: a bad one
// is one line and exit 2, with nothing half printed.
func watchTest(opts *WatchOptions, pol *policy.Policy) error {
	type file struct {
		name    string
		verdict []watch.Verdict
		taken   time.Time
		mtime   bool
	}
	var files []file
	for _, name := range opts.Files {
		snap, mtime, err := output.ReadSnapshotFile(name)
		if err != nil {
			return usageError(fmt.Errorf("--test: %s: %v", name, err))
		}
		files = append(files, file{name, watch.Test(pol, snap, opts.DryRun), snap.Taken, mtime})
	}
	for i, f := range files {
		if i > 0 {
			fmt.Fprintln(opts.IO.Out)
		}
		from := "taken_at"
		if f.mtime {
			from = "the file's modification time"
		}
		fmt.Fprintf(opts.IO.Out, "%s: taken %s (%s)\n", output.Clean(f.name), f.taken.UTC().Format(time.RFC3339Nano), from)
		tw := tabwriter.NewWriter(opts.IO.Out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tAPP\tRULE\tACTION\tWHEN\tOUTCOME")
		for _, v := range f.verdict {
			rule, act, when := "-", "-", "-"
			if v.Rule != "" {
				rule, act, when = v.Rule, v.Action, "now"
				if v.Grace > 0 {
					act += fmt.Sprintf(" (grace %s)", v.Grace)
				}
				if d := v.Due.Sub(f.taken); d > 0 {
					when = fmt.Sprintf("%s (+%s)", v.Due.UTC().Format(time.RFC3339Nano), d)
				}
			}
			outcome := v.Outcome
			switch {
			case v.Rule == "" && outcome == "":
				outcome = "no rule"
			case outcome == "":
				outcome = "acts"
			case v.DryRun:
				outcome += " (dry run)"
			}
			if v.Detail != "" {
				outcome += ": " + v.Detail
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", v.Session.PID, output.Cut(output.Clean(v.Session.ApplicationName), 30),
				output.Clean(rule), act, when, outcome)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
