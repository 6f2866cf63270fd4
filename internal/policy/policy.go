// Package policy reads the policy file of `pgreap watch` (PRODUCT.md
// section 4): targets, interval, audit log, metrics address, protections
// and rules. It is decoded strictly: an unknown key, a value of the wrong
// type, a bad duration, action, selector or address is an error that names
// the file and the line.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// Action is what a rule does to the sessions it matches.
type Action string

// The actions of a rule.
const (
	Cancel              Action = "cancel"
	Terminate           Action = "terminate"
	CancelThenTerminate Action = "cancel-then-terminate"
)

// Defaults.
const (
	DefaultInterval    = 5 * time.Second
	DefaultMetricsAddr = "127.0.0.1:9188"
	DefaultGrace       = 10 * time.Second
	// MinInterval keeps a typo (5ms for 5s) from turning the daemon into
	// a load on the server it watches.
	MinInterval = 100 * time.Millisecond
	// MinBudgetPer is the shortest window of max_actions.
	MinBudgetPer = time.Second
)

// Policy is a checked policy.
type Policy struct {
	// Path is the file it was read from.
	Path     string
	Targets  []Target
	Interval time.Duration
	AuditLog string // "": standard output
	// AuditQuery says whether audit lines carry the session's query.
	AuditQuery  AuditQuery
	MetricsAddr string // "": no metrics server ("off" in the file)
	Protect     Protect
	Rules       []Rule
	HA          HA
	// Notify are the webhooks told of events (their URLs and header
	// values are secrets: never printed).
	Notify []notify.Sink
	// MaxActions caps the actions of all the real rules together, on each
	// target apart (nil: no cap but the rules' own).
	MaxActions *Budget
}

// Budget caps how many sessions a rule (or all the rules, on one target)
// signals: at most Count in any window of Per (a sliding window).
type Budget struct {
	Count int
	Per   time.Duration
}

// String is the budget as --check and the logs say it.
func (b Budget) String() string { return fmt.Sprintf("at most %d per %s", b.Count, b.Per) }

// HA says what a standby does when the election lock of a target is held
// by something that is not a pgreap watch (any role may take an advisory
// lock): with EvictImpostor it terminates the holder, through the guard,
// and takes the lead; otherwise it reports it (log, metric, /healthz).
type HA struct {
	EvictImpostor bool
}

// AuditQuery is the policy's audit.query: whether an audit line carries
// the text of the session's query.
type AuditQuery string

// The values of audit.query.
const (
	// QueryFull: the query as pg_stat_activity shows it (the default).
	QueryFull AuditQuery = "full"
	// QueryNone: "query": null, for queries that carry secrets as
	// literals (ALTER ROLE ... PASSWORD '...').
	QueryNone AuditQuery = "none"
)

// Target is one server to watch.
type Target struct {
	Name string
	// DSN is as for -d: a URL or keyword/value string; PG* environment
	// variables fill the rest.
	DSN string
	// PgBouncer are the admin consoles of the PgBouncers in front of the
	// server (as --pgbouncer): rules judge their server connections by the
	// client each serves.
	PgBouncer []string
}

// Protect lists sessions no rule ever touches, by role and by
// application_name (globs with *).
type Protect struct {
	Users []string
	Apps  []string
}

// Rule is one rule: the sessions its selector matches get its action.
type Rule struct {
	Name string
	// Spec is the match as written; Selector the checked one, without the
	// protections (Guarded adds them), and for a cancel narrowed to the
	// sessions that run a query.
	Spec     selector.Spec
	Selector *selector.Selector
	Action   Action
	Grace    time.Duration // for cancel-then-terminate
	DryRun   bool
	// MaxActions caps the rule's actions (nil: no cap); a dry run is never
	// capped.
	MaxActions *Budget
}

// Guarded is the rule's selector with the protections added as
// exclusions: what the snapshot and the signalling statement check.
func (r *Rule) Guarded(p Protect) *selector.Selector {
	s := *r.Selector
	s.ExcludeUser = append(append([]string(nil), s.ExcludeUser...), p.Users...)
	s.ExcludeApp = append(append([]string(nil), s.ExcludeApp...), p.Apps...)
	return &s
}

