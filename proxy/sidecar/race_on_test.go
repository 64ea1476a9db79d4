//go:build race

package sidecar_test

// The race detector multiplies memory use (shadow memory), so RSS bounds
// are scaled when it is on.
const raceEnabled = true
