package identity

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

type identityFiles struct{ cert, key, bundle string }

func filesIn(dir string) identityFiles {
	return identityFiles{
		cert:   filepath.Join(dir, "tls.crt"),
		key:    filepath.Join(dir, "tls.key"),
		bundle: filepath.Join(dir, "bundle.pem"),
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeIdentity (over)writes the three files in place, cert first, so a
// poller may observe the new certificate with the old key.
func writeIdentity(t *testing.T, f identityFiles, ca *CA, id ID) {
	t.Helper()
	certPEM, keyPEM, err := ca.IssuePEM(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.cert, certPEM)
	writeFile(t, f.key, keyPEM)
	writeFile(t, f.bundle, ca.BundlePEM())
}

func TestFileProviderLoad(t *testing.T) {
	ca := newTestCA(t, "example.org")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, ca, serverID)
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.ID() != serverID {
		t.Fatalf("ID() = %v", p.ID())
	}
	cert, err := p.Certificate()
	if err != nil || cert.Leaf == nil || len(cert.Certificate) != 1 {
		t.Fatalf("Certificate() = %+v, %v", cert, err)
	}
	client := NewStaticProvider(issue(t, ca, clientID), ca.Pool())
	res := handshake(t, ServerConfig(p, nil, nil), ClientConfig(client, serverID, nil))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake: %v / %v", res.serverErr, res.clientErr)
	}
}

// TestFileProviderFormats: SEC 1 keys and certificate files carrying a
// chain (plus stray non-certificate blocks) load too.
func TestFileProviderFormats(t *testing.T) {
	ca := newTestCA(t, "example.org")
	cert := issue(t, ca, serverID)
	sec1, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	f := filesIn(t.TempDir())
	var chain []byte
	chain = append(chain, "some comment\n"...)
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})...)
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{1}})...)
	chain = append(chain, ca.BundlePEM()...)
	writeFile(t, f.cert, chain)
	writeFile(t, f.key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	other := newTestCA(t, "other.org")
	writeFile(t, f.bundle, append(ca.BundlePEM(), other.BundlePEM()...))

	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := p.Certificate()
	if len(got.Certificate) != 2 {
		t.Fatalf("chain length %d, want 2", len(got.Certificate))
	}
	roots, _ := p.Bundle("example.org")
	if !roots.Equal(pools(ca, other)) {
		t.Fatal("bundle with two roots not loaded as both")
	}
	client := NewStaticProvider(issue(t, ca, clientID), ca.Pool())
	if res := handshake(t, ServerConfig(p, nil, nil), ClientConfig(client, serverID, nil)); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake: %v / %v", res.serverErr, res.clientErr)
	}
}

