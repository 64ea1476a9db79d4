//go:build race

package transport_test

// The race detector slows packet generation and multiplies memory use
// (shadow memory), so flood rates and memory bounds are scaled when it is on.
const raceEnabled = true
