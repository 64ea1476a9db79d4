package transport

import (
	"errors"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Refused and ConnectionDead say how requestError marks err, for the
// table of classify_test.go.
func Refused(err error) bool { return errors.Is(requestError(err), meshcode.ErrNotProcessed) }

func ConnectionDead(err error) bool { return errors.Is(requestError(err), meshcode.ErrConnDead) }

// SkipBodyLook turns endedBodies' look off (true) or on, for benchmarks.
func SkipBodyLook(skip bool) { skipBodyLook.Store(skip) }
