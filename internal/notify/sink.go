package notify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/pgreap/pgreap/internal/ownfile"
)

// Kind is what happened: the values of a sink's on:.
type Kind string

// The kinds of event.
const (
	// Acted: an audit line (an attempt on a session, dry runs included:
	// dry_run is true and the outcome planned).
	Acted Kind = "acted"
	// Suppressed: an audit line with the outcome suppressed (a rule past
	// its max_actions budget).
	Suppressed Kind = "suppressed"
	// Leader: this replica took, or lost, the lead of a target.
	Leader Kind = "leader"
	// Error: a target down (cannot connect, connection lost), an
	// election lock held by a session that is not a pgreap watch, a
	// pooler that does not answer, a policy reload rejected.
	Error Kind = "error"
)

// Kinds are all the kinds, the default of on:.
var Kinds = []Kind{Acted, Suppressed, Leader, Error}

// Format is how an event is written in the POST body.
type Format string

// The formats.
const (
	// JSON: one object, "event" then the event's fields (an audit line's,
	// or time, target and message).
	JSON Format = "json"
	// Slack: {"text": "..."}, one line for people (a Slack or Mattermost
	// incoming webhook).
	Slack Format = "slack"
)

// Sink is one webhook. URL and Header hold secrets: never print them.
type Sink struct {
	// Name names the sink in logs and metrics: the policy's name:, else
	// the URL's host (with its port), never its path or query, which
	// often hold a token (Slack's webhook URLs do).
	Name   string
	URL    string
	Header http.Header
	On     []Kind
	Format Format
}

// Wants reports whether the sink takes events of kind k.
func (s *Sink) Wants(k Kind) bool {
	for _, o := range s.On {
		if o == k {
			return true
		}
	}
	return false
}

// ParseURL checks a webhook URL and returns the host that names it. Its
// errors never repeat the URL.
func ParseURL(raw string) (host string, err error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", errors.New("not an http:// or https:// URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", errors.New("no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", errors.New("the port is not 1 to 65535")
		}
	}
	return u.Host, nil
}

// token is a header name (RFC 9110 token).
var token = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// envRef is how a header value takes text from the environment.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// SetHeader checks name and value and sets them in h. Each ${NAME} in the
// value is replaced by lookup(NAME) (os.LookupEnv: the environment
// variable), which must be set. Errors name the header and the variable,
// never the value.
func SetHeader(h http.Header, name, value string, lookup func(string) (string, bool)) error {
	if !token.MatchString(name) {
		return fmt.Errorf("header %q: not a header name", name)
	}
	var missing []string
	v := envRef.ReplaceAllStringFunc(value, func(ref string) string {
		env := envRef.FindStringSubmatch(ref)[1]
		got, ok := lookup(env)
		if !ok {
			missing = append(missing, env)
		}
		return got
	})
	if len(missing) > 0 {
		return fmt.Errorf("header %s: environment variable %s is not set", name, missing[0])
	}
	if strings.ContainsAny(v, "\r\n\x00") {
		return fmt.Errorf("header %s: the value holds a line break or NUL", name)
	}
	h.Set(name, strings.TrimSpace(v))
	return nil
}

// ReadHeaders reads a headers_file: "Name: value" lines, blank lines and
// lines starting with # ignored. The file must be pgreap's own (package
// ownfile: the user's, writable by no one else, not a symbolic link).
// Errors give the line number, never a line's text; values are taken as
// they are (no ${NAME}).
func ReadHeaders(h http.Header, path string) error {
	data, err := ownfile.ReadSecret(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("headers_file %s: %w", path, pe.Err)
		}
		return fmt.Errorf("headers_file: %w", err) // it names the file
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || !token.MatchString(name) {
			return fmt.Errorf("headers_file %s: line %d: not Name: value", path, n)
		}
		if strings.ContainsAny(value, "\x00\r\n") {
			return fmt.Errorf("headers_file %s: line %d: header %s: the value holds a line break or NUL", path, n, name)
		}
		h.Set(name, strings.TrimSpace(value))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("headers_file %s: %v", path, err)
	}
	return nil
}
