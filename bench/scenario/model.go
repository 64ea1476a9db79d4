package scenario

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

// Target names: the ways a request can travel from the load generator to
// the echo app.
const (
	Direct   = "direct"   // straight to the app
	Quicmesh = "quicmesh" // two quicmesh sidecars, default transport (auto: mTLS QUIC; TCP only for a peer QUIC cannot reach)
	// The same pair pinned to the TCP fallback transport (--transport
	// tcp): HTTP/2 over TLS 1.3 over TCP between the sidecars.
	QuicmeshTCP = "quicmesh-tcp"
	CaddyH3     = "caddy-h3"   // two Caddy 2.11 reverse proxies, HTTP/3 mTLS between them
	HAProxyH2   = "haproxy-h2" // two haproxy, HTTP/2 (or TCP) over mTLS between them
	Stunnel     = "stunnel"    // two stunnel, TLS over TCP between them
)

// Targets lists every target in report order.
var Targets = []string{Direct, Quicmesh, QuicmeshTCP, CaddyH3, HAProxyH2, Stunnel}

// TargetHop says what travels between the two sidecars of target when it
// carries app ("http1", "grpc" or "tcp").
func TargetHop(target, app string) string {
	switch target {
	case Direct:
		return "no proxy"
	case Quicmesh:
		if app == "tcp" {
			return "mTLS QUIC, one stream per TCP connection"
		}
		return "mTLS QUIC, HTTP/3"
	case QuicmeshTCP:
		if app == "tcp" {
			return "HTTP/2 mTLS over TCP, one CONNECT stream per TCP connection"
		}
		return "HTTP/2 mTLS over TCP (quicmesh's fallback transport)"
	case CaddyH3:
		return "HTTP/3 mTLS"
	case HAProxyH2:
		if app == "tcp" {
			return "TLS over TCP (haproxy TCP mode)"
		}
		return "HTTP/2 mTLS over TCP"
	case Stunnel:
		return "TLS over TCP, one per app connection"
	}
	return ""
}

// Load groups.
const (
	GroupLoopback   = "loopback"   // everything on 127.0.0.1
	GroupLossy      = "lossy"      // two network namespaces joined by a veth pair
	GroupCrossCheck = "crosscheck" // fortio vs quicmesh bench
)

