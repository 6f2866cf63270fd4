package output_test

import (
	"os/exec"
	"testing"
	"unicode"

	"github.com/pgreap/pgreap/internal/output"
)

// A quoted word is what bash reads back as the one argument, and carries
// nothing raw that a terminal would act on; a plain word stays as it is.
func TestShellQuote(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"plain", "shop", "shop"},
		{"plain punctuation", "shop-2024_v1.old@x", "shop-2024_v1.old@x"},
		{"empty", "", "''"},
		{"space", "my shop", "'my shop'"},
		{"quote", "o'shop", `'o'\''shop'`},
		{"dollar and glob", "$HOME *", "'$HOME *'"},
		{"unicode", "café", "'café'"},
		{"escape sequence", "a\x1b]0;x\x07'b\\", `$'a\x1b]0;x\x07\'b\\'`},
		{"bidi override", "a\u202eb", `$'a\xe2\x80\xaeb'`},
		{"invalid UTF-8", "a\xffb", `$'a\xffb'`},
		{"newline", "a\nb", `$'a\x0ab'`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := output.ShellQuote(tt.in)
			if got != tt.want {
				t.Errorf("ShellQuote(%q) = %q, want %q", tt.in, got, tt.want)
			}
			for _, r := range got {
				if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
					t.Errorf("%U raw in %q", r, got)
				}
			}
			back, err := exec.Command("bash", "-c", "printf %s "+got).Output()
			if err != nil || string(back) != tt.in {
				t.Errorf("bash read %q back as %q (%v)", got, back, err)
			}
		})
	}
}
