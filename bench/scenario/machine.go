package scenario

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// describeMachine says where the run happens: CPU, memory, kernel, Go,
// the commit, and the version of every peer binary in opt.
func describeMachine(ctx context.Context, opt Options) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemMiB = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	out := func(argv ...string) string {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, _ := exec.CommandContext(c, argv[0], argv[1:]...).CombinedOutput()
		return strings.TrimSpace(string(b))
	}
	m.Commit = out("git", "rev-parse", "--short", "HEAD")
	if opt.Caddy != "" {
		m.Versions["caddy"] = CaddyModuleVersion(out("go", "version", "-m", opt.Caddy))
	}
	if opt.HAProxy != "" {
		m.Versions["haproxy"] = firstLine(out(opt.HAProxy, "-v"))
	}
	if opt.Stunnel != "" {
		if v := stunnelVersion(out(opt.Stunnel, "-version")); v != "" {
			m.Versions["stunnel"] = v
		}
	}
	if opt.Fortio != "" {
		m.Versions["fortio"] = firstLine(out(opt.Fortio, "version"))
	}
	if opt.OpenSSL != "" {
		m.Versions["openssl"] = firstLine(out(opt.OpenSSL, "version"))
	}
	return m
}

// CaddyModuleVersion extracts Caddy's module version from "go version -m"
// output ("caddy version" prints "unknown" for a go-installed binary).
func CaddyModuleVersion(goVersionM string) string {
	for _, l := range strings.Split(goVersionM, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == "mod" && f[1] == "github.com/caddyserver/caddy/v2" {
			return f[2]
		}
	}
	return "unknown"
}

// stunnelVersion picks the version line out of "stunnel -version", which
// prints its build settings around it ("" if there is none).
func stunnelVersion(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "stunnel ") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}
