package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/quicmesh/quicmesh/internal/filewatch"
)

// DefaultPollInterval is how often a FileProvider checks its files when
// FileOptions.PollInterval is 0.
const DefaultPollInterval = 2 * time.Second

// FileOptions configures a FileProvider. The zero value is usable.
type FileOptions struct {
	// PollInterval is how often the files are checked for changes: 0 means
	// DefaultPollInterval, a negative value disables polling (call Reload
	// yourself, e.g. on SIGHUP).
	PollInterval time.Duration
	// Logger receives reload successes and failures; nil discards them.
	Logger *slog.Logger
	// FederatedBundles maps other trust domains to PEM bundle files,
	// watched and reloaded like the others. A peer of such a trust domain
	// is verified against its file only; one of a trust domain not listed
	// here (and not the local one) is untrusted.
	FederatedBundles map[string]string
}

// FileProvider is a Provider backed by three PEM files: the workload
// certificate chain (leaf first), its private key, and the trust bundle of
// the certificate's own trust domain; plus one bundle file per federated
// trust domain (FileOptions.FederatedBundles).
// It reloads them when they change and, if a reload fails (say a
// half-written file, or a key that does not yet match the new
// certificate), keeps serving the last good material and retries.
//
// Change detection is internal/filewatch's: files are read only when
// their stat data changed (or may hide a change), and only a real content
// change is loaded and closes Changed, so touching a file is harmless.
type FileProvider struct {
	certPath, keyPath, bundlePath string
	fedTDs, fedPaths              []string // parallel, sorted by trust domain
	logger                        *slog.Logger
	sp                            *StaticProvider
	files                         *filewatch.Watcher
}

var _ Provider = (*FileProvider)(nil)

// NewFileProvider loads the certificate chain, private key and trust
// bundle, all required, and starts polling them for changes. It fails
// with an error naming the file if one is missing, unreadable or invalid,
// if the key does not match the certificate, or if the certificate does
// not carry exactly one SPIFFE ID; also if a federated trust domain is not
// a valid name or is the certificate's own.
func NewFileProvider(certPath, keyPath, bundlePath string, opts FileOptions) (*FileProvider, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	p := &FileProvider{
		certPath:   certPath,
		keyPath:    keyPath,
		bundlePath: bundlePath,
		logger:     opts.Logger.With("cert", certPath, "key", keyPath, "bundle", bundlePath),
	}
	for _, td := range slices.Sorted(maps.Keys(opts.FederatedBundles)) {
		if err := CheckTrustDomain(td); err != nil {
			return nil, fmt.Errorf("identity: federated bundle %s: %w", opts.FederatedBundles[td], err)
		}
		p.fedTDs = append(p.fedTDs, td)
		p.fedPaths = append(p.fedPaths, opts.FederatedBundles[td])
	}
	files, err := filewatch.New(filewatch.Options{
		Paths:    append([]string{certPath, keyPath, bundlePath}, p.fedPaths...),
		Interval: opts.PollInterval,
		Load:     p.install,
		Failed: func(err error) {
			p.logger.Warn("identity: reloading identity files failed; keeping the previous certificate", "error", p.describe(err))
		},
	})
	if err != nil {
		return nil, p.describe(err)
	}
	p.files = files
	return p, nil
}

// describe names the file's role in a read error.
func (p *FileProvider) describe(err error) error {
	re, ok := errors.AsType[*filewatch.ReadError](err)
	if !ok {
		return err
	}
	var role string
	if re.Index < 3 {
		role = [...]string{"certificate", "private key", "trust bundle"}[re.Index]
	} else {
		role = fmt.Sprintf("federated bundle of %q", p.fedTDs[re.Index-3])
	}
	return fmt.Errorf("identity: reading %s %s: %w", role, re.Path, re.Err)
}

// Reload re-reads the files now. It returns the load error, if any; the
// previous material keeps being served in that case.
func (p *FileProvider) Reload() error { return p.describe(p.files.Check(true)) }

// install validates freshly read files and serves them.
func (p *FileProvider) install(files [][]byte) error {
	cert, roots, err := p.parse(files[0], files[1], files[2])
	if err != nil {
		return err
	}
	fed, err := p.parseFederated(cert.Leaf, files[3:])
	if err != nil {
		return err
	}
	p.warnIfExpired(cert.Leaf)
	if p.sp == nil { // the first load, from NewFileProvider
		p.sp = NewStaticProvider(cert, roots)
		p.sp.SetFederated(fed)
		return nil
	}
	p.sp.setAll(cert, roots, fed)
	id, _ := idOfCert(cert.Leaf)
	p.logger.Info("identity: reloaded identity files", "id", id.String(), "not_after", cert.Leaf.NotAfter)
	return nil
}

func (p *FileProvider) warnIfExpired(leaf *x509.Certificate) {
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		p.logger.Warn("identity: certificate is outside its validity period; peers will refuse it",
			"not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
	}
}

// parse validates the three files. Errors name the file.
func (p *FileProvider) parse(certPEM, keyPEM, bundlePEM []byte) (*tls.Certificate, *x509.CertPool, error) {
	chain, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: parsing certificate %s: %w", p.certPath, err)
	}
	leaf := chain[0]
	if _, err := idOfCert(leaf); err != nil {
		return nil, nil, fmt.Errorf("identity: certificate %s: %w", p.certPath, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: parsing private key %s: %w", p.keyPath, err)
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("identity: private key %s does not match certificate %s", p.keyPath, p.certPath)
	}
	roots, err := parsePoolPEM(bundlePEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: parsing trust bundle %s: %w", p.bundlePath, err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, roots, nil
}

// parseFederated parses the federated bundle files, in fedTDs order.
func (p *FileProvider) parseFederated(leaf *x509.Certificate, files [][]byte) (Bundles, error) {
	local, _ := idOfCert(leaf) // checked by parse
	fed := Bundles{}
	for i, td := range p.fedTDs {
		if td == local.TrustDomain {
			return nil, fmt.Errorf("identity: federated bundle %s is for %q, the local trust domain of certificate %s: use the trust bundle for it", p.fedPaths[i], td, p.certPath)
		}
		pool, err := parsePoolPEM(files[i])
		if err != nil {
			return nil, fmt.Errorf("identity: parsing federated bundle of %q %s: %w", td, p.fedPaths[i], err)
		}
		fed[td] = pool
	}
	return fed, nil
}

// parsePoolPEM parses a PEM bundle of one or more CA certificates.
func parsePoolPEM(b []byte) (*x509.CertPool, error) {
	certs, err := parseCertsPEM(b)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// Certificate returns the last successfully loaded certificate.
func (p *FileProvider) Certificate() (*tls.Certificate, error) { return p.sp.Certificate() }

// Bundle returns the last successfully loaded bundle of trust domain td:
// the trust bundle for the certificate's own, a federated one for others.
func (p *FileProvider) Bundle(td string) (*x509.CertPool, error) { return p.sp.Bundle(td) }

// Changed returns a channel closed by the next successful reload that
// changed the material.
func (p *FileProvider) Changed() <-chan struct{} { return p.sp.Changed() }

// ID returns the SPIFFE ID of the current certificate.
func (p *FileProvider) ID() ID { return p.sp.ID() }

// Close stops polling and waits for the poller to exit. The last loaded
// material keeps being served. Close is idempotent.
func (p *FileProvider) Close() error { return p.files.Close() }
