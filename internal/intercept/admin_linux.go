//go:build linux

package intercept

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// capNetAdmin is CAP_NET_ADMIN's bit in the capability sets.
const capNetAdmin = 12

// CheckPrivilege says why this process cannot change iptables rules, or
// returns nil: it needs CAP_NET_ADMIN (root has it) in its network
// namespace.
func CheckPrivilege() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		hex, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return fmt.Errorf("reading capabilities: CapEff %q: %w", hex, err)
		}
		if caps&(1<<capNetAdmin) == 0 {
			return fmt.Errorf("needs root (CAP_NET_ADMIN) to change iptables rules; running as uid %d without it", os.Geteuid())
		}
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	return fmt.Errorf("reading capabilities: no CapEff line in /proc/self/status")
}