// Load is one kind of load applied to a set of targets.
type Load struct {
	ID          string        `json:"id"`
	Title       string        `json:"title"`
	Group       string        `json:"group"`
	Proto       string        `json:"proto"`
	Rate        float64       `json:"rate"` // 0 = closed loop
	Concurrency int           `json:"concurrency"`
	Connections int           `json:"connections,omitempty"`
	Payload     int           `json:"payload,omitempty"`
	Duration    time.Duration `json:"duration"`
	Warmup      time.Duration `json:"warmup"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	Targets     []string      `json:"targets"`
	// CrossRounds, for a cross-check load, overrides Plan.CrossRounds
	// (when the plan runs cross-checks at all).
	CrossRounds int `json:"cross_rounds,omitempty"`
}

// Open reports whether l is an open-loop (fixed rate) load.
func (l Load) Open() bool { return l.Rate > 0 }

// App is the kind of echo app a load needs: http1, grpc or tcp.
func (l Load) App() string {
	switch l.Proto {
	case bench.ProtoHTTP1, bench.ProtoH2C:
		return "http1"
	case bench.ProtoGRPC, bench.ProtoGRPCStream:
		return "grpc"
	default:
		return "tcp"
	}
}

// TargetURL turns a front address into the load generator's target.
func (l Load) TargetURL(addr string) string {
	if l.App() == "http1" {
		return "http://" + addr + "/"
	}
	return addr
}

// BenchArgs returns the "quicmesh bench" arguments (after the subcommand)
// that apply l to the front address addr, writing JSON to jsonPath and
// sampling procs.
func (l Load) BenchArgs(addr, jsonPath string, procs []bench.Proc) []string {
	a := []string{"--proto", l.Proto, "--target", l.TargetURL(addr)}
	if l.Rate > 0 {
		a = append(a, "--rate", strconv.FormatFloat(l.Rate, 'f', -1, 64))
	}
	a = append(a, "--concurrency", strconv.Itoa(l.Concurrency))
	if l.Connections > 0 {
		a = append(a, "--connections", strconv.Itoa(l.Connections))
	}
	if l.Payload > 0 {
		a = append(a, "--payload", strconv.Itoa(l.Payload))
	}
	a = append(a, "--duration", l.Duration.String(), "--warmup", l.Warmup.String())
	if l.Timeout > 0 {
		a = append(a, "--timeout", l.Timeout.String())
	}
	a = append(a, "--json", jsonPath, "--no-progress", "--quiet")
	for _, p := range procs {
		a = append(a, "--pid", fmt.Sprintf("%s=%d", p.Name, p.PID))
	}
	return a
}

// Describe is a short human description of the load model.
func (l Load) Describe() string {
	var b strings.Builder
	if l.Open() {
		fmt.Fprintf(&b, "open loop at %s req/s (uniform pacing), %d workers", fmtNum(l.Rate), l.Concurrency)
	} else {
		fmt.Fprintf(&b, "closed loop, %d workers", l.Concurrency)
	}
	if l.Connections > 0 {
		fmt.Fprintf(&b, " over %d connections", l.Connections)
	}
	if l.Payload > 0 {
		fmt.Fprintf(&b, ", %d B payload", l.Payload)
	}
	fmt.Fprintf(&b, ", %s measured after %s warmup", l.Duration, l.Warmup)
	return b.String()
}

// Cond is a network condition of the lossy link.
type Cond struct {
	Name    string        `json:"name"`
	LossPct float64       `json:"loss_pct"` // random loss in each direction, percent
	Delay   time.Duration `json:"delay"`    // added one-way delay (0 = none)
}

// Run is one measured run: a load applied to a target in one round.
type Run struct {
	Load    string   `json:"load"`
	Cond    string   `json:"cond,omitempty"`
	Target  string   `json:"target"`
	Round   int      `json:"round"`
	Tool    string   `json:"tool,omitempty"` // "quicmesh-bench" (default) or "fortio"
	Command string   `json:"command"`
	Procs   []string `json:"procs,omitempty"` // names of the sampled proxy processes
	// Result is quicmesh bench's result (Tool quicmesh-bench).
	Result *bench.Result `json:"result,omitempty"`
	// Fortio is fortio's result, reduced (Tool fortio).
	Fortio *FortioResult `json:"fortio,omitempty"`
	Error  string        `json:"error,omitempty"`
	// ToolCPUSeconds is the user + system CPU time of the load
	// generator's whole process (fortio: from its exit status; quicmesh
	// bench reports its own over the measured window in Result).
	ToolCPUSeconds float64 `json:"tool_cpu_seconds,omitempty"`
	// OtherCores is the CPU (in cores) that processes the runner did not
	// start used while this run's load generator ran: how busy the shared
	// machine was with other work.
	OtherCores float64 `json:"other_cpu_cores"`
}

// Tool names for Run.Tool.
const (
	ToolQuicmesh = "quicmesh-bench"
	ToolFortio   = "fortio"
)

// Machine describes where the run happened.
type Machine struct {
	CPUs     int               `json:"cpus"`
	CPUModel string            `json:"cpu_model"`
	MemMiB   int               `json:"mem_mib"`
	Kernel   string            `json:"kernel"`
	Go       string            `json:"go"`
	Commit   string            `json:"commit"`
	Versions map[string]string `json:"versions"` // peer name -> version line
}

// Results is everything one invocation of the runner measured; it is
// written to bench/out/results.json and is the input of the reports.
type Results struct {
	Schema   string    `json:"schema"`
	Command  string    `json:"command"`
	Quick    bool      `json:"quick"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Loads    []Load    `json:"loads"`
	Conds    []Cond    `json:"conds,omitempty"`
	Runs     []Run     `json:"runs"`
	// LinkStats are the lossy link's counters per (load, condition).
	LinkStats []LinkStat `json:"link_stats,omitempty"`
	// Notes are facts the reader must know: skipped targets and why,
	// what could not be emulated, checks made on the peers.
	Notes []string `json:"notes,omitempty"`
}

// LinkStat counts what the lossy link did during one (load, condition):
// packets dropped by the loss rules (both namespaces) and, on the
// emulated link, packets it forwarded and dropped for a full queue.
type LinkStat struct {
	Load          string `json:"load"`
	Cond          string `json:"cond"`
	LossDrops     uint64 `json:"loss_drops"`
	EmuForwarded  uint64 `json:"emu_forwarded,omitempty"`
	EmuQueueDrops uint64 `json:"emu_queue_drops,omitempty"`
}

// ResultsSchema identifies the Results JSON.
const ResultsSchema = "quicmesh.scenarios/v1"

// LoadByID returns the load with that ID.
func (r *Results) LoadByID(id string) (Load, bool) {
	for _, l := range r.Loads {
		if l.ID == id {
			return l, true
		}
	}
	return Load{}, false
}

func fmtNum(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
