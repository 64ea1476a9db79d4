package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/quicmesh/quicmesh/bench"
)

// checkCaddy proves that the Caddy pair's hop really is HTTP/3: a pair
// with an access log on the inbound side carries a few requests, and the
// log must show "proto":"HTTP/3.0". (The measured pairs run without access
// logs, which would cost them CPU.) It returns the note for the report and
// whether the Caddy targets may run.
func checkCaddy(ctx context.Context, ln *launcher, gen loadGen, httpApp string) (string, bool) {
	logPath := ln.work.path("logs", "caddy-check-access.log")
	if abs, err := filepath.Abs(logPath); err == nil {
		logPath = abs // written into Caddy's configuration
	}
	l := Load{ID: "caddy-check", Proto: bench.ProtoHTTP1}
	lt, err := ln.startPair(ctx, CaddyH3, caddyKind(logPath), "http1", loopback(map[string]string{"http1": httpApp}), "check")
	if err != nil {
		return fmt.Sprintf("Caddy check failed: %v; Caddy targets skipped.", err), false
	}
	defer ln.sup.stop(lt.procs)
	err = gen.ready(ctx, l, lt, false)
	h3, total := countProto(logPath, "HTTP/3.0")
	if err != nil || h3 == 0 {
		return fmt.Sprintf("Caddy HTTP/3 check failed (%d of %d logged requests were HTTP/3.0, %v): Caddy targets skipped.", h3, total, err), false
	}
	return fmt.Sprintf("Caddy pair verified: the inbound Caddy's access log shows \"proto\":\"HTTP/3.0\" for %d of %d requests of a check run (measured runs have no access log).", h3, total), true
}

// countProto counts access-log lines whose "proto" is proto.
func countProto(path, proto string) (match, total int) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Request struct {
				Proto string `json:"proto"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Request.Proto == "" {
			continue
		}
		total++
		if line.Request.Proto == proto {
			match++
		}
	}
	return match, total
}
