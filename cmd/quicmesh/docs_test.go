package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// docTable returns the first column of the markdown table whose header
// row is header, with the backquotes removed.
func docTable(t *testing.T, doc, header string) []string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+header+"\n")
	if !ok {
		t.Fatalf("%s has no table %q", doc, header)
	}
	var col []string
	for i, line := range strings.Split(rest, "\n") {
		if i == 0 {
			continue // |---|---|
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		cell := strings.TrimSpace(strings.Split(line, "|")[1])
		col = append(col, strings.Trim(cell, "`"))
	}
	return col
}

// funcReturnedStrings returns every string literal that a return
// statement of the named function in package dir returns.
func funcReturnedStrings(t *testing.T, dir, name string) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	seen := false
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Name.Name != name || fn.Recv != nil {
				continue
			}
			seen = true
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				ret, ok := n.(*ast.ReturnStmt)
				if !ok {
					return true
				}
				for _, r := range ret.Results {
					if lit, ok := r.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, err := strconv.Unquote(lit.Value)
						if err != nil {
							t.Fatal(err)
						}
						found = append(found, s)
					}
				}
				return true
			})
		}
	}
	if !seen {
		t.Fatalf("no func %s in %s", name, dir)
	}
	return found
}

// The tunnel close labels documented in docs/operations.md are exactly
// the ones splice.ErrClass can return ("" for a clean close, exported
// as "none").
func TestDocumentedTunnelCloseErrors(t *testing.T) {
	if splice.ErrClass(nil) != "" {
		t.Fatalf("ErrClass(nil) = %q, want \"\" (exported as %q)", splice.ErrClass(nil), telemetry.None)
	}
	var code []string
	for _, label := range funcReturnedStrings(t, filepath.Join("..", "..", "internal", "splice"), "ErrClass") {
		if label == "" {
			label = telemetry.None
		}
		code = append(code, label)
	}
	documented := docTable(t, filepath.Join("..", "..", "docs", "operations.md"), "| error | the tunnel ended because |")
	slices.Sort(code)
	code = slices.Compact(code)
	sorted := slices.Sorted(slices.Values(documented))
	if !slices.Equal(sorted, code) {
		t.Fatalf("docs/operations.md documents tunnel close errors %v; splice.ErrClass returns %v", sorted, code)
	}
	if len(sorted) != len(slices.Compact(slices.Clone(sorted))) {
		t.Errorf("docs/operations.md lists a tunnel close error twice: %v", documented)
	}
}
