package identity

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultPollInterval is how often a FileProvider checks its files when
// FileOptions.PollInterval is 0.
const DefaultPollInterval = 2 * time.Second

// racyWindow: a file whose mtime is this close to (or after) the moment we
// read it may be rewritten again within the same mtime tick, so its stat
// data cannot prove it unchanged; such files are re-read on the next poll.
// Two seconds covers the coarsest common mtime granularity.
const racyWindow = 2 * time.Second

// FileOptions configures a FileProvider. The zero value is usable.
type FileOptions struct {
	// PollInterval is how often the files are checked for changes: 0 means
	// DefaultPollInterval, a negative value disables polling (call Reload
	// yourself, e.g. on SIGHUP).
	PollInterval time.Duration
	// Logger receives reload successes and failures; nil discards them.
	Logger *slog.Logger
}

// FileProvider is a Provider backed by three PEM files: the workload
// certificate chain (leaf first), its private key, and the trust bundle.
// It reloads them when they change and, if a reload fails (say a
// half-written file, or a key that does not yet match the new
// certificate), keeps serving the last good material and retries.
//
// Change detection: each poll stats the files; if inode, size and mtime
// are unchanged (and the files were not modified within racyWindow of the
// last read) nothing is read. Otherwise the files are read and their
// SHA-256 compared with the material being served: only a real content
// change is loaded and closes Changed, so touching a file is harmless.
type FileProvider struct {
	certPath, keyPath, bundlePath string
	logger                        *slog.Logger
	sp                            *StaticProvider

	mu      sync.Mutex // serialises reloads
	stamps  [3]fileStamp
	racy    bool
	digest  [sha256.Size]byte
	lastErr string

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ Provider = (*FileProvider)(nil)

type fileStamp struct {
	info os.FileInfo
}

func (s fileStamp) same(o fileStamp) bool {
	if s.info == nil || o.info == nil {
		return false
	}
	return os.SameFile(s.info, o.info) && s.info.Size() == o.info.Size() && s.info.ModTime().Equal(o.info.ModTime())
}

// NewFileProvider loads the certificate chain, private key and trust
// bundle, all required, and starts polling them for changes. It fails
// with an error naming the file if one is missing, unreadable or invalid,
// if the key does not match the certificate, or if the certificate does
// not carry exactly one SPIFFE ID.
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
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	stamps := p.statAll()
	readAt := time.Now()
	m, err := p.load()
	if err != nil {
		return nil, err
	}
	p.sp = NewStaticProvider(m.cert, m.roots)
	p.remember(stamps, readAt, m.digest)
	p.warnIfExpired(m.cert.Leaf)
	if opts.PollInterval > 0 {
		go p.poll(opts.PollInterval)
	} else {
		close(p.done)
	}
	return p, nil
}

func (p *FileProvider) poll(interval time.Duration) {
	defer close(p.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.check(false) // failures are logged by check
		}
	}
}

// Reload re-reads the files now if they changed. It returns the load
// error, if any; the previous material keeps being served in that case.
func (p *FileProvider) Reload() error { return p.check(true) }

// check reloads the files if they (may) have changed. With force the stat
// shortcut is skipped and the files are always read.
func (p *FileProvider) check(force bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	stamps := p.statAll()
	if !force && !p.racy && stamps[0].same(p.stamps[0]) && stamps[1].same(p.stamps[1]) && stamps[2].same(p.stamps[2]) {
		return nil
	}
	readAt := time.Now()
	m, err := p.load()
	if err != nil {
		// Keep the stamps of the last good load so the next poll retries;
		// log each distinct failure once rather than every poll.
		if msg := err.Error(); msg != p.lastErr {
			p.lastErr = msg
			p.logger.Warn("identity: reloading identity files failed; keeping the previous certificate", "error", err)
		}
		return err
	}
	p.lastErr = ""
	changed := m.digest != p.digest
	p.remember(stamps, readAt, m.digest)
	if !changed {
		return nil
	}
	p.sp.Set(m.cert, m.roots)
	p.warnIfExpired(m.cert.Leaf)
	id, _ := idOfCert(m.cert.Leaf)
	p.logger.Info("identity: reloaded identity files", "id", id.String(), "not_after", m.cert.Leaf.NotAfter)
	return nil
}

func (p *FileProvider) remember(stamps [3]fileStamp, readAt time.Time, digest [sha256.Size]byte) {
	p.stamps = stamps
	p.digest = digest
	p.racy = false
	for _, s := range stamps {
		if s.info == nil || s.info.ModTime().After(readAt.Add(-racyWindow)) {
			p.racy = true
		}
	}
}

func (p *FileProvider) statAll() [3]fileStamp {
	var s [3]fileStamp
	for i, path := range []string{p.certPath, p.keyPath, p.bundlePath} {
		if fi, err := os.Stat(path); err == nil {
			s[i].info = fi
		}
	}
	return s
}

func (p *FileProvider) warnIfExpired(leaf *x509.Certificate) {
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		p.logger.Warn("identity: certificate is outside its validity period; peers will refuse it",
			"not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
	}
}

type fileMaterial struct {
	cert   *tls.Certificate
	roots  *x509.CertPool
	digest [sha256.Size]byte
}

// load reads and validates the three files. Errors name the file.
func (p *FileProvider) load() (*fileMaterial, error) {
	certPEM, err := os.ReadFile(p.certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading certificate %s: %w", p.certPath, err)
	}
	keyPEM, err := os.ReadFile(p.keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading private key %s: %w", p.keyPath, err)
	}
	bundlePEM, err := os.ReadFile(p.bundlePath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading trust bundle %s: %w", p.bundlePath, err)
	}
	chain, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing certificate %s: %w", p.certPath, err)
	}
	leaf := chain[0]
	if _, err := idOfCert(leaf); err != nil {
		return nil, fmt.Errorf("identity: certificate %s: %w", p.certPath, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing private key %s: %w", p.keyPath, err)
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("identity: private key %s does not match certificate %s", p.keyPath, p.certPath)
	}
	bundle, err := parseCertsPEM(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing trust bundle %s: %w", p.bundlePath, err)
	}
	roots := x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	h := sha256.New()
	for _, b := range [][]byte{certPEM, keyPEM, bundlePEM} {
		// Length-prefix each file so moving bytes between files changes
		// the digest.
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	m := &fileMaterial{cert: cert, roots: roots}
	h.Sum(m.digest[:0])
	return m, nil
}

// Certificate returns the last successfully loaded certificate.
func (p *FileProvider) Certificate() (*tls.Certificate, error) { return p.sp.Certificate() }

// Roots returns the last successfully loaded trust bundle.
func (p *FileProvider) Roots() (*x509.CertPool, error) { return p.sp.Roots() }

// Changed returns a channel closed by the next successful reload that
// changed the material.
func (p *FileProvider) Changed() <-chan struct{} { return p.sp.Changed() }

// ID returns the SPIFFE ID of the current certificate.
func (p *FileProvider) ID() ID { return p.sp.ID() }

// Close stops polling and waits for the poller to exit. The last loaded
// material keeps being served. Close is idempotent.
func (p *FileProvider) Close() error {
	p.closeOnce.Do(func() { close(p.stop) })
	<-p.done
	return nil
}
