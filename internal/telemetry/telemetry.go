// Package telemetry records the proxy's "golden metrics" — request volume,
// success rate and latency per service, TCP tunnel traffic, identity
// failures, load shedding and QUIC connection health — on a Prometheus
// registry that the caller injects. Nothing is registered on a package
// global or on prometheus.DefaultRegisterer, so several sidecars (or
// tests) can live in one process.
//
// # Metrics
//
// Every name starts with "quicmesh_"; every metric but the certificate
// expiry and the two inbound handshake admission metrics carries direction ("inbound" or "outbound"):
//
//	quicmesh_request_total{direction,service}                                  counter
//	quicmesh_response_total{direction,peer,service,proto,status_code,grpc_status,classification} counter
//	quicmesh_response_latency_seconds{direction,service,proto,classification}   histogram
//	quicmesh_tcp_open_total{direction,peer,service}                             counter
//	quicmesh_tcp_close_total{direction,peer,service,error}                      counter
//	quicmesh_tcp_open_connections{direction,peer,service}                       gauge
//	quicmesh_tcp_read_bytes_total{direction,peer,service}                       counter
//	quicmesh_tcp_write_bytes_total{direction,peer,service}                      counter
//	quicmesh_handshake_failures_total{direction,reason}                         counter
//	quicmesh_handshakes_in_progress                                             gauge (inbound)
//	quicmesh_handshake_retries_total                                            counter (inbound)
//	quicmesh_identity_cert_expiry_timestamp_seconds                             gauge
//	quicmesh_load_shed_total{direction,reason}                                  counter
//	quicmesh_authz_decisions_total{route,proto,decision,reason}                 counter (inbound)
//	quicmesh_quic_connections_open{direction}                                   gauge (scrape time)
//	quicmesh_quic_smoothed_rtt_seconds{direction,peer}                          gauge (scrape time)
//	quicmesh_quic_packets_lost_total{direction,peer}                            counter (scrape time)
//	quicmesh_quic_packets_sent_total{direction,peer}                            counter (scrape time)
//	quicmesh_quic_streams_open{direction,peer}                                  gauge (scrape time)
//	quicmesh_peer_liveness_failures_total{transport,reason}                     counter (scrape time, outbound)
//	quicmesh_peer_liveness_pings_total{transport}                               counter (scrape time, outbound)
//	quicmesh_peer_liveness_probes_total{transport}                              counter (scrape time, outbound)
//	quicmesh_peer_liveness_starved_total{transport}                             counter (scrape time, outbound)
//
// # Label values and cardinality
//
// Label values come partly from the network (peer addresses, service
// names, grpc-status values), so every label is bounded:
//
//   - An empty value, a value that is not valid UTF-8 or one longer than
//     256 bytes becomes "unknown".
//   - direction is "inbound", "outbound" or "unknown"; classification is
//     "success", "failure" or "unknown"; status_code is the decimal HTTP
//     status for 100–599 and "unknown" otherwise.
//   - Free-form labels keep the first N distinct values they see, for the
//     life of the process; every later new value is reported as
//     "overflow". N is 256 for peer and service (route shares the
//     service limit), 16 for proto and 32 for
//     grpc_status, error and each reason label. The limit is per label
//     dimension and shared by all metrics carrying that label, so a
//     process never exports more than 256 peers or 256 services (plus
//     "unknown" and "overflow"). Admission is first come, first kept:
//     values are never evicted, because their series stay exported.
//   - grpc_status is "none" when the response carried no grpc-status
//     (not gRPC, or the proxy failed before one arrived); error on
//     quicmesh_tcp_close_total is "none" for a clean close.
//
// # Cost
//
// ResponseDone, RequestStarted and TCPOpen look their label tuple up in a
// lock-free cache of curried counters and observers, so once a tuple has
// been seen a call takes a few atomic adds and no allocation; TCPOpen
// allocates only the returned close function (32 bytes), which carries the
// once-only guard. Tuples with an overflowing or invalid value take a
// slower path (a few map lookups) on every call. Every method is a no-op
// on a nil *Metrics, so components can take an optional *Metrics.
//
// TCP byte counters are updated when a connection closes, so a long-lived
// tunnel's traffic shows up at its end.
package telemetry

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Direction says which side of the sidecar traffic came from: Inbound is
// traffic from a peer sidecar to the local app, Outbound from the local
// app to a peer.
type Direction string

// The two directions.
const (
	Inbound  Direction = "inbound"
	Outbound Direction = "outbound"
)

