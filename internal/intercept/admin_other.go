//go:build !linux

package intercept

import (
	"errors"
	"runtime"
)

// CheckPrivilege fails: interception needs Linux netfilter.
func CheckPrivilege() error {
	return errors.New("needs Linux (iptables and network namespaces); this is " + runtime.GOOS)
}