func TestFileProviderErrors(t *testing.T) {
	ca := newTestCA(t, "example.org")
	dir := t.TempDir()
	good := filesIn(dir)
	writeIdentity(t, good, ca, serverID)
	path := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, data)
		return p
	}
	missing := filepath.Join(dir, "missing.pem")
	_, otherKey, err := ca.IssuePEM(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	noID, noIDKey, err := encodeTLSCertificate(mint(t, ca, func(c *x509.Certificate) { c.URIs = nil }))
	if err != nil {
		t.Fatal(err)
	}
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	encKey := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("x")})

	tests := []struct {
		name              string
		cert, key, bundle string
		wantErr           []string // all must appear
		wantNotExist      bool
	}{
		{name: "missing cert", cert: missing, key: good.key, bundle: good.bundle,
			wantErr: []string{"identity: reading certificate " + missing + ": open " + missing + ": no such file"}, wantNotExist: true},
		{name: "missing key", cert: good.cert, key: missing, bundle: good.bundle,
			wantErr: []string{"identity: reading private key " + missing + ": open " + missing}, wantNotExist: true},
		{name: "missing bundle", cert: good.cert, key: good.key, bundle: missing,
			wantErr: []string{"identity: reading trust bundle " + missing + ": open " + missing}, wantNotExist: true},
		{name: "directory as cert", cert: dir, key: good.key, bundle: good.bundle,
			wantErr: []string{"identity: reading certificate " + dir}},
		{name: "empty cert", cert: path("empty.crt", nil), key: good.key, bundle: good.bundle,
			wantErr: []string{"identity: parsing certificate " + filepath.Join(dir, "empty.crt"), "no CERTIFICATE PEM block"}},
		{name: "garbage cert", cert: path("garbage.crt", []byte("garbage")), key: good.key, bundle: good.bundle,
			wantErr: []string{"identity: parsing certificate " + filepath.Join(dir, "garbage.crt")}},
		{name: "bad DER in cert", cert: path("baddern.crt", badDER), key: good.key, bundle: good.bundle,
			wantErr: []string{"identity: parsing certificate " + filepath.Join(dir, "baddern.crt"), "PEM block 1"}},
		{name: "cert without SPIFFE ID", cert: path("noid.crt", noID), key: path("noid.key", noIDKey), bundle: good.bundle,
			wantErr: []string{"identity: certificate " + filepath.Join(dir, "noid.crt"), "0 URI SANs"}},
		{name: "garbage key", cert: good.cert, key: path("garbage.key", []byte("garbage")), bundle: good.bundle,
			wantErr: []string{"identity: parsing private key " + filepath.Join(dir, "garbage.key"), "no PRIVATE KEY PEM block"}},
		{name: "cert as key", cert: good.cert, key: good.cert, bundle: good.bundle,
			wantErr: []string{"identity: parsing private key " + good.cert}},
		{name: "encrypted key", cert: good.cert, key: path("enc.key", encKey), bundle: good.bundle,
			wantErr: []string{"identity: parsing private key " + filepath.Join(dir, "enc.key"), "encrypted"}},
		{name: "mismatched key", cert: good.cert, key: path("other.key", otherKey), bundle: good.bundle,
			wantErr: []string{"identity: private key " + filepath.Join(dir, "other.key") + " does not match certificate " + good.cert}},
		{name: "garbage bundle", cert: good.cert, key: good.key, bundle: path("garbage.pem", []byte("garbage")),
			wantErr: []string{"identity: parsing trust bundle " + filepath.Join(dir, "garbage.pem")}},
		{name: "bad DER in bundle", cert: good.cert, key: good.key, bundle: path("bad.pem", append(ca.BundlePEM(), badDER...)),
			wantErr: []string{"identity: parsing trust bundle " + filepath.Join(dir, "bad.pem"), "PEM block 2"}},
	}
	baseline := testkit.TakeBaseline()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewFileProvider(tt.cert, tt.key, tt.bundle, FileOptions{})
			if err == nil {
				p.Close()
				t.Fatal("NewFileProvider succeeded")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if tt.wantNotExist && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("error %v does not wrap os.ErrNotExist", err)
			}
			// The key's contents never leak into errors.
			if key, _ := os.ReadFile(tt.key); len(key) > 40 && strings.Contains(err.Error(), string(key[30:40])) {
				t.Errorf("error contains key material: %v", err)
			}
		})
	}
	baseline.Check(t)
}

// TestFileProviderRotation: rewriting the files (non-atomically) is picked
// up by the poller, closes Changed, and the next handshake serves the new
// identity without touching the server config.
func TestFileProviderRotation(t *testing.T) {
	baseline := testkit.TakeBaseline()
	caA := newTestCA(t, "example.org")
	caB := newTestCA(t, "example.org")
	newServerID := MustParseID("spiffe://example.org/server-v2")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, caA, serverID)
	logs := &testkit.LogBuffer{}
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{
		PollInterval: 10 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	scfg := ServerConfig(p, nil, nil)
	client := NewStaticProvider(issue(t, caB, clientID), pools(caA, caB))
	if res := handshake(t, scfg, ClientConfig(client, serverID, nil)); ReasonOf(res.serverErr) != ReasonUntrusted {
		t.Fatalf("before rotation a CA-B client must be untrusted: %v", res.serverErr)
	}

	ch := p.Changed()
	writeIdentity(t, f, caB, newServerID)
	waitClosed(t, ch, "FileProvider to notice the rewrite")
	// Changed may close once more if the poller caught the cert and key
	// in between writes; wait until the new identity is served.
	testkit.Eventually(t, "the new identity to be served", func() bool { return p.ID() == newServerID })
	if p.ID() != newServerID {
		t.Fatalf("ID() = %v after rotation", p.ID())
	}
	res := handshake(t, scfg, ClientConfig(client, newServerID, nil))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake after rotation: %v / %v", res.serverErr, res.clientErr)
	}
	if got, _ := PeerID(res.clientState); got != newServerID {
		t.Fatalf("client sees %v", got)
	}
	if !strings.Contains(logs.String(), "reloaded identity files") {
		t.Errorf("no reload logged:\n%s", logs)
	}
	p.Close()
	p.Close()
	baseline.Check(t)
}

