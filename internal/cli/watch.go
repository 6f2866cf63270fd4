package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/ownfile"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/watch"
)

// WatchOptions are the inputs of `pgreap watch`.
type WatchOptions struct {
	IO     *IOStreams
	Config string
	Check  bool
	DryRun bool
	// Test: evaluate the policy offline on the snapshots named by Files
	// (`ls -o json` outputs), no server.
	Test      bool
	Files     []string
	LogFormat string
	Verbose   bool
	// Reload delivers SIGHUP; nil: the command listens for it itself.
	Reload <-chan struct{}
}

// NewCmdWatch builds `pgreap watch`; runF replaces the run in tests.
func NewCmdWatch(f *Factory, runF func(context.Context, *WatchOptions) error) *cobra.Command {
	opts := &WatchOptions{IO: f.IO}
	cmd := &cobra.Command{
		// SIGHUP reloads the policy.
		Annotations: map[string]string{ownsHangup: "reload"},
		Use:         "watch -c POLICY",
		Short:       "Run the policy daemon: end sessions by rules, audit every action, export metrics",
		Long: `Watch one or many servers and act on the sessions the policy's rules
match, the moment each crosses its threshold (not at the next poll): per
target one snapshot per interval arms a timer for every session a rule will
match once a duration passes, and at that instant one guarded statement,
whose predicate the server evaluates then, cancels or terminates it.

Of the real rules that match a session, the first to cross its threshold
acts (the first in the file at the same instant), once per session for
terminate, once per query for cancel and cancel-then-terminate; a dry_run
rule audits planned once and takes the session from no other rule. A cancel
rule chooses only sessions that run a query; cancel-then-terminate cancels a
running query, terminates it if it still runs after the grace, and
terminates at once a session that runs none (idle in transaction).
A rule's max_actions {count, per} (at the top of the policy: all rules on
each target) caps the sessions it signals in any window of per; past it,
what it would act on is audited suppressed and counted
(pgreap_rule_suppressed_total), not signalled, until the window has room.

Every attempt, dry or real, is one JSON line in the audit log, created 0600
and refused (exit 2) when it is a symbolic link or a hard link, owned by
another user (even for root) or writable by its group or others. On
metrics_addr: /metrics; /healthz, 200 only while every target is connected
and led (by this replica or another), else 503 with each target's state in
JSON (leading, standby, connecting, down), for readiness and alerts; /livez,
200 while the process answers, for liveness (a database that is down is no
reason to restart the daemon). The policy's notify: webhooks are told of each
action, change of leader and error (JSON, or Slack's text), from a bounded
queue per webhook that never delays an action (a full queue drops, counted
in pgreap_notify_dropped_total); their URLs and header values are never
printed. A lost server is reconnected with backoff.
Replicas running the same policy elect, per target, the one that acts with a
PostgreSQL advisory lock; the others stand by, and one takes over within 3
intervals + 15 s when the leader's network is cut (keepalives, docs/watch.md).

Signals: SIGHUP reloads the policy (a bad one is rejected with one log line
and the old one kept) and reopens the audit log; a target whose DSN changed
reconnects once its old connection has stopped. SIGTERM, SIGINT or SIGQUIT stops:
what is in flight is finished, and the exit status is 0.

The policy schema is in docs/watch.md (every key); --check validates a
policy and prints what it will do (exit 0), or prints FILE:LINE: reason
(exit 2). --test SNAPSHOT.json... connects to no server and reads no
webhook secret (no ${NAME}, no headers_file): on each snapshot
(an ls -o json output, or {"taken_at": TIME, "sessions": [...]}; a plain
array is taken at the file's modification time) it prints, per session,
the rule that would act, its action and when (now, or the instant its
thresholds are crossed), dry runs, budgets' suppressed and protected
sessions with the reason, decided by the daemon's own code (exit 0, or 2
for a bad policy or file): keep a policy's expected --test output in CI.`,
		Example: `  pgreap watch -c /etc/pgreap/policy.yaml --check
  pgreap watch -c policy.yaml --test snapshots/incident.json
  pgreap watch -c policy.yaml --dry-run --log-format text
  pgreap watch -c /etc/pgreap/policy.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Config == "" {
				return usageError(errors.New("watch needs a policy: -c FILE (see --help)"))
			}
			switch {
			case opts.Test && len(args) == 0:
				return usageError(errors.New("watch --test needs snapshots: --test SNAPSHOT.json... (each an ls -o json output)"))
			case !opts.Test && len(args) > 0:
				return usageError(fmt.Errorf("watch takes no arguments (%q): did you mean --test %s?", args[0], args[0]))
			case opts.Test && opts.Check:
				return usageError(errors.New("watch: --test or --check, not both"))
			}
			opts.Files = args
			if len(f.pgbouncer) > 0 {
				return usageError(errors.New("watch: poolers are named per target in the policy (pgbouncer: [DSN, ...]), not with --pgbouncer"))
			}
			if os.Getenv("PGREAP_PGBOUNCER") != "" {
				f.Logger().Warn("PGREAP_PGBOUNCER is not read by watch: name the poolers per target in the policy (pgbouncer: [DSN, ...])")
			}
			switch opts.LogFormat {
			case "":
				opts.LogFormat = "json"
				if f.IO.ErrTTY {
					opts.LogFormat = "text"
				}
			case "json", "text":
			default:
				return usageError(fmt.Errorf("--log-format %q: json or text", opts.LogFormat))
			}
			opts.Verbose = f.verbose
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return watchRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&opts.Config, "config", "c", "", "the policy `FILE` (YAML)")
	fs.BoolVar(&opts.Check, "check", false, "check the policy, print what it will do, and exit")
	fs.BoolVar(&opts.Test, "test", false, "evaluate the policy offline on the SNAPSHOT.json files named (ls -o json outputs): print what each rule would do, and exit")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "act on nothing: every rule is a dry run (audited as planned)")
	fs.StringVar(&opts.LogFormat, "log-format", "", "log on standard error as `json` or text (default: text on a terminal, else json)")
	return cmd
}

func watchRun(ctx context.Context, opts *WatchOptions) error {
	if os.Getenv("GOGC") == "" {
		// Main's GOGC=400 suits commands that live for milliseconds; a
		// daemon holding a snapshot per target keeps the default (at 100
		// targets: 67 MB resident instead of 141, bench/watch_test.go).
		debug.SetGCPercent(100)
	}
	if opts.Test {
		// Offline: no webhook is told, so none of their secrets is read.
		pol, err := policy.LoadOffline(opts.Config)
		if err != nil {
			return usageError(err)
		}
		return watchTest(opts, pol)
	}
	pol, err := policy.Load(opts.Config)
	if err != nil {
		return usageError(err)
	}
	if opts.Check {
		// The audit log as the daemon will open it: its own, no link.
		if pol.AuditLog != "" {
			if err := ownfile.CheckAppend(pol.AuditLog); err != nil {
				return usageError(fmt.Errorf("%s: audit_log: %w", opts.Config, err))
			}
		}
		pol.Summary(opts.IO.Out)
		return nil
	}
	level := slog.LevelInfo
	if opts.Verbose {
		level = slog.LevelDebug
	}
	// A role name or a detail with a bidi override must not drive the
	// terminal that shows the log; the text handler quotes them itself.
	var handler slog.Handler = slog.NewJSONHandler(output.JSONSafe(opts.IO.ErrOut), &slog.HandlerOptions{Level: level})
	if opts.LogFormat == "text" {
		handler = slog.NewTextHandler(opts.IO.ErrOut, &slog.HandlerOptions{Level: level})
	}
	var auditOut io.Writer = opts.IO.Out
	d, err := watch.New(pol, watch.Options{Path: opts.Config, Logger: slog.New(handler), AuditOut: auditOut, DryRun: opts.DryRun})
	if err != nil {
		return usageError(err)
	}
	reload := opts.Reload
	if reload == nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		ch := make(chan struct{}, 1)
		go func() {
			for range hup {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}()
		reload = ch
	}
	return d.Run(ctx, reload)
}
