package scenario

import (
	"os"
	"path/filepath"
)

// workDir is the runner's scratch space, OUT/work: logs, configuration
// files, certificates and Caddy's home.
type workDir string

// Sub-directories of the output directory the runner writes.
var outDirs = []string{"runs", "work/logs", "work/conf", "work/qm", "work/peer", "work/caddy-home"}

// prepareOut empties the runner's own parts of outDir (a previous run's
// CA would make "quicmesh ca init" refuse) and creates them again.
func prepareOut(outDir string) (workDir, error) {
	w := workDir(filepath.Join(outDir, "work"))
	for _, d := range []string{string(w), filepath.Join(outDir, "runs")} {
		if err := os.RemoveAll(d); err != nil {
			return "", err
		}
	}
	for _, d := range outDirs {
		if err := os.MkdirAll(filepath.Join(outDir, d), 0o755); err != nil {
			return "", err
		}
	}
	return w, nil
}

func (w workDir) path(parts ...string) string {
	return filepath.Join(append([]string{string(w)}, parts...)...)
}

// writeConf writes a configuration file under conf/ and returns its path.
func (w workDir) writeConf(name, text string) (string, error) {
	p := w.path("conf", name)
	return p, os.WriteFile(p, []byte(text), 0o644)
}

// caddyEnv points Caddy's home and data at the work directory, so that it
// neither reads nor writes the user's.
func (w workDir) caddyEnv() []string {
	home := w.path("caddy-home")
	return []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
}
