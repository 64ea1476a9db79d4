package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
)

const caUsage = `Usage:
  quicmesh ca init [--dir DIR] [--trust-domain TD] [--lifetime DURATION]
  quicmesh ca issue --id SPIFFE_ID [--ca-dir DIR] [--name NAME] [--out DIR] [--lifetime DURATION]

A minimal certificate authority for quicmesh workloads. Run
'quicmesh ca init --help' or 'quicmesh ca issue --help' for the flags.
`

func runCA(args []string, stdout, stderr io.Writer) int {
	return cli.New("quicmesh ca", caUsage, stdout, stderr).Dispatch(map[string]cli.Subcommand{
		"init":  runCAInit,
		"issue": runCAIssue,
	}, args)
}

func runCAInit(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh ca init", `Usage: quicmesh ca init [flags]

Creates a certificate authority: DIR/ca.crt and DIR/ca.key (never
overwritten).
`, stdout, stderr)
	dir := c.Flags.String("dir", "ca", "directory to write ca.crt and ca.key into")
	td := c.Flags.String("trust-domain", "cluster.local", "SPIFFE trust domain of the CA")
	lifetime := c.Flags.Duration("lifetime", 365*24*time.Hour, "validity of the CA certificate")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if *lifetime < 0 {
		return c.Fail("--lifetime %s: must not be negative", *lifetime)
	}
	ca, err := identity.NewCA(*td, *lifetime)
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

func runCAIssue(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh ca issue", `Usage: quicmesh ca issue --id SPIFFE_ID [flags]

Issues a workload certificate signed by the CA in --ca-dir and writes
OUT/NAME.crt, OUT/NAME.key and OUT/bundle.crt (each atomically, so a
running sidecar picks up the new files).
`, stdout, stderr)
	dir := c.Flags.String("ca-dir", "ca", "directory holding ca.crt and ca.key")
	idFlag := c.Flags.String("id", "", "SPIFFE ID of the workload, e.g. spiffe://cluster.local/ns/default/sa/web (required)")
	out := c.Flags.String("out", ".", "directory to write NAME.crt, NAME.key and bundle.crt into")
	name := c.Flags.String("name", "workload", "file name stem for the certificate and key")
	lifetime := c.Flags.Duration("lifetime", identity.DefaultCertLifetime, "certificate validity")
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
	ca, err := identity.LoadCA(filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key"))
	if err != nil {
		return c.Fail("--ca-dir: %v", err)
	}
	certPEM, keyPEM, err := ca.IssuePEM(id, *lifetime)
	if err != nil {
		return c.Fail("--lifetime %s: %v", *lifetime, err)
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
	fmt.Fprintf(stdout, "issued %s (valid %s) -> %s, %s, %s\n", id, *lifetime, files[0].path, files[1].path, files[2].path)
	return cli.ExitOK
}