// Special label values.
const (
	// Unknown replaces an empty or invalid label value.
	Unknown = "unknown"
	// Overflow replaces a new label value once its dimension is full.
	Overflow = "overflow"
	// None is grpc_status without a grpc-status and error for a clean close.
	None = "none"
)

// Per-dimension limits on distinct label values (see the package comment).
const (
	maxPeers       = 256
	maxServices    = 256
	maxProtos      = 16
	maxGRPCStatus  = 32
	maxReasons     = 32
	maxErrClasses  = 32
	maxLabelLength = 256
)

// latencyBuckets suit a proxy whose own overhead is sub-millisecond while
// the requests it carries can take seconds.
var latencyBuckets = []float64{
	50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// Metrics records the golden metrics. It is safe for concurrent use. A
// nil *Metrics records nothing.
type Metrics struct {
	requests     *prometheus.CounterVec
	responses    *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	tcpOpen      *prometheus.CounterVec
	tcpClose     *prometheus.CounterVec
	tcpOpenConns *prometheus.GaugeVec
	tcpRead      *prometheus.CounterVec
	tcpWrite     *prometheus.CounterVec
	handshakes   *prometheus.CounterVec
	certExpiry   prometheus.Gauge
	loadShed     *prometheus.CounterVec
	ejections    *prometheus.CounterVec
	retries      *prometheus.CounterVec
	budgetOut    *prometheus.CounterVec
	authz        *prometheus.CounterVec
	quic         *quicCollector
	admission    handshakeAdmission
	transparent  transparentMetrics
	transport    transportMetrics
	liveness     *livenessCollector

	peers, services, protos, grpcStatus *limiter
	handshakeReasons, shedReasons       *limiter
	policyReasons                       *limiter
	authzReasons                        *limiter
	errClasses                          *limiter

	reqCache   cache[reqKey, *reqEntry]
	respCache  cache[respKey, *respEntry]
	authzCache cache[authzKey, prometheus.Counter]
	tcpCache   cache[tcpKey, *tcpEntry]
}

// New creates the metrics and registers them on reg. It panics if reg is
// nil or already holds metrics of the same names (programmer errors).
func New(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		panic("telemetry: New with a nil Registerer")
	}
	m := &Metrics{
		peers:            newLimiter(maxPeers),
		services:         newLimiter(maxServices),
		protos:           newLimiter(maxProtos),
		grpcStatus:       newLimiter(maxGRPCStatus),
		handshakeReasons: newLimiter(maxReasons),
		shedReasons:      newLimiter(maxReasons),
		policyReasons:    newLimiter(maxReasons),
		authzReasons:     newLimiter(maxReasons),
		errClasses:       newLimiter(maxErrClasses),
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_request_total",
		Help: "Requests the proxy started handling (HTTP/1.1, HTTP/2, HTTP/3 and gRPC).",
	}, []string{"direction", "service"})
	m.responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_response_total",
		Help: "Finished responses by peer, protocol, HTTP status, gRPC status and classification (failure: 5xx, grpc-status other than 0, or proxy error).",
	}, []string{"direction", "peer", "service", "proto", "status_code", "grpc_status", "classification"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "quicmesh_response_latency_seconds",
		Help:    "Time from the start of a request until its response finished, as seen by the proxy.",
		Buckets: latencyBuckets,
	}, []string{"direction", "service", "proto", "classification"})
	tcpLabels := []string{"direction", "peer", "service"}
	m.tcpOpen = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_tcp_open_total",
		Help: "Tunnelled TCP connections opened.",
	}, tcpLabels)
	m.tcpClose = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_tcp_close_total",
		Help: `Tunnelled TCP connections closed, by error class ("none" for a clean close).`,
	}, []string{"direction", "peer", "service", "error"})
	m.tcpOpenConns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "quicmesh_tcp_open_connections",
		Help: "Tunnelled TCP connections currently open.",
	}, tcpLabels)
	m.tcpRead = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_tcp_read_bytes_total",
		Help: "Bytes read on tunnelled TCP connections, counted when a connection closes.",
	}, tcpLabels)
	m.tcpWrite = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_tcp_write_bytes_total",
		Help: "Bytes written on tunnelled TCP connections, counted when a connection closes.",
	}, tcpLabels)
	m.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_handshake_failures_total",
		Help: "mTLS/identity handshake failures by reason (untrusted, expired, wrong_id, no_certificate, bad_id, other, ...).",
	}, []string{"direction", "reason"})
	m.certExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "quicmesh_identity_cert_expiry_timestamp_seconds",
		Help: "Expiry (NotAfter) of the current workload certificate, in seconds since the Unix epoch.",
	})
	m.loadShed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_load_shed_total",
		Help: "Requests and streams refused because the proxy was overloaded, by reason.",
	}, []string{"direction", "reason"})
	m.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_endpoint_ejections_total",
		Help: "Endpoints failure accrual took out of load balancing, by reason (consecutive_failures, probe_failed, or the transport's: unresponsive, a handshake reason).",
	}, []string{"direction", "reason"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_retries_total",
		Help: "Requests sent again, by reason (unprocessed: the peer provably did not see it; conn_dead: an idempotent request on a connection that died; status: a configured retryable status, within the retry budget).",
	}, []string{"direction", "service", "reason"})
	m.budgetOut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_retry_budget_exhausted_total",
		Help: "Retryable responses passed to the app unretried because the service's retry budget was spent.",
	}, []string{"direction", "service"})
	m.authz = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_authz_decisions_total",
		Help: "Inbound authorization decisions, per route, protocol (http, grpc, tcp), decision (allow, deny) and reason.",
	}, []string{"route", "proto", "decision", "reason"})
	m.quic = newQUICCollector(m.peers)

	reg.MustRegister(m.requests, m.responses, m.latency,
		m.tcpOpen, m.tcpClose, m.tcpOpenConns, m.tcpRead, m.tcpWrite,
		m.handshakes, m.certExpiry, m.loadShed, m.ejections, m.retries, m.budgetOut, m.authz, m.quic)
	m.admission = newHandshakeAdmission(reg)
	m.transparent = newTransparentMetrics(reg)
	m.transport = newTransportMetrics(reg)
	m.liveness = newLivenessCollector(reg)
	return m
}

