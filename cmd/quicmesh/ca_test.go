package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
)

// TestCAIntermediate: an operator's root (kept offline) issues an
// intermediate; certificates issued from the intermediate carry it in
// their chain, their bundle is the root alone, and they verify against
// the root only.
func TestCAIntermediate(t *testing.T) {
	dir := t.TempDir()
	root, issuer, out := filepath.Join(dir, "root"), filepath.Join(dir, "issuer"), filepath.Join(dir, "web")
	for _, args := range [][]string{
		{"ca", "init", "--dir", root, "--trust-domain", "test.local", "--path-len", "1"},
		{"ca", "intermediate", "--root-dir", root, "--out", issuer, "--lifetime", "48h"},
		{"ca", "issue", "--ca-dir", issuer, "--id", "spiffe://test.local/ns/a/sa/web", "--name", "web", "--out", out},
	} {
		if code, _, errs := runCmd(args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
	}
	if code, _, errs := runCmd("ca", "intermediate", "--root-dir", root, "--out", issuer); code != 1 || !strings.Contains(errs, "refusing to overwrite") {
		t.Fatalf("second intermediate into the same directory: exit %d: %s", code, errs)
	}

	rootPEM := readFile(t, filepath.Join(root, "ca.crt"))
	if got := readFile(t, filepath.Join(issuer, "root.crt")); string(got) != string(rootPEM) {
		t.Fatal("issuer/root.crt is not the root's certificate")
	}
	if got := readFile(t, filepath.Join(out, "bundle.crt")); string(got) != string(rootPEM) {
		t.Fatal("the workload's bundle.crt is not the root alone")
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(out, "web.crt"), filepath.Join(out, "web.key"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("web.crt holds %d certificates, want leaf + intermediate", len(pair.Certificate))
	}
	interCert, err := x509.ParseCertificate(pair.Certificate[1])
	if err != nil {
		t.Fatal(err)
	}
	if hours := interCert.NotAfter.Sub(interCert.NotBefore).Hours(); hours < 48 || hours > 48.1 {
		t.Errorf("intermediate valid for %.2f h, want the 48 h asked (+ the minute of skew)", hours)
	}
	roots := x509.NewCertPool()
	block, _ := pem.Decode(rootPEM)
	rootCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots.AddCert(rootCert)
	inters := x509.NewCertPool()
	inters.AddCert(interCert)
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters}); err != nil {
		t.Fatalf("leaf against the root: %v", err)
	}
	if id, err := identity.IDFromCert(pair.Leaf); err != nil || id.String() != "spiffe://test.local/ns/a/sa/web" {
		t.Fatalf("leaf ID %v (%v)", id, err)
	}
	// The control plane's loader takes the directory as it is.
	ca, err := identity.LoadCADir(issuer)
	if err != nil || !ca.IsIntermediate() {
		t.Fatalf("LoadCADir(issuer): %v", err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
