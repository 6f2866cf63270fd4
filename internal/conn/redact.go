package conn

import (
	"bytes"
	"errors"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Mask is what a password becomes in a message.
const Mask = "xxxxx"

// Redact replaces in s every password the connection string dsn carries
// (password and sslpassword, as keyword/value or in a URL's userinfo or
// query), in every spelling a message may quote it in: as written, decoded
// (quotes, backslash escapes and percent-encoding undone), percent-encoded
// again, backslash-escaped, or Go-quoted. Every message that may hold a
// DSN-derived text goes through it: pgx masks only the shapes it
// recognizes (not `password=a\ b`), and url.Parse quotes the whole URL.
func Redact(s, dsn string) string {
	return scrub(s, passwords(dsn))
}

// scrub replaces every spelling of each secret in s, the longest first,
// so that a password containing another is masked whole. The pieces of a
// secret between blanks, quotes, '=', '&' and backslashes are masked too
// (four characters or more, so as not to mask every "a" of the
// message): a string that fails to parse may be cut there, and a piece
// quoted as a keyword or another keyword's value.
func scrub(s string, secrets []string) string {
	var forms []string
	for _, v := range secrets {
		for _, piece := range strings.FieldsFunc(v, func(r rune) bool { return strings.ContainsRune(" \t\n\r\v\f'\"=&#\\", r) }) {
			if len(piece) >= 4 && piece != v {
				secrets = append(secrets, piece)
			}
		}
	}
	for _, v := range secrets {
		if v == "" {
			continue
		}
		esc := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v)
		for _, f := range []string{v, esc, strings.ReplaceAll(esc, " ", `\ `), url.QueryEscape(v), url.PathEscape(v),
			strings.TrimPrefix(url.UserPassword("", v).String(), ":")} {
			forms = append(forms, f)
			if q := strconv.Quote(f); len(q) > 2 {
				forms = append(forms, q[1:len(q)-1])
			}
		}
	}
	if len(forms) == 0 {
		return s
	}
	sort.Slice(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, f := range forms {
		if f != "" {
			s = strings.ReplaceAll(s, f, Mask)
		}
	}
	return s
}

// passwords are the password values in dsn, each as written and decoded.
// A malformed string is read as far as it goes, so that what the parser
// that refused it may quote is still found; for a URL the userinfo is
// read both as libpq and pgx read it (up to the first '@' before a '/')
// and as net/url does (up to the last '@' of the authority). Besides,
// whatever follows a "password =" anywhere in the string is taken for
// one, in every reading: a stray quote or '=' before it may have made the
// parser read the string otherwise, and the message quote it as a
// keyword or another keyword's value.
func passwords(dsn string) []string {
	var out []string
	add := func(raw string, decode ...func(string) (string, error)) {
		out = append(out, raw)
		for _, d := range decode {
			if v, err := d(raw); err == nil && v != raw {
				out = append(out, v)
			}
		}
	}
	// Byte for byte: strings.ToLower changes the length of invalid UTF-8,
	// and the indexes must be the string's.
	lower := []byte(dsn)
	for i, c := range lower {
		if c >= 'A' && c <= 'Z' {
			lower[i] = c + 'a' - 'A'
		}
	}
	for i := bytes.Index(lower, []byte("password")); i >= 0; {
		rest := strings.TrimLeft(dsn[i+len("password"):], " \t\n\r\v\f")
		if v, ok := strings.CutPrefix(rest, "="); ok {
			if kvs := keywordValues("p=" + v); len(kvs) > 0 {
				out = append(out, kvs[0].raw, kvs[0].value)
			}
			v = strings.TrimLeft(v, " \t\n\r\v\f")
			if end := strings.IndexAny(v, "&# \t\n\r\v\f"); end >= 0 {
				v = v[:end]
			}
			add(v, url.QueryUnescape, url.PathUnescape)
		}
		next := bytes.Index(lower[i+1:], []byte("password"))
		if next < 0 {
			break
		}
		i += 1 + next
	}
	rest, isURL := strings.CutPrefix(dsn, "postgresql://")
	if !isURL {
		rest, isURL = strings.CutPrefix(dsn, "postgres://")
	}
	if !isURL {
		for _, kv := range keywordValues(dsn) {
			if isPasswordKey(kv.key) {
				out = append(out, kv.raw, kv.value)
			}
		}
		return out
	}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		if _, pw, ok := strings.Cut(rest[:i], ":"); ok {
			add(pw, url.PathUnescape)
		}
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		if _, pw, ok := strings.Cut(authority[:i], ":"); ok {
			add(pw, url.PathUnescape)
		}
	}
	if _, query, ok := strings.Cut(rest, "?"); ok {
		for _, kv := range strings.Split(query, "&") {
			k, v, _ := strings.Cut(kv, "=")
			if dk, err := url.QueryUnescape(k); err == nil {
				k = dk
			}
			if isPasswordKey(k) {
				add(v, url.QueryUnescape, url.PathUnescape)
			}
		}
	}
	return out
}

func isPasswordKey(k string) bool {
	k = strings.ToLower(strings.TrimSpace(k))
	return k == "password" || k == "sslpassword"
}

type keywordValue struct {
	key, raw, value string
}

// keywordValues reads a keyword/value string as libpq's conninfo_parse
// does: keyword, blanks, '=', blanks, then a value in single quotes (a
// backslash escapes the next character) or up to a blank (the same
// escape). Where libpq stops at an error, it takes what is left: an
// unterminated quote runs to the end.
func keywordValues(s string) []keywordValue {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' }
	var out []keywordValue
	i := 0
	for i < len(s) {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) || s[i] != '=' {
			if i == start {
				i++ // neither a keyword nor '=': step over it
			}
			continue
		}
		i++
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var v strings.Builder
		quoted := i < len(s) && s[i] == '\''
		if quoted {
			i++
		}
		vstart := i
		for i < len(s) {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				v.WriteByte(s[i+1])
				i += 2
				continue
			}
			if quoted && c == '\'' || !quoted && isSpace(c) {
				break
			}
			v.WriteByte(c)
			i++
		}
		out = append(out, keywordValue{key: key, raw: s[vstart:i], value: v.String()})
		if quoted && i < len(s) {
			i++ // the closing quote
		}
	}
	return out
}

// parseError is pgx's refusal without the connection string it quotes:
// its masking is best effort, and the user knows the string.
func parseError(err error) string {
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		c := *pce
		c.ConnString = ""
		return strings.TrimPrefix(c.Error(), "cannot parse ``: ")
	}
	return err.Error()
}

// urlError is net/url's refusal without the URL it quotes whole, nor the
// escape it could not read (three characters that may be a password's).
func urlError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ee url.EscapeError
	if errors.As(err, &ee) {
		return "invalid percent-encoding (a % not followed by two hex digits)"
	}
	return err.Error()
}
