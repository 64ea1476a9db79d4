package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/quicmesh/quicmesh/identity"
)

func runCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return fail(stderr, "ca: want a subcommand: init or issue")
	}
	switch args[0] {
	case "init":
		return runCAInit(args[1:], stdout, stderr)
	case "issue":
		return runCAIssue(args[1:], stdout, stderr)
	default:
		return fail(stderr, "ca: unknown subcommand %q (want init or issue)", args[0])
	}
}

func runCAInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quicmesh ca init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "ca", "directory to write ca.crt and ca.key into")
	td := fs.String("trust-domain", "cluster.local", "SPIFFE trust domain of the CA")
	lifetime := fs.Duration("lifetime", 365*24*time.Hour, "validity of the CA certificate")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ca, err := identity.NewCA(*td, *lifetime)
	if err != nil {
		return fail(stderr, "ca init: %v", err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fail(stderr, "ca init: %v", err)
	}
	if err := ca.WriteFiles(*dir); err != nil {
		return fail(stderr, "ca init: %v", err)
	}
	fmt.Fprintf(stdout, "created CA for trust domain %q in %s (ca.crt, ca.key)\n", *td, *dir)
	return 0
}

func runCAIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quicmesh ca issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("ca-dir", "ca", "directory holding ca.crt and ca.key")
	idFlag := fs.String("id", "", "SPIFFE ID of the workload, e.g. spiffe://cluster.local/ns/default/sa/web (required)")
	out := fs.String("out", ".", "directory to write NAME.crt, NAME.key and bundle.crt into")
	name := fs.String("name", "workload", "file name stem for the certificate and key")
	lifetime := fs.Duration("lifetime", identity.DefaultCertLifetime, "certificate validity")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *idFlag == "" {
		return fail(stderr, "ca issue: --id is required")
	}
	id, err := identity.ParseID(*idFlag)
	if err != nil {
		return fail(stderr, "ca issue: %v", err)
	}
	ca, err := identity.LoadCA(filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key"))
	if err != nil {
		return fail(stderr, "ca issue: %v", err)
	}
	certPEM, keyPEM, err := ca.IssuePEM(id, *lifetime)
	if err != nil {
		return fail(stderr, "ca issue: %v", err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fail(stderr, "ca issue: %v", err)
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
			return fail(stderr, "ca issue: %v", err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return fail(stderr, "ca issue: %v", err)
		}
	}
	fmt.Fprintf(stdout, "issued %s (valid %s) -> %s, %s, %s\n", id, *lifetime, files[0].path, files[1].path, files[2].path)
	return 0
}
