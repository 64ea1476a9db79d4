package filewatch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Load/Failed/Recovered sink that refuses contents starting
// with "bad".
type recorder struct {
	mu        sync.Mutex
	loads     []string
	failures  []string
	recovered int
}

func (r *recorder) opts(paths ...string) Options {
	return Options{
		Paths: paths,
		Load: func(c [][]byte) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			var parts []string
			for _, b := range c {
				parts = append(parts, string(b))
			}
			joined := strings.Join(parts, "|")
			if strings.HasPrefix(joined, "bad") {
				return errors.New("refused " + joined)
			}
			r.loads = append(r.loads, joined)
			return nil
		},
		Failed: func(err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.failures = append(r.failures, err.Error())
		},
		Recovered: func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.recovered++
		},
	}
}

func (r *recorder) snapshot() (loads, failures []string, recovered int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.loads...), append([]string(nil), r.failures...), r.recovered
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherLoadsOnlyRealChanges(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "one")
	write(t, b, "two")
	var rec recorder
	w, err := New(rec.opts(a, b))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	steps := []struct {
		name      string
		do        func()
		wantErr   bool
		loads     []string
		failures  int
		recovered int
	}{
		{"first load", func() {}, false, []string{"one|two"}, 0, 0},
		{"same content rewritten", func() { write(t, a, "one") }, false, []string{"one|two"}, 0, 0},
		{"touched", func() {
			now := time.Now().Add(time.Hour)
			os.Chtimes(b, now, now)
		}, false, []string{"one|two"}, 0, 0},
		{"real change", func() { write(t, b, "three") }, false, []string{"one|two", "one|three"}, 0, 0},
		{"bytes moved between files", func() { write(t, a, "onet"); write(t, b, "hree") }, false, []string{"one|two", "one|three", "onet|hree"}, 0, 0},
		{"refused content keeps the last load", func() { write(t, a, "bad") }, true, []string{"one|two", "one|three", "onet|hree"}, 1, 0},
		{"unchanged bad content is reported once", func() {}, true, []string{"one|two", "one|three", "onet|hree"}, 1, 0},
		{"missing file", func() { os.Remove(a) }, true, []string{"one|two", "one|three", "onet|hree"}, 2, 0},
		{"back to the content in force", func() { write(t, a, "onet") }, false, []string{"one|two", "one|three", "onet|hree"}, 2, 1},
		{"replaced by rename", func() {
			tmp := filepath.Join(dir, "tmp")
			write(t, tmp, "renamed")
			if err := os.Rename(tmp, a); err != nil {
				t.Fatal(err)
			}
		}, false, []string{"one|two", "one|three", "onet|hree", "renamed|hree"}, 2, 1},
	}
	for _, st := range steps {
		st.do()
		err := w.Check(false)
		if (err != nil) != st.wantErr {
			t.Fatalf("%s: Check = %v, want error %v", st.name, err, st.wantErr)
		}
		loads, failures, recovered := rec.snapshot()
		if strings.Join(loads, ",") != strings.Join(st.loads, ",") || len(failures) != st.failures || recovered != st.recovered {
			t.Fatalf("%s: loads %q failures %q recovered %d; want loads %q, %d failures, %d recovered",
				st.name, loads, failures, recovered, st.loads, st.failures, st.recovered)
		}
	}
}

func TestWatcherInitialErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	write(t, good, "fine")
	big := filepath.Join(dir, "big")
	write(t, big, "0123456789")
	bad := filepath.Join(dir, "bad")
	write(t, bad, "bad")
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		paths   []string
		max     int64
		want    string
		index   int
		notExit bool
	}{
		{"missing second file", []string{good, missing}, 0, missing + ": open " + missing, 1, true},
		{"directory", []string{dir}, 0, dir + ": is a directory", 0, false},
		{"too large", []string{good, big}, 5, big + ": 10 bytes is larger than the maximum of 5 bytes", 1, false},
		{"refused by Load", []string{bad}, 0, "refused bad", -1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			opts := rec.opts(tc.paths...)
			opts.MaxSize = tc.max
			opts.Interval = time.Millisecond // must not start a poller on failure
			_, err := New(opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want %q", err, tc.want)
			}
			re, isRead := errors.AsType[*ReadError](err)
			if tc.index >= 0 && (!isRead || re.Index != tc.index) {
				t.Fatalf("error %v: want a ReadError for file %d", err, tc.index)
			}
			if tc.index < 0 && isRead {
				t.Fatalf("error %v: want Load's error, not a ReadError", err)
			}
			if tc.notExit != errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("errors.Is(%v, fs.ErrNotExist) = %v", err, !tc.notExit)
			}
		})
	}
}

func TestWatcherPollsAndCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	write(t, path, "v1")
	loaded := make(chan string, 8)
	w, err := New(Options{
		Paths:    []string{path},
		Interval: 5 * time.Millisecond,
		Load: func(c [][]byte) error {
			loaded <- string(c[0])
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := <-loaded; got != "v1" {
		t.Fatalf("first load %q", got)
	}
	write(t, path, "v2")
	select {
	case got := <-loaded:
		if got != "v2" {
			t.Fatalf("reload %q, want v2", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("change not picked up by the poller")
	}
	w.Close()
	w.Close() // idempotent
	write(t, path, "v3")
	if err := w.Check(false); err != nil { // still usable by hand
		t.Fatal(err)
	}
	if got := <-loaded; got != "v3" {
		t.Fatalf("manual check loaded %q", got)
	}
}