// TestFileProviderBadReload: a broken rewrite keeps the last good material,
// does not close Changed, is logged once, and the fix is picked up.
func TestFileProviderBadReload(t *testing.T) {
	ca := newTestCA(t, "example.org")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, ca, serverID)
	logs := &testkit.LogBuffer{}
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{
		PollInterval: 5 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	before, _ := p.Certificate()
	ch := p.Changed()

	writeFile(t, f.cert, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	err = p.Reload()
	if err == nil || !strings.Contains(err.Error(), f.cert) {
		t.Fatalf("Reload of a broken file: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // many polls
	if isClosed(ch) {
		t.Fatal("Changed closed by a failed reload")
	}
	if now, err := p.Certificate(); err != nil || now != before {
		t.Fatalf("not serving the last good certificate: %v", err)
	}
	if n := strings.Count(logs.String(), "reloading identity files failed"); n != 1 {
		t.Fatalf("failure logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), f.cert) {
		t.Fatalf("log does not name the file:\n%s", logs)
	}
	client := NewStaticProvider(issue(t, ca, clientID), ca.Pool())
	if res := handshake(t, ServerConfig(p, nil, nil), ClientConfig(client, serverID, nil)); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake with last good material: %v / %v", res.serverErr, res.clientErr)
	}

	// Deleting a file is a failure too.
	if err := os.Remove(f.key); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Reload with a missing key: %v", err)
	}

	writeIdentity(t, f, ca, clientID)
	waitClosed(t, ch, "recovery after a bad reload")
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if p.ID() != clientID {
		t.Fatalf("ID() = %v after recovery", p.ID())
	}
}

// TestFileProviderTouchIsNotAChange: new mtimes with the same contents do
// not close Changed.
func TestFileProviderTouchIsNotAChange(t *testing.T) {
	ca := newTestCA(t, "example.org")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, ca, serverID)
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ch := p.Changed()
	future := time.Now().Add(time.Hour)
	for _, path := range []string{f.cert, f.key, f.bundle} {
		if err := os.Chtimes(path, future, future); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if isClosed(ch) {
		t.Fatal("touching the files closed Changed")
	}
}

// TestFileProviderSameStatDifferentContent: a rewrite that keeps inode,
// size and mtime (a coarse-mtime file system, or a deliberate reset) right
// after a read is still detected, because stat data of recently modified
// files is not trusted.
func TestFileProviderSameStatDifferentContent(t *testing.T) {
	ca := newTestCA(t, "example.org")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, ca, serverID)
	stats := make(map[string]os.FileInfo)
	for _, path := range []string{f.cert, f.key} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		stats[path] = fi
	}
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ch := p.Changed()

	// Issue until the new PEMs have the old sizes (ECDSA signatures vary
	// by a byte or two).
	var certPEM, keyPEM []byte
	for i := 0; ; i++ {
		certPEM, keyPEM, err = ca.IssuePEM(clientID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(certPEM)) == stats[f.cert].Size() && int64(len(keyPEM)) == stats[f.key].Size() {
			break
		}
		if i == 200 {
			t.Skip("could not produce same-size PEMs")
		}
	}
	for path, data := range map[string][]byte{f.cert: certPEM, f.key: keyPEM} {
		writeFile(t, path, data)
		mt := stats[path].ModTime()
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		if !os.SameFile(fi, stats[path]) || fi.Size() != stats[path].Size() || !fi.ModTime().Equal(mt) {
			t.Fatal("test setup: stat data changed")
		}
	}
	waitClosed(t, ch, "detection of a same-stat rewrite")
	testkit.Eventually(t, "the rewritten identity to be served", func() bool { return p.ID() == clientID })
	if p.ID() != clientID {
		t.Fatalf("ID() = %v", p.ID())
	}
}

