package identity

import (
	"fmt"
	"strings"
)

// ParseDNSName checks that name may be a DNS SAN of a workload
// certificate and returns it in lower case (host names compare case-
// insensitively; one spelling keeps certificates and logs consistent).
//
// The name must be an RFC 1123 host name: dot-separated labels of 1 to 63
// letters, digits and hyphens, neither starting nor ending with a hyphen,
// 253 characters at most, without a trailing dot. A last label of digits
// only is refused: the name would read as an IP address, which a client
// verifies against IP SANs, never DNS ones. Wildcards ("*.example.org")
// are refused: a workload certificate names the hosts that one workload
// serves, and a wildcard would let every holder of that key answer for a
// whole zone.
func ParseDNSName(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("identity: empty DNS name")
	case len(name) > 253:
		return "", fmt.Errorf("identity: DNS name %.40q... is %d characters long, more than 253", name, len(name))
	case strings.HasPrefix(name, "*"):
		return "", fmt.Errorf("identity: DNS name %q: wildcards are not issued; name each host the workload serves", name)
	case strings.HasSuffix(name, "."):
		return "", fmt.Errorf("identity: DNS name %q: no trailing dot (certificates carry names without it)", name)
	}
	name = strings.ToLower(name)
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("identity: DNS name %q: %w", name, err)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", fmt.Errorf("identity: DNS name %q: the last label is all digits, as in an IP address (DNS SANs are host names)", name)
	}
	return name, nil
}

// checkLabel checks one lower-case label of an RFC 1123 host name.
func checkLabel(l string) error {
	switch {
	case l == "":
		return fmt.Errorf("empty label")
	case len(l) > 63:
		return fmt.Errorf("label %.20q... is %d characters long, more than 63", l, len(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q has %q: want letters, digits and hyphens", l, rune(c))
		}
	}
	return nil
}

// parseDNSNames checks every name with ParseDNSName and refuses one
// given twice.
func parseDNSNames(names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		p, err := ParseDNSName(n)
		if err != nil {
			return nil, err
		}
		for _, seen := range out {
			if seen == p {
				return nil, fmt.Errorf("identity: DNS name %q given twice", p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
