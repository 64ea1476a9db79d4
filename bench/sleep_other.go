//go:build !unix || darwin || ios

package bench

import "time"

// nanosleep falls back to the Go timer where golang.org/x/sys/unix has no
// Nanosleep (darwin and ios, whose libc nanosleep it does not wrap) or
// the system is not Unix: the wait is less precise there (see
// preciseSleep), not wrong.
func nanosleep(d time.Duration) { time.Sleep(d) }