// --- requests and responses ---

type reqKey struct {
	dir     Direction
	service string
}

type reqEntry struct{ requests prometheus.Counter }

// RequestStarted counts one request as it starts.
func (m *Metrics) RequestStarted(dir Direction, service string) {
	if m == nil {
		return
	}
	k := reqKey{dir, service}
	e, ok := m.reqCache.load(k)
	if !ok {
		e = m.reqSlow(k)
	}
	e.requests.Inc()
}

func (m *Metrics) reqSlow(raw reqKey) *reqEntry {
	n := reqKey{normDir(raw.dir), m.services.value(raw.service)}
	return m.reqCache.create(n, func() *reqEntry {
		return &reqEntry{requests: m.requests.WithLabelValues(string(n.dir), n.service)}
	})
}

type respKey struct {
	dir                  Direction
	peer, service, proto string
	status               int
	grpcStatus, class    string
}

type respEntry struct {
	responses prometheus.Counter
	latency   prometheus.Observer
}

// ResponseDone records one finished response: proto is "http1", "h2",
// "h3" or "grpc"; status the HTTP status; grpcStatus the grpc-status
// value or "" when there is none; class "success" or "failure" (5xx,
// grpc-status other than 0, or a proxy error); d the time since the
// request started.
func (m *Metrics) ResponseDone(dir Direction, peer, service, proto string, status int, grpcStatus string, class string, d time.Duration) {
	if m == nil {
		return
	}
	k := respKey{dir, peer, service, proto, status, grpcStatus, class}
	e, ok := m.respCache.load(k)
	if !ok {
		e = m.respSlow(k)
	}
	e.responses.Inc()
	if d < 0 {
		d = 0
	}
	e.latency.Observe(d.Seconds())
}

func (m *Metrics) respSlow(raw respKey) *respEntry {
	n := respKey{
		dir:     normDir(raw.dir),
		peer:    m.peers.value(raw.peer),
		service: m.services.value(raw.service),
		proto:   m.protos.value(raw.proto),
		status:  raw.status,
		class:   normClass(raw.class),
	}
	if raw.grpcStatus != "" { // "" stays "" in the key and is exported as "none"
		n.grpcStatus = m.grpcStatus.value(raw.grpcStatus)
	}
	if n.status < 100 || n.status > 599 {
		n.status = 0
	}
	return m.respCache.create(n, func() *respEntry {
		return &respEntry{
			responses: m.responses.WithLabelValues(string(n.dir), n.peer, n.service, n.proto,
				statusLabel(n.status), orNone(n.grpcStatus), n.class),
			latency: m.latency.WithLabelValues(string(n.dir), n.service, n.proto, n.class),
		}
	})
}

