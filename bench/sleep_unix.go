//go:build unix && !darwin && !ios

package bench

import (
	"time"

	"golang.org/x/sys/unix"
)

func nanosleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
