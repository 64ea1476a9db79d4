package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
	"github.com/quicmesh/quicmesh/bench/scenario"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport"
)

// usage is the gateway process's CPU time and memory now.
func (m *mesh) usage() (procfs.Usage, error) { return procfs.ReadUsage("/proc", m.gateway.PID()) }

// gatewayMetric reads one sample of the gateway's /metrics: the line of
// metric name whose labels contain label ("" for a metric without).
func (m *mesh) gatewayMetric(name, label string) (float64, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + m.gwAdmin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') || !strings.Contains(rest, label) {
			continue
		}
		f := strings.Fields(rest)
		return strconv.ParseFloat(f[len(f)-1], 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no %s{%s} in the gateway's /metrics", name, label)
}

// FlowStep is the gateway with Flows connections through it.
type FlowStep struct {
	Flows int `json:"flows"`
	// GatewayFlows is quicmesh_gateway_flows{state="relayed"}.
	GatewayFlows float64 `json:"gateway_flows"`
	RSSKiB       uint64  `json:"gateway_rss_kib"`
	// HeapInuse is the gateway's go_memstats_heap_inuse_bytes.
	HeapInuse  float64 `json:"gateway_heap_inuse_bytes"`
	Goroutines float64 `json:"gateway_goroutines"`
	LoadAvg    string  `json:"loadavg"`
}

// FlowsResult is the flows phase.
type FlowsResult struct {
	Steps []FlowStep `json:"steps"`
	// PerFlowRSSKiB and PerFlowHeapKiB are the slopes from the first
	// step (no flow) to the last one sampled.
	PerFlowRSSKiB  float64 `json:"per_flow_rss_kib"`
	PerFlowHeapKiB float64 `json:"per_flow_heap_kib"`
	DialSeconds    float64 `json:"dial_seconds"`
	// DialRetries counts dials that failed and were tried again.
	DialRetries int64 `json:"dial_retries"`
}

// flowHolder is one simulated sidecar: its own UDP socket, one QUIC
// connection through the gateway, one tunnel held open on it.
type flowHolder struct {
	ep   *transport.Endpoint
	pool *transport.Pool
	str  *transport.Stream
}

func (h *flowHolder) close() {
	if h.str != nil {
		h.str.Close()
	}
	if h.pool != nil {
		h.pool.Close()
	}
	if h.ep != nil {
		h.ep.Close()
	}
}

