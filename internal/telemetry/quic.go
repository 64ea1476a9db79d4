package telemetry

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// QUICConn is a snapshot of one live QUIC connection.
type QUICConn struct {
	Dir         Direction
	Peer        string
	RTT         time.Duration // smoothed RTT
	PacketsLost uint64        // since the connection started
	PacketsSent uint64        // since the connection started
	StreamsOpen int
}

// QUICSource lists the live QUIC connections. It is called at every
// scrape, possibly concurrently with other calls, and must be quick.
type QUICSource func() []QUICConn

// AddQUICSource adds a source of QUIC connection snapshots; the QUIC
// metrics report the union of all sources. Per (direction, peer) the
// collector exports the number of streams open and the packets lost and
// sent summed over that peer's connections, and the mean smoothed RTT of
// those connections (usually exactly one).
//
// Connections come and go between scrapes, so the packet counters are
// kept monotonic: when a peer's sum falls (a connection closed) the
// difference is carried forward, and a peer that disappears keeps its
// total for when it comes back. Increments a connection made between the
// last scrape and its close are lost, so the counters may undercount
// slightly but never go backwards.
func (m *Metrics) AddQUICSource(src QUICSource) {
	if m == nil || src == nil {
		return
	}
	m.quic.srcMu.Lock()
	m.quic.sources = append(m.quic.sources, src)
	m.quic.srcMu.Unlock()
}

type dirPeer struct {
	dir  Direction
	peer string
}

// monotonic turns a sum over live connections into a counter.
type monotonic struct{ base, last uint64 }

func (c *monotonic) update(cur uint64) uint64 {
	if cur < c.last {
		c.base += c.last - cur
	}
	c.last = cur
	return c.base + cur
}

type quicCollector struct {
	peers *limiter

	srcMu   sync.Mutex
	sources []QUICSource

	// collectMu serialises scrapes so that snapshots update the
	// counters in the order they were taken.
	collectMu sync.Mutex
	lost      map[dirPeer]*monotonic
	sent      map[dirPeer]*monotonic

	connsDesc, rttDesc, lostDesc, sentDesc, streamsDesc *prometheus.Desc
}

func newQUICCollector(peers *limiter) *quicCollector {
	return &quicCollector{
		peers: peers,
		lost:  make(map[dirPeer]*monotonic),
		sent:  make(map[dirPeer]*monotonic),
		connsDesc: prometheus.NewDesc("quicmesh_quic_connections_open",
			"QUIC connections currently open.", []string{"direction"}, nil),
		rttDesc: prometheus.NewDesc("quicmesh_quic_smoothed_rtt_seconds",
			"Smoothed round-trip time of the QUIC connections to a peer (mean over its connections).",
			[]string{"direction", "peer"}, nil),
		lostDesc: prometheus.NewDesc("quicmesh_quic_packets_lost_total",
			"QUIC packets declared lost on connections to a peer.", []string{"direction", "peer"}, nil),
		sentDesc: prometheus.NewDesc("quicmesh_quic_packets_sent_total",
			"QUIC packets sent on connections to a peer.", []string{"direction", "peer"}, nil),
		streamsDesc: prometheus.NewDesc("quicmesh_quic_streams_open",
			"QUIC streams currently open on connections to a peer.", []string{"direction", "peer"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (q *quicCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.connsDesc
	ch <- q.rttDesc
	ch <- q.lostDesc
	ch <- q.sentDesc
	ch <- q.streamsDesc
}

type peerAgg struct {
	conns      int
	rtt        time.Duration
	lost, sent uint64
	streams    int
}

// Collect implements prometheus.Collector.
func (q *quicCollector) Collect(ch chan<- prometheus.Metric) {
	q.srcMu.Lock()
	sources := append([]QUICSource(nil), q.sources...)
	q.srcMu.Unlock()

	q.collectMu.Lock()
	defer q.collectMu.Unlock()

	conns := map[Direction]int{Inbound: 0, Outbound: 0}
	agg := make(map[dirPeer]*peerAgg)
	for _, src := range sources {
		for _, c := range src() {
			k := dirPeer{normDir(c.Dir), q.peers.value(c.Peer)}
			conns[k.dir]++
			a := agg[k]
			if a == nil {
				a = &peerAgg{}
				agg[k] = a
			}
			a.conns++
			a.rtt += c.RTT
			a.lost += c.PacketsLost
			a.sent += c.PacketsSent
			if c.StreamsOpen > 0 {
				a.streams += c.StreamsOpen
			}
		}
	}

	// Peers with no connection this round keep their totals (last → 0).
	for k, c := range q.lost {
		if agg[k] == nil {
			c.update(0)
		}
	}
	for k, c := range q.sent {
		if agg[k] == nil {
			c.update(0)
		}
	}

	for dir, n := range conns {
		ch <- prometheus.MustNewConstMetric(q.connsDesc, prometheus.GaugeValue, float64(n), string(dir))
	}
	for k, a := range agg {
		lost, sent := q.lost[k], q.sent[k]
		if lost == nil {
			lost, sent = &monotonic{}, &monotonic{}
			q.lost[k], q.sent[k] = lost, sent
		}
		dir := string(k.dir)
		rtt := a.rtt.Seconds() / float64(a.conns)
		ch <- prometheus.MustNewConstMetric(q.rttDesc, prometheus.GaugeValue, rtt, dir, k.peer)
		ch <- prometheus.MustNewConstMetric(q.lostDesc, prometheus.CounterValue, float64(lost.update(a.lost)), dir, k.peer)
		ch <- prometheus.MustNewConstMetric(q.sentDesc, prometheus.CounterValue, float64(sent.update(a.sent)), dir, k.peer)
		ch <- prometheus.MustNewConstMetric(q.streamsDesc, prometheus.GaugeValue, float64(a.streams), dir, k.peer)
	}
}
