package intercept

import (
	"errors"
	"fmt"
	"os/exec"

	"github.com/coreos/go-iptables/iptables"
)

// lockWaitSeconds is how long a command waits for the xtables lock that
// another program (kubelet, a CNI plugin) may hold.
const lockWaitSeconds = 10

// New returns the iptables of one family in the calling thread's network
// namespace. A missing binary is an error that says which package has it.
func New(fam Family) (Tables, error) {
	proto := iptables.ProtocolIPv4
	if fam == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	t, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockWaitSeconds))
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("%s not found in PATH (install the iptables package, e.g. apt-get install -y iptables)", fam.Command())
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fam.Command(), err)
	}
	return t, nil
}