// Error is a policy that cannot be used: FILE:LINE: reason.
type Error struct {
	File   string
	Line   int
	Reason string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Reason)
}

// The file's shape. Scalars that need checking are read as strings (or
// pointers, to tell absent from empty) and checked with their line.
type file struct {
	Targets     []targetEntry `yaml:"targets"`
	Interval    *string       `yaml:"interval"`
	AuditLog    string        `yaml:"audit_log"`
	Audit       auditEntry    `yaml:"audit"`
	MetricsAddr *string       `yaml:"metrics_addr"`
	Protect     protectEntry  `yaml:"protect"`
	Rules       []ruleEntry   `yaml:"rules"`
	HA          haEntry       `yaml:"ha"`
	Notify      []notifyEntry `yaml:"notify"`
	MaxActions  *budgetEntry  `yaml:"max_actions"`
}

type notifyEntry struct {
	Name        string            `yaml:"name"`
	Webhook     string            `yaml:"webhook"`
	Headers     map[string]string `yaml:"headers"`
	HeadersFile string            `yaml:"headers_file"`
	On          []string          `yaml:"on"`
	Format      string            `yaml:"format"`
}

type budgetEntry struct {
	Count *int    `yaml:"count"`
	Per   *string `yaml:"per"`
}

type haEntry struct {
	EvictImpostor bool `yaml:"evict_impostor"`
}

type targetEntry struct {
	Name      string   `yaml:"name"`
	DSN       string   `yaml:"dsn"`
	PgBouncer []string `yaml:"pgbouncer"`
	Include   string   `yaml:"include"`
}

// includeEntry is a target in a file a policy includes.
type includeEntry struct {
	Name      string   `yaml:"name"`
	DSN       string   `yaml:"dsn"`
	PgBouncer []string `yaml:"pgbouncer"`
}

type auditEntry struct {
	Query *string `yaml:"query"`
}

type protectEntry struct {
	Users []string `yaml:"users"`
	Apps  []string `yaml:"apps"`
}

type ruleEntry struct {
	Name   string        `yaml:"name"`
	Match  selector.Spec `yaml:"match"`
	Action string        `yaml:"action"`
	Grace  *string       `yaml:"grace"`
	DryRun bool          `yaml:"dry_run"`
	// MaxActions is a pointer: an empty mapping is refused, not taken for
	// no budget.
	MaxActions *budgetEntry `yaml:"max_actions"`
}

// maxSize bounds what Load reads: a policy is a few kilobytes.
const maxSize = 16 << 20

// Load reads and checks the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// LoadOffline is Load for `watch --test`, which sends no notification: the
// secrets of notify's webhooks are not resolved (no ${NAME} is looked up,
// no headers_file read), so a CI job tests a policy without them. Its
// sinks carry no headers: never start a daemon with it.
func LoadOffline(path string) (*Policy, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return parse(path, data, true)
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, &Error{File: path, Reason: pe.Err.Error()}
		}
		return nil, &Error{File: path, Reason: err.Error()}
	}
	defer f.Close()
	// Whoever may write the policy decides which sessions the daemon ends,
	// and where its notifications go with which files' contents.
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o002 != 0 {
		return nil, &Error{File: path, Reason: fmt.Sprintf("writable by anyone (mode %04o): chmod o-w it", fi.Mode().Perm())}
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(io.LimitReader(f, maxSize+1)); err != nil {
		return nil, &Error{File: path, Reason: err.Error()}
	}
	if b.Len() > maxSize {
		return nil, &Error{File: path, Reason: fmt.Sprintf("more than %d MiB: not a policy", maxSize>>20)}
	}
	return b.Bytes(), nil
}

// Parse checks a policy read from path.
func Parse(path string, data []byte) (*Policy, error) { return parse(path, data, false) }

