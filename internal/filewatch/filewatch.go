// Package filewatch polls a fixed set of files and hands their contents to
// a loader whenever they change, keeping the last good load when a new one
// fails. The static discovery file and the PEM files of the file identity
// provider share it: both must survive half-written files, coarse
// file-system clocks and editors that replace files by rename.
//
// Change detection is cheap: each poll stats the files and reads nothing
// if every file keeps its inode, size and modification time, unless a file
// was modified within RacyWindow of the last read (a rewrite in the same
// clock tick would be invisible to stat). Whatever is read is hashed, so
// rewriting identical content, or touching a file, never reaches the
// loader, and a broken file that stays broken is reported once, not on
// every poll.
package filewatch

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// RacyWindow: a file whose modification time is this close to (or after)
// the moment it was read may be rewritten again within the same mtime
// tick, so its stat data cannot prove it unchanged; such files are re-read
// on the next poll. Two seconds covers the coarsest common mtime
// granularity.
const RacyWindow = 2 * time.Second

// Options configures a Watcher.
type Options struct {
	// Paths are the files, in the order Load receives their contents.
	Paths []string
	// Interval is how often the files are checked; 0 or negative disables
	// polling (call Check yourself).
	Interval time.Duration
	// MaxSize bounds each file; 0 means unbounded. A larger file is an
	// error of that file.
	MaxSize int64
	// Load parses the contents (one slice per path, in order) and
	// installs them. An error keeps the previous load in force.
	Load func(contents [][]byte) error
	// Failed is called once per distinct failure while polling (a read
	// or Load error); nil ignores failures.
	Failed func(err error)
	// Recovered is called on the first successful check after a failure.
	Recovered func()
}

// ReadError is a failure to read one of the watched files.
type ReadError struct {
	Index int    // position in Options.Paths
	Path  string // the file
	Err   error
}

func (e *ReadError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Watcher polls files for changes. Its methods are safe for concurrent
// use.
type Watcher struct {
	opts Options

	mu       sync.Mutex // serialises checks
	stamps   []os.FileInfo
	readAt   time.Time
	racy     bool
	good     [sha256.Size]byte // digest of the contents in force
	loaded   bool              // Load has succeeded once
	bad      [sha256.Size]byte // digest of the last contents Load refused
	lastFail string            // text of the last failure reported, "" once recovered
	lastErr  error

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New reads the files and calls Load once; it fails with that error if
// either fails. Then, if Interval is positive, it polls until Close.
func New(opts Options) (*Watcher, error) {
	if opts.Load == nil {
		return nil, errors.New("filewatch: no Load function")
	}
	w := &Watcher{
		opts: opts,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if err := w.Check(true); err != nil {
		return nil, err
	}
	if opts.Interval > 0 {
		go w.poll()
	} else {
		close(w.done)
	}
	return w, nil
}

func (w *Watcher) poll() {
	defer close(w.done)
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.Check(false) // failures are reported through Failed
		}
	}
}

// Check looks at the files now and loads them if their content changed.
// With force the stat shortcut is skipped: the files are always read.
// It returns the read or Load error, if any.
func (w *Watcher) Check(force bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	stamps := w.stat()
	if !force && !w.racy && w.sameStamps(stamps) {
		return nil
	}
	readAt := time.Now()
	contents, err := w.read()
	if err != nil {
		// Remember nothing: the next poll retries the read.
		w.stamps, w.bad = nil, [sha256.Size]byte{}
		w.fail(err)
		return err
	}
	digest := digestOf(contents)
	w.remember(stamps, readAt)
	if w.loaded && digest == w.good {
		w.recovered()
		return nil
	}
	if !force && w.lastFail != "" && digest == w.bad {
		return w.lastErr
	}
	if err := w.opts.Load(contents); err != nil {
		// The stamps and digest of the bad content are kept, so an
		// unchanged bad file is neither re-parsed nor re-reported; the
		// next real change (or a rewrite within RacyWindow) is read.
		w.bad = digest
		w.fail(err)
		return err
	}
	w.good, w.loaded = digest, true
	w.recovered()
	return nil
}

func (w *Watcher) fail(err error) {
	w.lastErr = err
	if msg := err.Error(); msg != w.lastFail {
		w.lastFail = msg
		if w.opts.Failed != nil {
			w.opts.Failed(err)
		}
	}
}

func (w *Watcher) recovered() {
	if w.lastFail != "" {
		w.lastFail = ""
		if w.opts.Recovered != nil {
			w.opts.Recovered()
		}
	}
}

func (w *Watcher) stat() []os.FileInfo {
	s := make([]os.FileInfo, len(w.opts.Paths))
	for i, p := range w.opts.Paths {
		if fi, err := os.Stat(p); err == nil {
			s[i] = fi
		}
	}
	return s
}

func (w *Watcher) sameStamps(s []os.FileInfo) bool {
	if len(w.stamps) != len(s) {
		return false
	}
	for i, a := range s {
		b := w.stamps[i]
		if a == nil || b == nil || !os.SameFile(a, b) || a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) {
			return false
		}
	}
	return true
}

func (w *Watcher) remember(stamps []os.FileInfo, readAt time.Time) {
	w.stamps, w.readAt, w.racy = stamps, readAt, false
	for _, s := range stamps {
		if s == nil || s.ModTime().After(readAt.Add(-RacyWindow)) {
			w.racy = true
		}
	}
}

func (w *Watcher) read() ([][]byte, error) {
	out := make([][]byte, len(w.opts.Paths))
	for i, p := range w.opts.Paths {
		b, err := readFile(p, w.opts.MaxSize)
		if err != nil {
			return nil, &ReadError{Index: i, Path: p, Err: err}
		}
		out[i] = b
	}
	return out, nil
}

func readFile(path string, maxSize int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, errors.New("is a directory")
	}
	if maxSize > 0 && fi.Size() > maxSize {
		return nil, fmt.Errorf("%d bytes is larger than the maximum of %d bytes", fi.Size(), maxSize)
	}
	var r io.Reader = f
	if maxSize > 0 {
		r = io.LimitReader(f, maxSize+1)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	if maxSize > 0 && int64(buf.Len()) > maxSize { // it grew after Stat
		return nil, fmt.Errorf("larger than the maximum of %d bytes", maxSize)
	}
	return buf.Bytes(), nil
}

// digestOf hashes the contents of all files, each length-prefixed so that
// moving bytes from one file to the next changes the digest.
func digestOf(contents [][]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, b := range contents {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// Close stops polling and waits for the poller to exit. It is safe to
// call more than once.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() { close(w.stop) })
	<-w.done
	return nil
}
