// Package lograte rate-limits log lines about events that can repeat at the
// rate of incoming traffic.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter rate-limits log lines about events that can repeat at the
// rate of incoming traffic (refused handshakes, failed dials, requests to
// an unreachable peer): one line per key per interval, and the next line
// for that key says how many were suppressed in between. Keys usually
// combine a peer and a reason.
//
// Keys can come from the network (peer addresses), so at most maxKeys are
// tracked: when the table is full, keys idle for a whole interval are
// dropped (with any suppressed count they had not yet reported), and if
// none is, the new key shares the bucket OverflowKey.
type Limiter struct {
	interval time.Duration
	maxKeys  int
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*logKey
}

// OverflowKey is the shared bucket for keys beyond a Limiter's capacity.
const OverflowKey = "overflow"

type logKey struct {
	last       time.Time // when a line was last let through
	suppressed int
}

// Defaults for New's zero arguments.
const (
	DefaultLogInterval = 10 * time.Second
	DefaultLogKeys     = 1024
)

// New returns a limiter; zero values take DefaultLogInterval and
// DefaultLogKeys, and a nil now takes time.Now.
func New(interval time.Duration, maxKeys int, now func() time.Time) *Limiter {
	if interval <= 0 {
		interval = DefaultLogInterval
	}
	if maxKeys <= 0 {
		maxKeys = DefaultLogKeys
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{interval: interval, maxKeys: maxKeys, now: now, keys: make(map[string]*logKey)}
}

// Allow reports whether a line for key may be logged now and, if so, how
// many lines for it were suppressed since the last one let through.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.keys[key]
	if k == nil {
		if len(l.keys) >= l.maxKeys {
			l.prune(now)
		}
		if len(l.keys) >= l.maxKeys {
			key = OverflowKey
			k = l.keys[key]
		}
		if k == nil {
			l.keys[key] = &logKey{last: now}
			return true, 0
		}
	}
	if now.Sub(k.last) < l.interval {
		k.suppressed++
		return false, 0
	}
	suppressed, k.suppressed, k.last = k.suppressed, 0, now
	return true, suppressed
}

// prune drops keys that have been quiet for a whole interval. Called with
// l.mu held.
func (l *Limiter) prune(now time.Time) {
	for key, k := range l.keys {
		if now.Sub(k.last) >= l.interval {
			delete(l.keys, key)
		}
	}
}

// Log writes msg at level through logger if Allow(key) lets it, adding
// "suppressed" (lines dropped for key since the last one) when non-zero.
// A nil limiter logs every line.
func (l *Limiter) Log(logger *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if l != nil {
		ok, suppressed := l.Allow(key)
		if !ok {
			return
		}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
	}
	logger.Log(context.Background(), level, msg, args...)
}