// parse is Parse; offline: LoadOffline's.
func parse(path string, data []byte, offline bool) (*Policy, error) {
	root, err := document(path, data)
	if err != nil {
		return nil, err
	}
	var f file
	if err := decode(path, data, root, &f); err != nil {
		return nil, err
	}
	p := &Policy{Path: path, Interval: DefaultInterval, MetricsAddr: DefaultMetricsAddr, AuditLog: f.AuditLog, AuditQuery: QueryFull}
	at := func(n *yaml.Node, reason string, args ...any) error {
		line := 0
		if n != nil {
			line = n.Line
		}
		return &Error{File: path, Line: line, Reason: fmt.Sprintf(reason, args...)}
	}

	// Targets, with the files they include.
	targetsNode := valueOf(root, "targets")
	if len(f.Targets) == 0 {
		return nil, at(orRoot(targetsNode, root), "no targets: list the servers to watch under targets (name and dsn)")
	}
	seen := map[string]int{}
	for i, t := range f.Targets {
		n := targetsNode.Content[i]
		if t.Include != "" {
			if t.Name != "" || t.DSN != "" || t.PgBouncer != nil {
				return nil, at(n, "a target is either name and dsn, or include")
			}
			more, err := include(path, t.Include, n.Line)
			if err != nil {
				return nil, err
			}
			for _, m := range more {
				if line, dup := seen[m.Name]; dup {
					return nil, at(n, "target %q (from %s) is listed twice (first at line %d)", m.Name, t.Include, line)
				}
				seen[m.Name] = n.Line
				p.Targets = append(p.Targets, m)
			}
			continue
		}
		tg, err := checkTarget(path, n, t)
		if err != nil {
			return nil, err
		}
		if line, dup := seen[tg.Name]; dup {
			return nil, at(valueOf(n, "name"), "target %q is listed twice (first at line %d)", tg.Name, line)
		}
		seen[tg.Name] = n.Line
		p.Targets = append(p.Targets, tg)
	}

	if f.Interval != nil {
		d, err := duration(*f.Interval)
		if err != nil {
			return nil, at(valueOf(root, "interval"), "interval %q: %v", *f.Interval, err)
		}
		if d < MinInterval {
			return nil, at(valueOf(root, "interval"), "interval %s: at least %s", d, MinInterval)
		}
		p.Interval = d
	}
	if f.MetricsAddr != nil {
		switch a := strings.TrimSpace(*f.MetricsAddr); a {
		case "off":
			p.MetricsAddr = ""
		default:
			if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
				return nil, at(valueOf(root, "metrics_addr"), "metrics_addr %q: not HOST:PORT (e.g. 127.0.0.1:9188), or off", a)
			}
			p.MetricsAddr = a
		}
	}
	if q := f.Audit.Query; q != nil {
		switch AuditQuery(*q) {
		case QueryFull, QueryNone:
			p.AuditQuery = AuditQuery(*q)
		default:
			return nil, at(valueOf(valueOf(root, "audit"), "query"), "audit query %q: not full or none", *q)
		}
	}
	protectNode := valueOf(root, "protect")
	for field, globs := range map[string][]string{"users": f.Protect.Users, "apps": f.Protect.Apps} {
		for _, g := range globs {
			if strings.TrimSpace(g) == "" {
				return nil, at(valueOf(protectNode, field), "protect %s: an empty name protects nothing", field)
			}
		}
	}
	p.Protect = Protect{Users: f.Protect.Users, Apps: f.Protect.Apps}
	p.HA = HA{EvictImpostor: f.HA.EvictImpostor}
	if f.MaxActions != nil {
		b, err := checkBudget(path, valueOf(root, "max_actions"), "max_actions", *f.MaxActions)
		if err != nil {
			return nil, err
		}
		p.MaxActions = b
	}

	notifyNode := valueOf(root, "notify")
	sinks := map[string]int{}
	for i, e := range f.Notify {
		n := notifyNode.Content[i]
		sink, err := checkSink(path, n, e, offline)
		if err != nil {
			return nil, err
		}
		if line, dup := sinks[sink.Name]; dup {
			return nil, at(n, "notify: two webhooks named %s (first at line %d): give each a name", sink.Name, line)
		}
		sinks[sink.Name] = n.Line
		p.Notify = append(p.Notify, sink)
	}

	// Rules.
	rulesNode := valueOf(root, "rules")
	if len(f.Rules) == 0 {
		return nil, at(orRoot(rulesNode, root), "no rules: a policy without rules does nothing")
	}
	names := map[string]int{}
	for i, r := range f.Rules {
		n := rulesNode.Content[i]
		rule, err := checkRule(path, n, r)
		if err != nil {
			return nil, err
		}
		if line, dup := names[rule.Name]; dup {
			return nil, at(valueOf(n, "name"), "rule %q is defined twice (first at line %d)", rule.Name, line)
		}
		names[rule.Name] = n.Line
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

func checkTarget(path string, n *yaml.Node, t targetEntry) (Target, error) {
	if strings.TrimSpace(t.Name) == "" {
		return Target{}, &Error{File: path, Line: n.Line, Reason: "a target needs a name"}
	}
	if !validName.MatchString(t.Name) {
		return Target{}, &Error{File: path, Line: lineOf(n, "name"), Reason: fmt.Sprintf("target name %q: use letters, digits, and . _ - (it is a metrics label and a log field)", t.Name)}
	}
	// The daemon's own check, so that --check refuses what watch would,
	// with the password masked.
	if _, err := conn.Config(conn.Params{DSN: t.DSN}); err != nil {
		return Target{}, &Error{File: path, Line: lineOf(n, "dsn"), Reason: fmt.Sprintf("target %q: dsn: %v", t.Name, conn.Redact(oneLine(err), t.DSN))}
	}
	for _, d := range t.PgBouncer {
		if _, err := pooler.Parse(d); err != nil {
			return Target{}, &Error{File: path, Line: lineOf(n, "pgbouncer"), Reason: fmt.Sprintf("target %q: pgbouncer: %s", t.Name, strings.TrimPrefix(strings.TrimPrefix(oneLine(err), "--pgbouncer: "), "--pgbouncer "))}
		}
	}
	return Target{Name: t.Name, DSN: t.DSN, PgBouncer: t.PgBouncer}, nil
}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func checkRule(path string, n *yaml.Node, r ruleEntry) (Rule, error) {
	errAt := func(key, reason string, args ...any) error {
		return &Error{File: path, Line: lineOf(n, key), Reason: fmt.Sprintf(reason, args...)}
	}
	if strings.TrimSpace(r.Name) == "" {
		return Rule{}, errAt("", "a rule needs a name")
	}
	if !validName.MatchString(r.Name) {
		return Rule{}, errAt("name", "rule name %q: use letters, digits, and . _ - (it is a metrics label)", r.Name)
	}
	rule := Rule{Name: r.Name, Spec: r.Match, Action: Action(r.Action), DryRun: r.DryRun}
	if reflect.ValueOf(r.Match).IsZero() {
		return Rule{}, errAt("match", "rule %q: match chooses nothing; a rule must say which sessions (it is never every session)", r.Name)
	}
	sel, err := selector.Parse(r.Match)
	if err != nil {
		var se *selector.Error
		if errors.As(err, &se) {
			return Rule{}, &Error{File: path, Line: lineOf(valueOf(n, "match"), se.Field), Reason: fmt.Sprintf("rule %q: %v", r.Name, err)}
		}
		return Rule{}, errAt("match", "rule %q: %v", r.Name, err)
	}
	if sel.BlockingLongerThan > 0 && sel.Waiting {
		// Such a rule would load, pass --check and --test, and never act.
		return Rule{}, &Error{File: path, Line: lineOf(valueOf(n, "match"), "waiting"), Reason: fmt.Sprintf(
			"rule %q: blocking_longer_than chooses the roots of lock waits, which wait on no lock: with waiting: true it matches nothing", r.Name)}
	}
	rule.Selector = sel
	switch rule.Action {
	case Cancel, Terminate, CancelThenTerminate:
	case "":
		return Rule{}, errAt("", "rule %q: no action (cancel, terminate or cancel-then-terminate)", r.Name)
	default:
		return Rule{}, errAt("action", "rule %q: action %q: not cancel, terminate or cancel-then-terminate", r.Name, r.Action)
	}
	if rule.Action == Cancel {
		// A cancel ends a running query: the rule chooses only sessions
		// that run one, as the cancel command does, so an idle session is
		// never signalled, audited nor counted.
		running, ok := sel.OnlyRunning()
		if !ok {
			return Rule{}, &Error{File: path, Line: lineOf(valueOf(n, "match"), "state"), Reason: fmt.Sprintf(
				"rule %q: a cancel ends a running query, and state %s never runs one (%s); terminate ends idle sessions",
				r.Name, strings.Join(r.Match.State, ", "), strings.Join(selector.Running, ", "))}
		}
		rule.Selector = running
	}
	if r.Grace != nil {
		if rule.Action != CancelThenTerminate {
			return Rule{}, errAt("grace", "rule %q: grace is for cancel-then-terminate, the action is %s", r.Name, r.Action)
		}
		d, err := duration(*r.Grace)
		if err != nil || d <= 0 {
			if err == nil {
				err = errors.New("must be more than zero")
			}
			return Rule{}, errAt("grace", "rule %q: grace %q: %v", r.Name, *r.Grace, err)
		}
		rule.Grace = d
	} else if rule.Action == CancelThenTerminate {
		rule.Grace = DefaultGrace
	}
	if r.MaxActions != nil {
		b, err := checkBudget(path, valueOf(n, "max_actions"), fmt.Sprintf("rule %q: max_actions", r.Name), *r.MaxActions)
		if err != nil {
			return Rule{}, err
		}
		rule.MaxActions = b
	}
	return rule, nil
}

// checkSink checks a webhook of notify:. Its errors name the key and
// never hold the URL nor a header's value. Offline, the headers' names
// are checked, and their values neither resolved nor kept.
func checkSink(path string, n *yaml.Node, e notifyEntry, offline bool) (notify.Sink, error) {
	errAt := func(node *yaml.Node, reason string, args ...any) error {
		line := n.Line
		if node != nil {
			line = node.Line
		}
		return &Error{File: path, Line: line, Reason: "notify: " + fmt.Sprintf(reason, args...)}
	}
	if strings.TrimSpace(e.Webhook) == "" {
		return notify.Sink{}, errAt(nil, "a webhook needs its URL (webhook: https://...)")
	}
	host, err := notify.ParseURL(e.Webhook)
	if err != nil {
		return notify.Sink{}, errAt(valueOf(n, "webhook"), "webhook: %v", err)
	}
	s := notify.Sink{Name: host, URL: strings.TrimSpace(e.Webhook), Header: http.Header{}, Format: notify.JSON, On: notify.Kinds}
	if e.Name != "" {
		if !validName.MatchString(e.Name) {
			return notify.Sink{}, errAt(valueOf(n, "name"), "name %q: use letters, digits, and . _ - (it is a metrics label)", e.Name)
		}
		s.Name = e.Name
	}
	if e.HeadersFile != "" && !offline {
		file := e.HeadersFile
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(path), file)
		}
		if err := notify.ReadHeaders(s.Header, file); err != nil {
			return notify.Sink{}, errAt(valueOf(n, "headers_file"), "%s", oneLine(err))
		}
	}
	headers := valueOf(n, "headers")
	names := make([]string, 0, len(e.Headers))
	for k := range e.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	h, lookup := s.Header, os.LookupEnv
	if offline {
		h, lookup = http.Header{}, func(string) (string, bool) { return "", true }
	}
	for _, k := range names {
		if err := notify.SetHeader(h, k, e.Headers[k], lookup); err != nil {
			return notify.Sink{}, errAt(keyNode(headers, k), "%v", err)
		}
	}
	if on := valueOf(n, "on"); on != nil {
		s.On = nil
		for i, o := range e.On {
			k := notify.Kind(strings.TrimSpace(o))
			if !slices.Contains(notify.Kinds, k) {
				return notify.Sink{}, errAt(on.Content[i], "on %q: not one of acted, suppressed, leader, error", o)
			}
			s.On = append(s.On, k)
		}
		if len(s.On) == 0 {
			return notify.Sink{}, errAt(on, "on is empty: the webhook would be told nothing")
		}
	}
	if e.Format != "" {
		switch f := notify.Format(strings.TrimSpace(e.Format)); f {
		case notify.JSON, notify.Slack:
			s.Format = f
		default:
			return notify.Sink{}, errAt(valueOf(n, "format"), "format %q: not json or slack", e.Format)
		}
	}
	return s, nil
}