// --- TCP ---

type tcpKey struct {
	dir           Direction
	peer, service string
}

type tcpEntry struct {
	m         *Metrics
	opened    prometheus.Counter
	openConns prometheus.Gauge
	read      prometheus.Counter
	written   prometheus.Counter
	n         tcpKey                     // normalised labels
	closes    cache[string, *closeEntry] // by error class
}

type closeEntry struct{ closed prometheus.Counter }

// tcpConn is the state of one open connection; its done method is what
// TCPOpen returns.
type tcpConn struct {
	e    *tcpEntry
	done atomic.Bool
}

func noopClose(int64, int64, string) {}

// TCPOpen counts a tunnelled TCP connection as open and returns the
// function to call once when it closes, with the bytes read and written
// and an error class ("" for a clean close). Calls after the first are
// ignored.
func (m *Metrics) TCPOpen(dir Direction, peer, service string) func(bytesRead, bytesWritten int64, errClass string) {
	if m == nil {
		return noopClose
	}
	k := tcpKey{dir, peer, service}
	e, ok := m.tcpCache.load(k)
	if !ok {
		e = m.tcpSlow(k)
	}
	e.opened.Inc()
	e.openConns.Inc()
	c := &tcpConn{e: e}
	return c.close
}

func (m *Metrics) tcpSlow(raw tcpKey) *tcpEntry {
	n := tcpKey{normDir(raw.dir), m.peers.value(raw.peer), m.services.value(raw.service)}
	return m.tcpCache.create(n, func() *tcpEntry {
		lv := []string{string(n.dir), n.peer, n.service}
		return &tcpEntry{
			m:         m,
			opened:    m.tcpOpen.WithLabelValues(lv...),
			openConns: m.tcpOpenConns.WithLabelValues(lv...),
			read:      m.tcpRead.WithLabelValues(lv...),
			written:   m.tcpWrite.WithLabelValues(lv...),
			n:         n,
		}
	})
}

func (c *tcpConn) close(bytesRead, bytesWritten int64, errClass string) {
	if c.done.Swap(true) {
		return
	}
	e := c.e
	e.openConns.Dec()
	if bytesRead > 0 {
		e.read.Add(float64(bytesRead))
	}
	if bytesWritten > 0 {
		e.written.Add(float64(bytesWritten))
	}
	ce, ok := e.closes.load(errClass)
	if !ok {
		ce = e.closeSlow(errClass)
	}
	ce.closed.Inc()
}

func (e *tcpEntry) closeSlow(raw string) *closeEntry {
	n := "" // "" stays "" in the key and is exported as "none"
	if raw != "" {
		n = e.m.errClasses.value(raw)
	}
	return e.closes.create(n, func() *closeEntry {
		return &closeEntry{closed: e.m.tcpClose.WithLabelValues(string(e.n.dir), e.n.peer, e.n.service, orNone(n))}
	})
}

// --- identity and load shedding ---

// HandshakeFailed counts one failed mTLS/identity handshake; reason is
// one of the identity.Reason* strings ("untrusted", "expired",
// "wrong_id", "no_certificate", "bad_id", "other", ...) or a transport
// one ("overloaded", "peer_refused", "timeout", "not_accepted").
func (m *Metrics) HandshakeFailed(dir Direction, reason string) {
	if m == nil {
		return
	}
	m.handshakes.WithLabelValues(string(normDir(dir)), m.handshakeReasons.value(reason)).Inc()
}

// SetCertExpiry records when the current workload certificate expires.
// A zero t sets the gauge to 0 (no certificate).
func (m *Metrics) SetCertExpiry(t time.Time) {
	if m == nil {
		return
	}
	if t.IsZero() {
		m.certExpiry.Set(0)
		return
	}
	m.certExpiry.Set(float64(t.UnixNano()) / 1e9)
}

// LoadShed counts one request or stream refused for overload.
func (m *Metrics) LoadShed(dir Direction, reason string) {
	if m == nil {
		return
	}
	m.loadShed.WithLabelValues(string(normDir(dir)), m.shedReasons.value(reason)).Inc()
}

// --- resilience ---

// Ejected counts one endpoint failure accrual took out of balancing.
func (m *Metrics) Ejected(dir Direction, reason string) {
	if m == nil {
		return
	}
	m.ejections.WithLabelValues(string(normDir(dir)), m.policyReasons.value(reason)).Inc()
}