// flows opens n connections through the gateway in four steps and
// samples the gateway after each.
func (m *mesh) flows(ctx context.Context, n int, log *slog.Logger) (*FlowsResult, error) {
	prov, err := identity.NewFileProvider(m.clientStem+".crt", m.clientStem+".key", filepath.Join(filepath.Dir(m.clientStem), "bundle.crt"), identity.FileOptions{})
	if err != nil {
		return nil, err
	}
	defer prov.Close()
	data, err := os.ReadFile(m.importFile)
	if err != nil {
		return nil, err
	}
	svcs, err := static.ParseServices(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.importFile, err)
	}
	svc := scenario.QuicmeshService("tcp")
	eps := svcs[svc].Endpoints
	if len(eps) != 1 {
		return nil, fmt.Errorf("%s lists %d endpoints of %s, want 1", m.importFile, len(eps), svc)
	}
	addr := eps[0].DialAddr()
	want, err := identity.ParseID(serverID)
	if err != nil {
		return nil, err
	}

	var (
		mu      sync.Mutex
		holders []*flowHolder
	)
	defer func() {
		for _, h := range holders {
			h.close()
		}
	}()
	// The simulated sidecars are patient: hundreds of connections'
	// keep-alives and handshakes share this process with the echo apps
	// on a machine whose load may be 10-40, where the default 1 s dial
	// timeout fails dials that are only slow. A failed dial is retried
	// on a new socket (and counted): the figures are the gateway's.
	limits := transport.Limits{DialTimeout: 5 * time.Second, HandshakeTimeout: 10 * time.Second}
	var retries atomic.Int64
	openOnce := func() error {
		h := &flowHolder{}
		var err error
		if h.ep, err = transport.NewDialer("127.0.0.1:0", transport.Config{Identity: prov, Limits: limits}); err != nil {
			return err
		}
		mu.Lock()
		holders = append(holders, h)
		mu.Unlock()
		h.pool = transport.NewPool(h.ep)
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pc, err := h.pool.Get(dctx, addr, want)
		if err != nil {
			return err
		}
		if h.str, err = pc.OpenTunnel(dctx, svc); err != nil {
			return err
		}
		// One echo: the tunnel reached west's app through the gateway.
		msg := []byte("flow")
		if _, err := h.str.Write(msg); err != nil {
			return err
		}
		h.str.SetReadDeadline(time.Now().Add(30 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(h.str, got); err != nil {
			return fmt.Errorf("echo through the tunnel: %w", err)
		}
		return nil
	}
	open := func() error {
		var errs []error
		for range 3 {
			err := openOnce()
			if err == nil {
				return nil
			}
			errs = append(errs, err)
			retries.Add(1)
		}
		return errors.Join(errs...)
	}

	res := &FlowsResult{}
	sample := func(flows int) error {
		// Let the handshakes' garbage be collected and the keep-alives
		// settle before reading.
		time.Sleep(2 * time.Second)
		u, err := m.usage()
		if err != nil {
			return err
		}
		st := FlowStep{Flows: flows, RSSKiB: u.RSSKiB, LoadAvg: loadAvg()}
		var errs []error
		var e error
		st.GatewayFlows, e = m.gatewayMetric("quicmesh_gateway_flows", `state="relayed"`)
		errs = append(errs, e)
		st.HeapInuse, e = m.gatewayMetric("go_memstats_heap_inuse_bytes", "")
		errs = append(errs, e)
		st.Goroutines, e = m.gatewayMetric("go_goroutines", "")
		errs = append(errs, e)
		res.Steps = append(res.Steps, st)
		if first := res.Steps[0]; flows > 0 {
			// Kept up to date: a later step that fails leaves these.
			res.PerFlowRSSKiB = float64(int64(st.RSSKiB)-int64(first.RSSKiB)) / float64(flows)
			res.PerFlowHeapKiB = (st.HeapInuse - first.HeapInuse) / 1024 / float64(flows)
		}
		log.Info("flows", "held", flows, "gateway_flows", st.GatewayFlows, "rss_kib", st.RSSKiB, "heap_inuse", st.HeapInuse)
		return errors.Join(errs...)
	}
	// The gateway client sidecar's connection is a flow too.
	g, err := m.gatewayMetric("quicmesh_gateway_flows", `state="relayed"`)
	if err != nil {
		return nil, err
	}
	base := int(g)
	if err := sample(0); err != nil {
		return res, err
	}
	start := time.Now()
	const workers = 8
	for step := 1; step <= 4; step++ {
		target := n * step / 4
		work := make(chan struct{})
		errc := make(chan error, workers)
		for range workers {
			go func() {
				var first error
				for range work {
					if err := open(); err != nil && first == nil {
						first = err
					}
				}
				errc <- first
			}()
		}
		for range target - len(holders) {
			work <- struct{}{}
		}
		close(work)
		var errs []error
		for range workers {
			errs = append(errs, <-errc)
		}
		if err := errors.Join(errs...); err != nil {
			return res, fmt.Errorf("opening flows through the gateway: %w", err)
		}
		if err := sample(target); err != nil {
			return res, err
		}
		res.DialRetries = retries.Load()
		// A dial that failed half-way may leave a flow in the gateway
		// until its idle timeout: more flows than connections is that.
		if got := res.Steps[len(res.Steps)-1].GatewayFlows; int(got) < base+target {
			return res, fmt.Errorf("the gateway holds %v flows with %d connections open through it (+%d of the sidecars)", got, target, base)
		}
	}
	res.DialSeconds = time.Since(start).Seconds()
	return res, nil
}
