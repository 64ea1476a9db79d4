package scenario

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// benchTrustDomain is the trust domain of the quicmesh pairs' private CA.
const benchTrustDomain = "bench.local"

// quicmeshCerts are the certificate stems (DIR/NAME: NAME.crt, NAME.key and
// DIR/bundle.crt) of the quicmesh pairs' outbound (A) and inbound (B)
// sidecars, and B's identity.
type quicmeshCerts struct {
	A, B, IDB string
}

// makeQuicmeshCerts creates a CA in dir with "quicmesh ca" and issues the
// two sidecars' identities.
func makeQuicmeshCerts(ctx context.Context, bin, dir string) (quicmeshCerts, error) {
	ca := filepath.Join(dir, "ca")
	id := func(sa string) string { return "spiffe://" + benchTrustDomain + "/ns/bench/sa/" + sa }
	steps := [][]string{
		{bin, "ca", "init", "--dir", ca, "--trust-domain", benchTrustDomain},
		{bin, "ca", "issue", "--ca-dir", ca, "--id", id("client"), "--name", "client", "--out", filepath.Join(dir, "a")},
		{bin, "ca", "issue", "--ca-dir", ca, "--id", id("echo"), "--name", "echo", "--out", filepath.Join(dir, "b")},
	}
	if err := runSteps(ctx, "", steps); err != nil {
		return quicmeshCerts{}, err
	}
	return quicmeshCerts{A: filepath.Join(dir, "a", "client"), B: filepath.Join(dir, "b", "echo"), IDB: id("echo")}, nil
}

// makePeerCerts creates, with openssl in dir, the peer pairs' private CA
// and a server and a client certificate (P-256), each also as one PEM file
// with its key (haproxy wants that).
func makePeerCerts(ctx context.Context, openssl, dir string) (PeerCerts, error) {
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	steps := [][]string{
		append(append([]string{openssl, "req", "-x509"}, ec...), "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
			"-subj", "/CN=quicmesh bench peer CA", "-addext", "basicConstraints=critical,CA:TRUE",
			"-addext", "keyUsage=critical,keyCertSign,cRLSign"),
	}
	for _, n := range []struct{ name, dns string }{{"server", PeerHost}, {"client", "client.test"}} {
		ext := fmt.Sprintf("subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n", n.dns)
		if err := os.WriteFile(filepath.Join(dir, n.name+".ext"), []byte(ext), 0o644); err != nil {
			return PeerCerts{}, err
		}
		steps = append(steps,
			append(append([]string{openssl, "req"}, ec...), "-keyout", n.name+".key", "-out", n.name+".csr", "-subj", "/CN="+n.dns),
			[]string{openssl, "x509", "-req", "-in", n.name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
				"-days", "2", "-out", n.name + ".crt", "-extfile", n.name + ".ext"})
	}
	if err := runSteps(ctx, dir, steps); err != nil {
		return PeerCerts{}, err
	}
	for _, n := range []string{"server", "client"} {
		crt, err1 := os.ReadFile(filepath.Join(dir, n+".crt"))
		key, err2 := os.ReadFile(filepath.Join(dir, n+".key"))
		if err := errors.Join(err1, err2); err != nil {
			return PeerCerts{}, err
		}
		if err := os.WriteFile(filepath.Join(dir, n+".pem"), append(crt, key...), 0o600); err != nil {
			return PeerCerts{}, err
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return PeerCerts{}, err
	}
	f := func(n string) string { return filepath.Join(abs, n) }
	return PeerCerts{CA: f("ca.crt"), ServerCert: f("server.crt"), ServerKey: f("server.key"), ServerPEM: f("server.pem"),
		ClientCert: f("client.crt"), ClientKey: f("client.key"), ClientPEM: f("client.pem")}, nil
}

// runSteps runs each command in dir, stopping at the first that fails.
func runSteps(ctx context.Context, dir string, steps [][]string) error {
	for _, argv := range steps {
		if err := runCmd(ctx, dir, argv...); err != nil {
			return err
		}
	}
	return nil
}

// runCmd runs a short command (a minute at most); its error carries the
// command line and what it printed.
func runCmd(ctx context.Context, dir string, argv ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", shellQuote(argv), err, bytes.TrimSpace(out))
	}
	return nil
}
