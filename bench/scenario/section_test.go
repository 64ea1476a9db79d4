package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	doc := "# T\n\nintro\n" + BeginMarker + "\nold\n" + EndMarker + "\n\nafter | keep\n"
	out, err := ReplaceSection([]byte(doc), "new body")
	if err != nil {
		t.Fatal(err)
	}
	want := "# T\n\nintro\n" + BeginMarker + "\nnew body\n" + EndMarker + "\n\nafter | keep\n"
	if string(out) != want {
		t.Errorf("got %q\nwant %q", out, want)
	}
	// Idempotent, and a second rewrite replaces the first.
	out2, err := ReplaceSection(out, "new body\n")
	if err != nil || string(out2) != want {
		t.Errorf("rewrite: %q %v", out2, err)
	}
	for name, bad := range map[string]string{
		"no markers":   "# T\n",
		"no end":       BeginMarker + "\n",
		"reversed":     EndMarker + "\n" + BeginMarker + "\n",
		"two begins":   BeginMarker + BeginMarker + EndMarker,
		"two sections": BeginMarker + EndMarker + BeginMarker + EndMarker,
	} {
		if _, err := ReplaceSection([]byte(bad), "x"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestRewriteSection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.md")
	if err := os.WriteFile(p, []byte("a\n"+BeginMarker+"\n"+EndMarker+"\nz\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := RewriteSection(p, "### x\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "a\n"+BeginMarker+"\n### x\n"+EndMarker+"\nz\n" {
		t.Errorf("got %q", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", st.Mode())
	}
}

// The committed document must keep exactly one pair of markers, or the
// runner cannot rewrite it.
func TestBenchmarksDocHasMarkers(t *testing.T) {
	b, err := os.ReadFile("../../docs/benchmarks.md")
	if err != nil {
		t.Skip(err)
	}
	if _, err := ReplaceSection(b, "x"); err != nil {
		t.Error(err)
	}
	if !strings.Contains(string(b), "make bench") {
		t.Error("docs/benchmarks.md does not mention make bench")
	}
}
