package selector

import (
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/spf13/pflag"
)

// Flags are the selectors on a command line.
type Flags struct {
	spec Spec
}

// AddFlags registers the selector flags on fs, but those named in omit
// (a command that gives a flag another meaning, as unblock's --longer-than).
func AddFlags(fs *pflag.FlagSet, omit ...string) *Flags {
	all := pflag.NewFlagSet("selectors", pflag.ContinueOnError)
	f := addFlags(all)
	all.VisitAll(func(fl *pflag.Flag) {
		if !slices.Contains(omit, fl.Name) {
			fs.AddFlag(fl)
		}
	})
	return f
}

func addFlags(fs *pflag.FlagSet) *Flags {
	f := &Flags{}
	s := &f.spec
	fs.StringArrayVar(&s.DB, "db", nil, "database `NAME` (glob with *; repeatable)")
	fs.StringArrayVar(&s.User, "user", nil, "role `NAME` (glob with *; repeatable)")
	fs.StringArrayVar(&s.App, "app", nil, "application_name `NAME` (glob with *; repeatable)")
	fs.StringArrayVar(&s.Client, "client", nil, "client `ADDRESS` or CIDR, e.g. 10.0.0.0/8 (repeatable)")
	fs.StringArrayVar(&s.State, "state", nil, "`STATE`: active, idle, \"idle in transaction\", ... (glob with *; repeatable)")
	fs.StringArrayVar(&s.BackendType, "backend-type", nil, "backend_type `TYPE`, e.g. \"client backend\" (glob with *; repeatable)")
	fs.StringArrayVar(&s.ExcludeDB, "exclude-db", nil, "leave out database `NAME` (glob with *; repeatable)")
	fs.StringArrayVar(&s.ExcludeUser, "exclude-user", nil, "leave out role `NAME` (glob with *; repeatable)")
	fs.StringArrayVar(&s.ExcludeApp, "exclude-app", nil, "leave out application_name `NAME` (glob with *; repeatable)")
	fs.StringVar(&s.Query, "query", "", "query text matches `REGEX` (RE2)")
	fs.StringVar(&s.LongerThan, "longer-than", "", "current state has lasted longer than `D` (90s, 5m, 1h30m)")
	fs.StringVar(&s.XactLongerThan, "xact-longer-than", "", "transaction open longer than `D`")
	fs.BoolVar(&s.Waiting, "waiting", false, "waits on a lock")
	fs.BoolVar(&s.Blocking, "blocking", false, "blocks another session")
	fs.BoolVar(&s.BlockingReplay, "blocking-replay", false, "on a hot standby, holds a lock WAL replay waits for")
	return f
}

// Given reports whether any selector flag was given.
func (f *Flags) Given() bool {
	return !reflect.ValueOf(f.spec).IsZero()
}

// Selector checks the flags. Its error names the flag, e.g.
// `--longer-than "5x": not a duration (Go syntax: 90s, 5m, 1h30m)`.
func (f *Flags) Selector() (*Selector, error) {
	s, err := Parse(f.spec)
	var se *Error
	if errors.As(err, &se) {
		return nil, &flagError{se}
	}
	return s, err
}

type flagError struct{ err *Error }

func (e *flagError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.err.Flag(), e.err.Value, e.err.Reason)
}

func (e *flagError) Unwrap() error { return e.err }
