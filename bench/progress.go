package bench

import (
	"fmt"
	"io"
	"os"
	"time"
)

// IsTerminal reports whether w is a character device (a terminal), using
// only os.File.Stat.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progressLoop writes a carriage-return-updated status line to cfg.Progress
// once a second until stop is closed, then clears it.
func progressLoop(cfg Config, stats []*workerStats, stop <-chan struct{}) {
	w := cfg.Progress
	start := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	lastT := start
	for {
		select {
		case <-stop:
			fmt.Fprint(w, "\r\033[K")
			return
		case now := <-t.C:
			var n, errs int64
			for _, st := range stats {
				n += st.live.Load()
				errs += st.liveErr.Load()
			}
			el := now.Sub(start)
			phase := "run"
			if el < cfg.Warmup {
				phase = "warmup"
			}
			rps := float64(n-last) / now.Sub(lastT).Seconds()
			last, lastT = n, now
			fmt.Fprintf(w, "\r\033[K[%s %s/%s] %d requests, %.0f req/s, %d errors",
				phase, el.Round(time.Second), (cfg.Warmup + cfg.Duration).Round(time.Second), n, rps, errs)
		}
	}
}