// keyNode is the key node of key in mapping n (a header's line), else n.
func keyNode(n *yaml.Node, key string) *yaml.Node {
	if n != nil && n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i]
			}
		}
	}
	return n
}

// checkBudget checks max_actions (at n, named what in errors): both count
// and per, a count of at least one, a positive duration.
func checkBudget(path string, n *yaml.Node, what string, e budgetEntry) (*Budget, error) {
	errAt := func(key, reason string, args ...any) error {
		return &Error{File: path, Line: lineOf(n, key), Reason: what + ": " + fmt.Sprintf(reason, args...)}
	}
	if e.Count == nil || e.Per == nil {
		return nil, errAt("", "say both count and per ({count: 20, per: 10m}: at most 20 sessions signalled in any 10 minutes)")
	}
	// yaml.v3 truncates a float into an int: 2.5 would be a budget of 2
	// without a word.
	if c := valueOf(n, "count"); c != nil && resolve(c).Tag != "!!int" {
		return nil, errAt("count", "count %s: a whole number of sessions", resolve(c).Value)
	}
	if *e.Count < 1 {
		return nil, errAt("count", "count %d: at least 1 (a rule that must never act is a dry run)", *e.Count)
	}
	d, err := duration(*e.Per)
	if err != nil || d <= 0 {
		if err == nil {
			err = errors.New("must be more than zero")
		}
		return nil, errAt("per", "per %q: %v", *e.Per, err)
	}
	if d < MinBudgetPer {
		// A runaway rule signals many sessions a second: a shorter
		// window caps next to nothing, and is a typo (1ms for 1m).
		return nil, errAt("per", "per %s: at least %s", d, MinBudgetPer)
	}
	return &Budget{Count: *e.Count, Per: d}, nil
}

