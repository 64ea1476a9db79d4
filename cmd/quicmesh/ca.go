package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
)

const caUsage = `Usage:
  quicmesh ca init [--dir DIR] [--trust-domain TD] [--lifetime DURATION] [--path-len N]
  quicmesh ca intermediate --root-dir DIR --out DIR [--lifetime DURATION]
  quicmesh ca issue --id SPIFFE_ID [--ca-dir DIR] [--name NAME] [--out DIR] [--lifetime DURATION]

A minimal certificate authority for quicmesh workloads. A root kept
offline ('init --path-len 1') issues an intermediate ('intermediate')
that the control plane runs with. Run 'quicmesh ca COMMAND --help' for
the flags.
`

func runCA(args []string, stdout, stderr io.Writer) int {
	return cli.New("quicmesh ca", caUsage, stdout, stderr).Dispatch(map[string]cli.Subcommand{
		"init":         runCAInit,
		"intermediate": runCAIntermediate,
		"issue":        runCAIssue,
	}, args)
}

func runCAInit(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh ca init", `Usage: quicmesh ca init [flags]

Creates a self-signed root certificate authority: DIR/ca.crt and
DIR/ca.key (never overwritten). With --path-len 0 it signs workload
certificates itself; with --path-len 1 it can also issue intermediate CAs
('quicmesh ca intermediate'), so it can stay offline.
`, stdout, stderr)
	dir := c.Flags.String("dir", "ca", "directory to write ca.crt and ca.key into")
	td := c.Flags.String("trust-domain", "cluster.local", "SPIFFE trust domain of the CA")
	lifetime := c.Flags.Duration("lifetime", 365*24*time.Hour, "validity of the CA certificate")
	pathLen := c.Flags.Int("path-len", 0, "how many intermediate CAs may stand between this root and a leaf (0: none; 1 for a root kept offline)")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if *lifetime < 0 {
		return c.Fail("--lifetime %s: must not be negative", *lifetime)
	}
	if *pathLen < 0 || *pathLen > 1 {
		// Deeper hierarchies have no use here and every extra level is a
		// key that can sign the trust domain.
		return c.Fail("--path-len %d: want 0 or 1", *pathLen)
	}
	ca, err := identity.NewRootCA(*td, *lifetime, *pathLen)
	if err != nil {
		return c.Fail("--trust-domain %q: %v", *td, err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return c.Fail("--dir: %v", err)
	}
	if err := ca.WriteFiles(*dir); err != nil {
		return c.Fail("--dir %s: %v", *dir, err)
	}
	fmt.Fprintf(stdout, "created CA for trust domain %q in %s (ca.crt, ca.key)\n", *td, *dir)
	return cli.ExitOK
}

func runCAIntermediate(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh ca intermediate", `Usage: quicmesh ca intermediate --root-dir DIR --out DIR [flags]

Issues an intermediate CA from the root in --root-dir (ca.crt, ca.key;
made with 'quicmesh ca init --path-len 1') and writes OUT/ca.crt (the
intermediate), OUT/ca.key and OUT/root.crt (the root's certificate, the
trust anchor), never overwriting. Run quicmesh-control with --ca-dir OUT
and give sidecars the root's ca.crt as --control-ca: the root's key is
needed again only for the next intermediate. The intermediate signs
workload certificates only (path length 0) and only of the root's trust
domain (a critical URI name constraint).
`, stdout, stderr)
	rootDir := c.Flags.String("root-dir", "", "directory holding the root's ca.crt and ca.key (required)")
	out := c.Flags.String("out", "", "directory to write the intermediate's ca.crt, ca.key and root.crt into (required)")
	lifetime := c.Flags.Duration("lifetime", identity.DefaultIntermediateLifetime, "validity of the intermediate (never past the root's)")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if *rootDir == "" || *out == "" {
		return c.Fail("--root-dir and --out are required")
	}
	if *lifetime <= 0 {
		return c.Fail("--lifetime %s: must be positive", *lifetime)
	}
	root, err := identity.LoadCA(filepath.Join(*rootDir, identity.CACertFile), filepath.Join(*rootDir, identity.CAKeyFile))
	if err != nil {
		return c.Fail("--root-dir: %v", err)
	}
	inter, err := identity.NewIntermediateCA(root, *lifetime)
	if err != nil {
		return c.Fail("--root-dir %s: %v", *rootDir, err)
	}
	if err := inter.WriteFiles(*out); err != nil {
		return c.Fail("--out %s: %v", *out, err)
	}
	fmt.Fprintf(stdout, "issued an intermediate CA for trust domain %q, valid until %s, in %s (ca.crt, ca.key, root.crt)\n",
		inter.TrustDomain(), inter.Cert().NotAfter.UTC().Format(time.RFC3339), *out)
	return cli.ExitOK
}

func runCAIssue(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh ca issue", `Usage: quicmesh ca issue --id SPIFFE_ID [flags]

Issues a workload certificate signed by the CA in --ca-dir and writes
OUT/NAME.crt, OUT/NAME.key and OUT/bundle.crt (each atomically, so a
running sidecar picks up the new files). With an intermediate CA
(--ca-dir holds root.crt) NAME.crt is the leaf followed by the
intermediate, and bundle.crt the root.

--dns adds DNS names for clients outside the mesh that verify a host
name (a standard HTTP/3 client of inbound.h3); the mesh authenticates
and authorizes the SPIFFE ID alone.
`, stdout, stderr)
	dir := c.Flags.String("ca-dir", "ca", "directory holding ca.crt and ca.key (and root.crt for an intermediate)")
	idFlag := c.Flags.String("id", "", "SPIFFE ID of the workload, e.g. spiffe://cluster.local/ns/default/sa/web (required)")
	out := c.Flags.String("out", ".", "directory to write NAME.crt, NAME.key and bundle.crt into")
	name := c.Flags.String("name", "workload", "file name stem for the certificate and key")
	lifetime := c.Flags.Duration("lifetime", identity.DefaultCertLifetime, "certificate validity")
	var dnsNames listFlag
	c.Flags.Var(&dnsNames, "dns", "a DNS name (RFC 1123, no wildcard) to add as a DNS SAN, e.g. web.example.org; repeat for more")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if *idFlag == "" {
		return c.Fail("--id is required")
	}
	id, err := identity.ParseID(*idFlag)
	if err != nil {
		return c.Fail("--id: %v", err)
	}
	for _, n := range dnsNames {
		if _, err := identity.ParseDNSName(n); err != nil {
			return c.Fail("--dns %s: %v", n, err)
		}
	}
	ca, err := identity.LoadCADir(*dir)
	if err != nil {
		return c.Fail("--ca-dir: %v", err)
	}
	certPEM, keyPEM, err := ca.IssuePEMWith(id, *lifetime, identity.LeafOptions{DNSNames: dnsNames})
	if err != nil {
		return c.Fail("issuing %s: %v", id, err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return c.Fail("--out: %v", err)
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(*out, *name+".crt"), certPEM, 0o644},
		{filepath.Join(*out, *name+".key"), keyPEM, 0o600},
		{filepath.Join(*out, "bundle.crt"), ca.BundlePEM(), 0o644},
	}
	for _, f := range files {
		// Write to a temp file and rename so a sidecar polling these
		// files never reads a half-written certificate.
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
			return c.Fail("--out: %v", err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return c.Fail("--out: %v", err)
		}
	}
	var dns string
	if len(dnsNames) > 0 {
		dns = " with DNS names " + strings.Join(dnsNames, ", ")
	}
	fmt.Fprintf(stdout, "issued %s%s (valid %s) -> %s, %s, %s\n", id, dns, *lifetime, files[0].path, files[1].path, files[2].path)
	return cli.ExitOK
}
