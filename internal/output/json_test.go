package output

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"unicode"
)

// stdJSON is what encoding/json writes for s without HTML escaping: what
// appendJSONString must mean.
func stdJSON(t testing.TB, s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

var jsonStrings = []string{
	"", "plain", `quote " and \ backslash`, "tab\tnewline\ncr\r", "\b\f\x00\x01\x1f\x7f",
	"<script>&amp;</script>", "\u2028\u2029", "héllo wörld 日本", "\xff\xfe invalid", "a\xc3", "\x1b[31mred\x1b]0;title\x07",
	"emoji 🙂 and \U0010ffff", "bidi \u202e and C1 \u0085\u009b, tag \U000e0041",
}

// appendJSONString means what encoding/json means, and has nothing raw
// that a terminal would act on.
func checkJSONString(t *testing.T, s string) {
	t.Helper()
	got := appendJSONString(nil, s)
	var back, want string
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("%q: %s is not JSON: %v", s, got, err)
	}
	if err := json.Unmarshal([]byte(stdJSON(t, s)), &want); err != nil {
		t.Fatal(err)
	}
	if back != want {
		t.Fatalf("%q: %s reads %q, want %q", s, got, back, want)
	}
	for _, r := range string(got) {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			t.Fatalf("%q: %U raw in %s", s, r, got)
		}
	}
	// EscapeJSON makes encoding/json's own output as safe, meaning the same.
	esc := EscapeJSON([]byte(stdJSON(t, s)))
	if err := json.Unmarshal(esc, &back); err != nil || back != want {
		t.Fatalf("%q: EscapeJSON: %s reads %q (%v), want %q", s, esc, back, err, want)
	}
	for _, r := range string(esc) {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			t.Fatalf("%q: EscapeJSON: %U raw in %s", s, r, esc)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range jsonStrings {
		checkJSONString(t, s)
	}
	for s, want := range map[string]string{
		"a\u202eb\u0085\u009b\x7f": `"a\u202eb\u0085\u009b\u007f"`,
		"tag \U000e0041 🙂":         `"tag \udb40\udc41 🙂"`,
		"plain":                    `"plain"`,
	} {
		if got := string(appendJSONString(nil, s)); got != want {
			t.Errorf("%q: %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range jsonStrings {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

// The fast path of clean must agree with the full one.
func FuzzCleanFastPath(f *testing.F) {
	for _, s := range append(jsonStrings, "a  b", " a", "a ", "SELECT 1") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := clean(s), cleanAll(s); got != want {
			t.Fatalf("clean(%q) = %q, want %q", s, got, want)
		}
	})
}

// slog's JSON handler through JSONSafe: the same record, nothing raw.
func TestJSONSafeLog(t *testing.T) {
	var b bytes.Buffer
	msg := "role evil\u202e\u009b31m"
	slog.New(slog.NewJSONHandler(JSONSafe(&b), nil)).Info("acted", "detail", msg)
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["detail"] != msg {
		t.Fatalf("%v: %s", err, b.String())
	}
	for _, r := range strings.TrimSuffix(b.String(), "\n") {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			t.Fatalf("%U raw in %s", r, b.String())
		}
	}
}