// include reads the targets of the files a glob names: each a YAML list of
// name and dsn, checked as strictly as the policy.
func include(policyPath, glob string, line int) ([]Target, error) {
	pattern := glob
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(policyPath), pattern)
	}
	files, err := filepath.Glob(pattern)
	if err != nil {
		return nil, &Error{File: policyPath, Line: line, Reason: fmt.Sprintf("include %q: %v", glob, err)}
	}
	if len(files) == 0 {
		return nil, &Error{File: policyPath, Line: line, Reason: fmt.Sprintf("include %q: no file matches", glob)}
	}
	sort.Strings(files)
	var out []Target
	for _, name := range files {
		data, err := readFile(name)
		if err != nil {
			return nil, err
		}
		root, err := document(name, data)
		if err != nil {
			return nil, err
		}
		var entries []includeEntry
		if err := decode(name, data, root, &entries); err != nil {
			return nil, err
		}
		for i, e := range entries {
			t, err := checkTarget(name, root.Content[i], targetEntry{Name: e.Name, DSN: e.DSN, PgBouncer: e.PgBouncer})
			if err != nil {
				return nil, err
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// document parses YAML into its root node (the document's content).
func document(path string, data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(path, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, &Error{File: path, Reason: "empty"}
	}
	return doc.Content[0], nil
}

// decode decodes the document data (whose root node is root) into v,
// strictly: yaml.v3 refuses a key v's type has no field for (KnownFields),
// and its errors become FILE:LINE: reason.
func decode(path string, data []byte, root *yaml.Node, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	t := reflect.TypeOf(v).Elem()
	if err := dec.Decode(v); err != nil {
		return decodeError(path, err, root, t)
	}
	return blankBool(path, root, t)
}

// decodeError is yamlError, with the key or mapping a struct of t expects
// named by its keys.
func decodeError(path string, err error, root *yaml.Node, t reflect.Type) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) || len(te.Errors) == 0 {
		return yamlError(path, err)
	}
	structs := map[string]reflect.Type{}
	structTypes(t, structs)
	for _, msg := range te.Errors {
		m := lineRE.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		line, _ := strconv.Atoi(m[1])
		if u := unknownRE.FindStringSubmatch(m[2]); u != nil && structs[u[2]] != nil {
			return &Error{File: path, Line: line, Reason: fmt.Sprintf("unknown key %q (known here: %s)", u[1], strings.Join(keysOf(structs[u[2]]), ", "))}
		}
		if c := notMappingRE.FindStringSubmatch(m[2]); c != nil && structs[c[2]] != nil {
			found := "something else"
			if n := nodeAt(root, line, "!!"+c[1]); n != nil {
				found = kindName(n)
			}
			return &Error{File: path, Line: line, Reason: fmt.Sprintf("expected a mapping of %s, found %s", strings.Join(keysOf(structs[c[2]]), ", "), found)}
		}
	}
	return yamlError(path, err)
}

var (
	unknownRE    = regexp.MustCompile(`^field (.*) not found in type (\S+)$`)
	notMappingRE = regexp.MustCompile(`^cannot unmarshal !!(\w+)(?: .*)? into (\S+)$`)
)

// structTypes adds the struct types t holds, by the name yaml.v3's errors
// give them (policy.ruleEntry).
func structTypes(t reflect.Type, seen map[string]reflect.Type) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t.String()] != nil {
		return
	}
	seen[t.String()] = t
	for i := 0; i < t.NumField(); i++ {
		structTypes(t.Field(i).Type, seen)
	}
}

