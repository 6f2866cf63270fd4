package conn_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// TestConfigErrorsHideThePassword: a connection string that fails to parse
// is refused with a line that holds none of its password, whichever shape
// the string has and whichever keyword is wrong; so is one the server
// refuses (connect).
func TestConfigErrorsHideThePassword(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       conn.Params
		connect bool
	}{
		{"url bad port", conn.Params{DSN: "postgres://u:secret@h:5x/db"}, false},
		{"url bad port, encoded", conn.Params{DSN: "postgres://u:se%63ret@h:5x/db"}, false},
		{"url bad port, flags", conn.Params{DSN: "postgres://u:secret@h:5x/db", User: "x"}, false},
		{"url no bracket", conn.Params{DSN: "postgresql://u:secret@[::1/db"}, false},
		{"url bad escape in password", conn.Params{DSN: "postgres://u:secret%zz@h/db"}, false},
		{"url query password", conn.Params{DSN: "postgres://u@h/db?password=secret&sslmode=bogus"}, false},
		{"url bad sslmode", conn.Params{DSN: "postgres://u:secret@h/db?sslmode=bogus"}, false},
		{"kv quoted with a space", conn.Params{DSN: "password='a secret' port=5x"}, false},
		{"kv escaped space", conn.Params{DSN: `password=a\ secret port=5x`}, false},
		{"kv escaped quote", conn.Params{DSN: `password=se\'cret port=5x`}, false},
		{"kv unterminated", conn.Params{DSN: "port=5x password='secret"}, false},
		{"kv other keyword", conn.Params{DSN: "password=secret connect_timeout=secret"}, false},
		{"kv statement_timeout", conn.Params{DSN: "password=secret options='-c statement_timeout=secret'"}, true},
		{"kv sslpassword", conn.Params{DSN: "sslpassword=secret sslmode=bogus host=h"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := conn.Config(tc.p)
			if err == nil && tc.connect {
				var c *pgx.Conn
				if c, err = conn.Connect(pgtest.Context(t), cfg); err == nil {
					c.Close(context.Background())
				}
			}
			if err == nil {
				t.Fatalf("%q: no error", tc.p.DSN)
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "cret") {
				t.Errorf("%q: the error prints the password: %v", tc.p.DSN, err)
			}
		})
	}
}

// TestRedact: each spelling of a password a message may quote is masked,
// and the rest of the message is kept.
func TestRedact(t *testing.T) {
	for _, tc := range []struct {
		name, dsn, msg, want string
	}{
		{"url", "postgres://u:p%40ss@h/db", `parse "postgres://u:p%40ss@h/db": x; or p@ss`, `parse "postgres://u:xxxxx@h/db": x; or xxxxx`},
		{"url, last at", "postgres://u:a@b@h/db", `"u:a@b@h"`, `"u:xxxxx@h"`},
		{"url query", "postgres://h/db?password=a+b", "a b and a+b", "xxxxx and xxxxx"},
		{"kv quoted", `password='a \'b' host=h`, `a 'b; a \'b; "a 'b"`, `xxxxx; xxxxx; "xxxxx"`},
		{"kv escaped", `host=h password=a\ b`, `password=xxxxx b: a b, a\ b`, `password=xxxxx b: xxxxx, xxxxx`},
		{"kv go-quoted", `password=a"b`, `"a\"b"`, `"xxxxx"`},
		{"no password", "host=h", "host=h", "host=h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := conn.Redact(tc.msg, tc.dsn); got != tc.want {
				t.Errorf("Redact(%q, %q) = %q, want %q", tc.msg, tc.dsn, got, tc.want)
			}
		})
	}
}

// FuzzRedact builds connection strings that carry a marker in their
// password, in keyword/value form (quoted, backslash-escaped, an
// unterminated quote) and as a URL (userinfo or query, percent-encoded at
// random), with a fuzzed port and fuzzed further keywords, and fails if the
// error of conn.Config (the one check of every DSN) ever shows the marker,
// as written or decoded.
func FuzzRedact(f *testing.F) {
	f.Add(uint8(0), "a b", "", "5x", uint64(0))
	f.Add(uint8(1), `a\ b'c`, "sslmode=bogus", "5432", uint64(0))
	f.Add(uint8(2), "x", "connect_timeout=soon", "", uint64(0))
	f.Add(uint8(3), "p@ss:/w", "", "5x", uint64(0xffff))
	f.Add(uint8(4), "a+b c", "sslmode=bogus", "99999", uint64(0x5555))
	f.Add(uint8(5), "", "options=%zz", "[::1", uint64(1))
	f.Add(uint8(0x40), "a", "unknown_keyword=1", "5x", uint64(0))
	f.Fuzz(func(t *testing.T, form uint8, pw, other, port string, enc uint64) {
		const marker = "Mq7zMarker"
		if strings.Contains(other, marker) || strings.Contains(port, marker) {
			return
		}
		password := pw[:len(pw)/2] + marker + pw[len(pw)/2:]
		kvQuoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password)
		var kvEscaped strings.Builder
		for _, r := range password {
			if strings.ContainsRune(` '\`+"\t\n\r\v\f", r) {
				kvEscaped.WriteByte('\\')
			}
			kvEscaped.WriteRune(r)
		}
		var urlEnc strings.Builder
		for i := 0; i < len(password); i++ {
			c := password[i]
			unreserved := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0
			if unreserved && enc&(1<<(i%64)) == 0 {
				urlEnc.WriteByte(c)
			} else {
				fmt.Fprintf(&urlEnc, "%%%02X", c)
			}
		}
		var dsn string
		switch form % 6 {
		case 0:
			dsn = fmt.Sprintf("host=h port=%s password='%s' %s", port, kvQuoted, other)
		case 1:
			dsn = fmt.Sprintf("%s password=%s port=%s", other, kvEscaped.String(), port)
		case 2:
			dsn = fmt.Sprintf("port=%s %s password='%s", port, other, kvQuoted)
		case 3:
			dsn = fmt.Sprintf("postgres://u:%s@h:%s/db?%s", urlEnc.String(), port, other)
		case 4:
			dsn = fmt.Sprintf("postgres://u@h:%s/db?%s&password=%s", port, other, urlEnc.String())
		case 5:
			dsn = fmt.Sprintf("postgresql://u:%s@%s/db", urlEnc.String(), port)
		}
		p := conn.Params{DSN: dsn}
		if form&0x40 != 0 {
			p.User = "u" // the URL is taken apart and put back together
		}
		_, err := conn.Config(p)
		if err == nil {
			return
		}
		msg := err.Error()
		for _, seen := range []string{msg, percentDecoded(msg), strings.ReplaceAll(msg, `\`, "")} {
			if strings.Contains(seen, marker) {
				t.Fatalf("the error shows the password of %q: %s", dsn, msg)
			}
		}
	})
}

// percentDecoded undoes every valid %XX of s, leaving the rest.
func percentDecoded(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if d, err := url.PathUnescape(s[i : i+3]); err == nil {
				b.WriteString(d)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// A connection error masks the password the attempt used, wherever it came
// from (the string, PGPASSWORD, a passfile), if a layer ever quotes it.
func TestConnectErrorHidesThePassword(t *testing.T) {
	err := conn.NewError("u", "pa ss'word", errors.New(`dial: "pa ss'word" and pa%20ss%27word and pa ss\'word`))
	if msg := err.Error(); strings.Contains(msg, "pa ss") || strings.Contains(msg, "ss%27") || strings.Contains(msg, "word") {
		t.Fatalf("the error shows the password: %s", msg)
	}
}
