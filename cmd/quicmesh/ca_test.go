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

// TestCAIssueDNSNames: --dns adds DNS SANs that a standard client
// verifying a host name against the bundle accepts, beside the SPIFFE ID
// that stays the certificate's identity; a name that is no host name is
// refused before anything is written.
func TestCAIssueDNSNames(t *testing.T) {
	dir := t.TempDir()
	caDir, out := filepath.Join(dir, "ca"), filepath.Join(dir, "edge")
	if code, _, errs := runCmd("ca", "init", "--dir", caDir, "--trust-domain", "test.local"); code != 0 {
		t.Fatalf("ca init: exit %d: %s", code, errs)
	}
	code, stdout, errs := runCmd("ca", "issue", "--ca-dir", caDir, "--id", "spiffe://test.local/ns/a/sa/web", "--out", out,
		"--dns", "web.example.org", "--dns", "Edge.Example.org")
	if code != 0 {
		t.Fatalf("ca issue --dns: exit %d: %s", code, errs)
	}
	if !strings.Contains(stdout, "with DNS names web.example.org, Edge.Example.org") {
		t.Errorf("ca issue --dns said %q; want the DNS names named", stdout)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(out, "workload.crt"), filepath.Join(out, "workload.key"))
	if err != nil {
		t.Fatal(err)
	}
	bundle := x509.NewCertPool()
	if !bundle.AppendCertsFromPEM(readFile(t, filepath.Join(out, "bundle.crt"))) {
		t.Fatal("bundle.crt holds no certificate")
	}
	for _, host := range []string{"web.example.org", "edge.example.org"} {
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: bundle, DNSName: host}); err != nil {
			t.Errorf("verifying %s against bundle.crt: %v", host, err)
		}
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: bundle, DNSName: "api.example.org"}); err == nil {
		t.Error("the certificate verified for a DNS name it was not issued for")
	}
	if id, err := identity.IDFromCert(pair.Leaf); err != nil || id.String() != "spiffe://test.local/ns/a/sa/web" {
		t.Fatalf("leaf ID %v (%v)", id, err)
	}

	for _, tt := range []struct{ name, wantErr string }{
		{"*.example.org", `quicmesh ca issue: --dns *.example.org: identity: DNS name "*.example.org": wildcards are not issued; name each host the workload serves`},
		{"web_1.example.org", `quicmesh ca issue: --dns web_1.example.org: identity: DNS name "web_1.example.org": label "web_1" has '_': want letters, digits and hyphens`},
	} {
		bad := filepath.Join(dir, "bad")
		code, _, errs := runCmd("ca", "issue", "--ca-dir", caDir, "--id", "spiffe://test.local/ns/a/sa/web", "--out", bad, "--dns", tt.name)
		if code != 1 || !strings.Contains(errs, tt.wantErr) {
			t.Errorf("ca issue --dns %s: exit %d: %s; want exit 1 and %q", tt.name, code, errs, tt.wantErr)
		}
		if _, err := os.Stat(bad); !os.IsNotExist(err) {
			t.Errorf("ca issue --dns %s wrote %s (%v)", tt.name, bad, err)
		}
	}
}