// Retried counts one request sent again, by reason.
func (m *Metrics) Retried(dir Direction, service, reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(string(normDir(dir)), m.services.value(service), m.policyReasons.value(reason)).Inc()
}

// RetryBudgetExhausted counts one retryable response the app got because
// the service's retry budget was spent.
func (m *Metrics) RetryBudgetExhausted(dir Direction, service string) {
	if m == nil {
		return
	}
	m.budgetOut.WithLabelValues(string(normDir(dir)), m.services.value(service)).Inc()
}

type authzKey struct {
	route, proto, reason string
	allow                bool
}

// AuthzDecision counts one inbound authorization decision: whether a
// request or tunnel (proto "http", "grpc" or "tcp") to route was allowed,
// and why (a fixed set of reasons, see proxy/authz). The caller's
// identity is not a label: it is unbounded; the deny logs carry it.
func (m *Metrics) AuthzDecision(route, proto string, allow bool, reason string) {
	if m == nil {
		return
	}
	k := authzKey{route, proto, reason, allow}
	c, ok := m.authzCache.load(k)
	if !ok {
		c = m.authzSlow(k)
	}
	c.Inc()
}

func (m *Metrics) authzSlow(raw authzKey) prometheus.Counter {
	n := authzKey{m.services.value(raw.route), m.protos.value(raw.proto), m.authzReasons.value(raw.reason), raw.allow}
	return m.authzCache.create(n, func() prometheus.Counter {
		decision := "deny"
		if n.allow {
			decision = "allow"
		}
		return m.authz.WithLabelValues(n.route, n.proto, decision, n.reason)
	})
}

// --- label normalisation ---

func normDir(d Direction) Direction {
	switch d {
	case Inbound, Outbound:
		return d
	}
	return Unknown
}

func normClass(c string) string {
	switch c {
	case "success":
		return "success"
	case "failure":
		return "failure"
	}
	return Unknown
}

// statusLabels holds the decimal strings of 100–599 so that formatting a
// status never allocates.
var statusLabels = func() (s [600]string) {
	for i := 100; i < len(s); i++ {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func statusLabel(code int) string {
	if code < 100 || code >= len(statusLabels) {
		return Unknown
	}
	return statusLabels[code]
}

func orNone(v string) string {
	if v == "" {
		return None
	}
	return v
}

func validLabel(v string) bool {
	return v != "" && len(v) <= maxLabelLength && utf8.ValidString(v)
}

// limiter admits the first max distinct values of one label dimension and
// maps every later one to Overflow. It is consulted only when a label
// tuple misses the cache, so a mutex is cheap enough.
type limiter struct {
	max  int
	mu   sync.RWMutex
	seen map[string]string // value → the limiter's own copy of it
}

func newLimiter(max int) *limiter {
	return &limiter{max: max, seen: make(map[string]string)}
}

// value returns the label value to export for v: v itself (as a private
// copy, so callers' buffers are not retained), Unknown or Overflow.
func (l *limiter) value(v string) string {
	if !validLabel(v) {
		return Unknown
	}
	if v == Unknown || v == Overflow {
		return v
	}
	l.mu.RLock()
	c, ok := l.seen[v]
	l.mu.RUnlock()
	if ok {
		return c
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.seen[v]; ok {
		return c
	}
	if len(l.seen) >= l.max {
		return Overflow
	}
	c = strings.Clone(v)
	l.seen[c] = c
	return c
}

// cache maps label tuples to curried metrics. Lookups take no lock and
// allocate nothing (sync.Map does not let a struct key escape on Load).
//
// Entries are stored only under normalised tuples (built from the
// limiters' own copies of the strings), so the cache holds at most one
// entry per exported series and retains no caller buffers. A caller's
// tuple hits the cache directly when it normalises to itself — every
// value admitted, nothing empty or out of range — which is the steady
// state. A tuple holding an overflowing or invalid value is normalised
// again on every call (a few map lookups) and found under its normalised
// key, so memory stays bounded whatever the input.
type cache[K comparable, V any] struct{ m sync.Map }

func (c *cache[K, V]) load(k K) (V, bool) {
	v, ok := c.m.Load(k)
	if !ok {
		var zero V
		return zero, false
	}
	return v.(V), true
}

// create returns the entry for the normalised key n, creating it with mk
// if needed.
func (c *cache[K, V]) create(n K, mk func() V) V {
	if v, ok := c.load(n); ok {
		return v
	}
	actual, _ := c.m.LoadOrStore(n, mk())
	return actual.(V)
}
