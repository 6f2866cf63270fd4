package output

import (
	"bytes"
	"encoding/json"
	"testing"
)

// stdJSON is what encoding/json writes for s without HTML escaping: the
// reference appendJSONString must match byte for byte.
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
	"emoji 🙂 and \U0010ffff",
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range jsonStrings {
		if got, want := string(appendJSONString(nil, s)), stdJSON(t, s); got != want {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range jsonStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := string(appendJSONString(nil, s)), stdJSON(t, s); got != want {
			t.Fatalf("%q: got %s, want %s", s, got, want)
		}
	})
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
