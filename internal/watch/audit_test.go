package watch_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode"

	"github.com/pgreap/pgreap/internal/watch"
)

// An audit line carries the exact text, and nothing raw that the terminal
// of someone running tail -f on the log would act on.
func TestAuditLineIsTerminalSafe(t *testing.T) {
	var buf bytes.Buffer
	a, err := watch.OpenAudit("", &buf)
	if err != nil {
		t.Fatal(err)
	}
	q := "SELECT 1 /* \x1b]52;c;ZXZpbA==\x07 \u202e\u0085\u009b31m \x7f \U000e0041 日本 */"
	e := watch.Entry{Query: &q, Usename: "evil\u009b", Outcome: "cancelled"}
	if err := a.Write(e); err != nil {
		t.Fatal(err)
	}
	line := buf.Bytes()
	for _, r := range string(bytes.TrimSuffix(line, []byte("\n"))) {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			t.Fatalf("%U raw in %s", r, line)
		}
	}
	var back watch.Entry
	if err := json.Unmarshal(line, &back); err != nil || back.Query == nil || *back.Query != q || back.Usename != e.Usename {
		t.Fatalf("%v: %+v", err, back)
	}
}
