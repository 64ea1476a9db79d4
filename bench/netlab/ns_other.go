//go:build !linux

package netlab

import (
	"errors"
	"os"
	"runtime"
)

var errNotLinux = errors.New("netlab: needs Linux network namespaces; this is " + runtime.GOOS)

// Available reports why a lab cannot be built here: only Linux has
// network namespaces.
func Available() error { return errNotLinux }

// TUNAvailable reports why [Lab.DelayPair] cannot work here.
func TUNAvailable() error { return errNotLinux }

// Do needs Linux.
func (l *Lab) Do(ns string, fn func() error) error { return errNotLinux }

func openTUN(name string) (*os.File, error) { return nil, errNotLinux }

func disableIPv6(ifname string) {}

func killIn(ns string) (int, error) { return 0, errNotLinux }

// KillWait needs Linux pidfds.
func KillWait(pids ...int) (int, error) { return 0, errNotLinux }
