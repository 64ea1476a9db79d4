package scenario

import (
	"bytes"
	"fmt"
	"os"
)

// Markers delimiting the generated section of docs/benchmarks.md.
const (
	BeginMarker = "<!-- scenarios:begin -->"
	EndMarker   = "<!-- scenarios:end -->"
)

// ReplaceSection returns doc with the text between BeginMarker and
// EndMarker replaced by body; everything else is kept byte for byte. Both
// markers must appear exactly once, in order.
func ReplaceSection(doc []byte, body string) ([]byte, error) {
	b, e := []byte(BeginMarker), []byte(EndMarker)
	if n := bytes.Count(doc, b); n != 1 {
		return nil, fmt.Errorf("want exactly one %s marker, found %d", BeginMarker, n)
	}
	if n := bytes.Count(doc, e); n != 1 {
		return nil, fmt.Errorf("want exactly one %s marker, found %d", EndMarker, n)
	}
	i, j := bytes.Index(doc, b), bytes.Index(doc, e)
	if j < i {
		return nil, fmt.Errorf("%s comes before %s", EndMarker, BeginMarker)
	}
	var out bytes.Buffer
	out.Write(doc[:i+len(b)])
	out.WriteString("\n")
	out.WriteString(body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		out.WriteString("\n")
	}
	out.Write(doc[j:])
	return out.Bytes(), nil
}

// RewriteSection replaces the generated section of the file at path.
func RewriteSection(path, body string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := ReplaceSection(doc, body)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