// nodeAt is the first value (never a mapping's key) of tag on line, nil
// if none.
func nodeAt(n *yaml.Node, line int, tag string) *yaml.Node {
	if n.Line == line && n.Tag == tag {
		return n
	}
	for i, c := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue
		}
		if found := nodeAt(c, line, tag); found != nil {
			return found
		}
	}
	return nil
}

// blankBool refuses a boolean key with no value, which yaml.v3 decodes as
// false: a blank dry_run would make a rule real without a word. It walks
// the node along the Go type, which the decoding has checked. A merge
// key (<<) is refused as an unknown key: yaml.v3 decodes what it merges
// into the mapping, where this walk would not see a blank boolean.
func blankBool(path string, n *yaml.Node, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case t.Kind() == reflect.Bool && n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		return &Error{File: path, Line: n.Line, Reason: "no value: say true or false"}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for _, c := range n.Content {
			if err := blankBool(path, c, t.Elem()); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Tag == "!!merge" {
				return &Error{File: path, Line: k.Line, Reason: fmt.Sprintf("unknown key %q (known here: %s)", k.Value, strings.Join(keysOf(t), ", "))}
			}
			for j := 0; j < t.NumField(); j++ {
				if tag, _, _ := strings.Cut(t.Field(j).Tag.Get("yaml"), ","); tag == n.Content[i].Value {
					if err := blankBool(path, n.Content[i+1], t.Field(j).Type); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

func keysOf(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	return keys
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		// Not the value itself: a webhook's URL or a DSN written where a
		// mapping belongs holds a secret, and this line is printed and
		// logged (and, on a reload, sent to the error sinks).
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "true or false"
		case "!!null":
			return "nothing"
		}
		return "a string"
	}
	return "something else"
}

// yamlError turns a yaml.v3 error ("yaml: line 3: ..." or a TypeError
// with "line 3: cannot unmarshal ...") into FILE:LINE: reason.
func yamlError(path string, err error) error {
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: path, Line: line, Reason: strings.ReplaceAll(m[2], "!!", "")}
	}
	return &Error{File: path, Reason: oneLine(errors.New(msg))}
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// valueOf is the value node of key in mapping n, nil if absent.
func valueOf(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// resolve is n, or the node an alias names.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// lineOf is the line of key in mapping n, else of n itself.
func lineOf(n *yaml.Node, key string) int {
	if n == nil {
		return 0
	}
	if v := valueOf(n, key); v != nil {
		return v.Line
	}
	return n.Line
}

func orRoot(n, root *yaml.Node) *yaml.Node {
	if n != nil {
		return n
	}
	return root
}

func duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, errors.New("not a duration (Go syntax: 500ms, 90s, 5m, 1h30m)")
	}
	return d, nil
}
