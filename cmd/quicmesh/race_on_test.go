//go:build race

package main

// The race detector slows every step several times over (issue 14's 1 s
// from an EndpointSlice change to its use is scaled when it is on).
const raceEnabled = true