func TestFileProviderNoPolling(t *testing.T) {
	baseline := testkit.TakeBaseline()
	count := runtime.NumGoroutine()
	ca := newTestCA(t, "example.org")
	f := filesIn(t.TempDir())
	writeIdentity(t, f, ca, serverID)
	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if n := runtime.NumGoroutine(); n > count {
		t.Fatalf("PollInterval < 0 started %d goroutine(s)", n-count)
	}
	ch := p.Changed()
	writeIdentity(t, f, ca, clientID)
	time.Sleep(20 * time.Millisecond)
	if isClosed(ch) {
		t.Fatal("changed without polling")
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if !isClosed(ch) || p.ID() != clientID {
		t.Fatalf("Reload did not load the change: ID %v", p.ID())
	}
	p.Close()
	baseline.Check(t)
}

// TestFileProviderFederatedBundles: each federated bundle file verifies
// peers of its own trust domain only, reloads like the other files, and
// the configuration mistakes are refused naming the file.
func TestFileProviderFederatedBundles(t *testing.T) {
	ca := newTestCA(t, "example.org")
	other := newTestCA(t, "other.org")
	third := newTestCA(t, "third.org")
	dir := t.TempDir()
	f := filesIn(dir)
	writeIdentity(t, f, ca, serverID)
	otherBundle := filepath.Join(dir, "other.pem")
	writeFile(t, otherBundle, other.BundlePEM())

	errTests := []struct {
		name string
		fed  map[string]string
		want string
	}{
		{"local trust domain", map[string]string{"example.org": otherBundle}, `is for "example.org", the local trust domain`},
		{"invalid trust domain", map[string]string{"Other.Org": otherBundle}, "not a trust domain name"},
		{"trust domain with a path", map[string]string{"other.org/x": otherBundle}, "not a trust domain name"},
		{"missing file", map[string]string{"other.org": filepath.Join(dir, "nope.pem")}, `federated bundle of "other.org"`},
		{"not PEM", map[string]string{"other.org": f.key}, `parsing federated bundle of "other.org"`},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: -1, FederatedBundles: tt.fed})
			if err == nil {
				p.Close()
				t.Fatal("NewFileProvider succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}

	p, err := NewFileProvider(f.cert, f.key, f.bundle, FileOptions{PollInterval: -1, FederatedBundles: map[string]string{"other.org": otherBundle}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Bundle("third.org"); !errors.Is(err, ErrNoBundle) {
		t.Fatalf("Bundle(third.org) = %v, want ErrNoBundle", err)
	}
	otherClientID := MustParseID("spiffe://other.org/client")
	otherClient := federated(issue(t, other, otherClientID), other, Bundles{"example.org": ca.Pool()})
	authz := AuthorizeTrustDomains("example.org", "other.org")
	res := handshake(t, ServerConfig(p, authz, nil), ClientConfig(otherClient, serverID, nil))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("federated peer: %v / %v", res.serverErr, res.clientErr)
	}
	if got, _ := PeerID(res.serverState); got != otherClientID {
		t.Fatalf("PeerID = %v, want %v", got, otherClientID)
	}

	// The federated file now names another CA: other.org's old CA is no
	// longer trusted, and the reload is a change.
	changed := p.Changed()
	writeFile(t, otherBundle, third.BundlePEM())
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, changed, "Changed after a federated bundle changed")
	res = handshake(t, ServerConfig(p, authz, nil), ClientConfig(otherClient, serverID, nil))
	if ReasonOf(res.serverErr) != ReasonUntrusted {
		t.Fatalf("after the federated bundle changed: server error %v, want %s", res.serverErr, ReasonUntrusted)
	}
}
