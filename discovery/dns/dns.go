// Package dns is a discovery.Resolver that finds a service's peer
// sidecars through DNS: SRV records give their addresses and ports, TXT
// records the SPIFFE ID each must present.
//
// # Names
//
// Service S in the configured zone Z is looked up as
//
//	_quicmesh._udp.S.Z.   SRV  priority weight port target
//
// (quicmesh's peer-to-peer transport is QUIC, hence _udp). Each SRV
// target's A and AAAA records give the peer sidecars' addresses; every
// address becomes one endpoint at the SRV record's port. Names are never
// completed with the search list of /etc/resolv.conf: Z is configured
// explicitly, so that a service name cannot land in an unintended domain.
//
// # Identity
//
// An endpoint's expected SPIFFE ID is declared by a TXT record whose text
// is "spiffe=" followed by the canonical ID:
//
//	a.echo.Z.               TXT  "spiffe=spiffe://example.org/ns/prod/sa/echo"
//	_quicmesh._udp.echo.Z.  TXT  "spiffe=spiffe://example.org/ns/prod/sa/echo"
//
// The record at the SRV target applies to the endpoints of that target;
// the record at the SRV name applies to every endpoint whose target has
// none. The more specific record wins. The character-strings of one TXT
// record are concatenated (a long ID may be split across strings); TXT
// records not starting with "spiffe=" are ignored. A declaring record
// that is malformed, or two that disagree, make the identity unknown (a
// bad record at the target is not replaced by the service's).
// An endpoint whose identity is unknown is not served — an identity is
// never guessed — and is counted in
// quicmesh_discovery_dns_refused_records_total{reason} and logged when
// the set of refused records changes. The peer must then prove the
// declared ID in the mTLS handshake; a peer presenting any other ID is
// refused there.
//
// # Priority and weight
//
// Only the group of SRV records with the lowest priority value is used.
// The next group is used only if no record of the lower one yields an
// endpoint (no address or no identity); unreachable peers within a group
// are the load balancer's business, not discovery's. Weights become
// Endpoint.Weight in proportion: weight w > 0 becomes 100·w and weight 0
// becomes 1 (RFC 2782: "a very small chance"), divided evenly among the
// target's addresses. The balancer spreads connections over every
// endpoint of the group by weight and load.
//
// # Refresh and failures
//
// A watch re-resolves when the smallest TTL of the records it used has
// passed (for a negative answer, the SOA's negative-caching TTL), clamped
// to [Options.MinTTL, Options.MaxTTL]. An authoritative "no such name"
// (NXDOMAIN) or "no SRV records" (NODATA) for a service makes its set
// empty. Anything else that prevents a complete answer — a timeout, an
// unreachable server, SERVFAIL, REFUSED, a malformed or still-truncated
// answer, for the SRV name or any target — keeps the last good set and
// retries after Options.MinTTL, doubling up to Options.MaxTTL (at most
// 30s); each distinct failure is logged once, and the recovery once.
//
// # What DNS does not know
//
// SRV records carry no virtual IPs, pod IPs or readiness: every endpoint
// has a zero Endpoint.PodIP and no ports and is ready, and the Resolver
// is not a discovery.Catalog, so a discovery.Index fed from DNS stays
// empty and the transparent path treats every original destination as
// unknown (passed through). Apps reach DNS-discovered services through
// binds or the HTTP proxy listener, by name. An endpoint that should get
// no traffic is taken out of the zone.
//
// # Bounds
//
// Answers are asked over UDP with a 1232-byte EDNS0 buffer and again over
// TCP if truncated (64 KiB at most). At most Options.MaxEndpoints SRV
// records (lowest priority first) and endpoints are used per service,
// at most 16 addresses per target, 8 lookups run at once per refresh, and
// each lookup takes at most Options.Timeout per nameserver.
package dns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/discovery"
)

// Defaults of Options.
const (
	DefaultMinTTL       = time.Second
	DefaultMaxTTL       = 5 * time.Minute
	DefaultTimeout      = 2 * time.Second
	DefaultMaxEndpoints = 64
	// DefaultResolvConf is where the nameservers come from if none are
	// configured.
	DefaultResolvConf = "/etc/resolv.conf"
)

const (
	// maxRetryInterval caps the retry backoff after failures.
	maxRetryInterval = 30 * time.Second
	// maxAddrsPerTarget bounds the endpoints one SRV target yields.
	maxAddrsPerTarget = 16
	// parallelLookups bounds the lookups in flight for one refresh.
	parallelLookups = 8
	// servicePrefix is prepended to the service name.
	servicePrefix = "_quicmesh._udp."
)

// Refusal reasons: the bounded values of the "reason" label of
// quicmesh_discovery_dns_refused_records_total.
const (
	refusedNoIdentity  = "no_identity"  // no TXT declares the SPIFFE ID
	refusedBadIdentity = "bad_identity" // a declaring TXT is malformed, or two disagree
	refusedNoAddress   = "no_address"   // the target has no A/AAAA record
	refusedBadRecord   = "bad_record"   // port 0 or an invalid target name
	refusedOverLimit   = "over_limit"   // beyond MaxEndpoints
)

var refusalReasons = []string{refusedNoIdentity, refusedBadIdentity, refusedNoAddress, refusedBadRecord, refusedOverLimit}

// Options configures New.
type Options struct {
	// Zone is the DNS zone services live in (e.g. "mesh.example.org"):
	// service S is looked up as _quicmesh._udp.S.Zone. Required.
	Zone string
	// Nameservers are the servers asked, in order, as IP:port (a bare IP
	// means port 53). Empty: the nameservers of ResolvConf.
	Nameservers []string
	// ResolvConf is read for nameservers when Nameservers is empty;
	// DefaultResolvConf if empty.
	ResolvConf string
	// MinTTL and MaxTTL clamp the time between refreshes;
	// DefaultMinTTL (1s) and DefaultMaxTTL (5m) if zero.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one query to one nameserver; DefaultTimeout (2s) if
	// zero.
	Timeout time.Duration
	// MaxEndpoints bounds the SRV records and the endpoints used per
	// service; DefaultMaxEndpoints (64) if zero.
	MaxEndpoints int
	// Logger receives changes, refusals and failures; slog.Default() if
	// nil.
	Logger *slog.Logger
}

// Validate checks the options without reading any file or opening any
// socket, and fills in the defaults of the zero values (but not the
// nameservers of ResolvConf, which New reads).
func (o *Options) Validate() error {
	zone := strings.TrimSuffix(strings.ToLower(o.Zone), ".")
	if zone == "" {
		return errors.New("dns: no zone: the zone services are looked up in is required")
	}
	if err := checkName(zone); err != nil {
		return fmt.Errorf("dns: zone %q: %w", o.Zone, err)
	}
	o.Zone = zone
	for i, s := range o.Nameservers {
		addr, err := nameserverAddr(s)
		if err != nil {
			return err
		}
		o.Nameservers[i] = addr
	}
	if o.MinTTL == 0 {
		o.MinTTL = DefaultMinTTL
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxEndpoints == 0 {
		o.MaxEndpoints = DefaultMaxEndpoints
	}
	switch {
	case o.MinTTL < 0 || o.MaxTTL < 0 || o.Timeout < 0 || o.MaxEndpoints < 0:
		return errors.New("dns: min TTL, max TTL, timeout and max endpoints must not be negative")
	case o.MinTTL > o.MaxTTL:
		return fmt.Errorf("dns: min TTL %s is above max TTL %s", o.MinTTL, o.MaxTTL)
	}
	return nil
}

// nameserverAddr turns "IP" or "IP:port" into "IP:port". Host names are
// refused: finding the nameserver through DNS would be circular.
func nameserverAddr(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return "", fmt.Errorf("dns: nameserver %q: want IP or IP:PORT", s)
	}
	return ap.String(), nil
}

// checkName accepts a relative DNS name of at most 200 bytes (leaving room
// for the prefix and the zone) made of labels of a-z, 0-9, '-' and '_'.
func checkName(name string) error {
	if len(name) > 200 {
		return errors.New("longer than 200 bytes")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("empty or over-long label")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("label %q: only a-z, 0-9, '-' and '_' are allowed", label)
			}
		}
	}
	return nil
}

// Resolver is a discovery.Resolver backed by DNS. It is safe for
// concurrent use, and a prometheus.Collector of its own metrics.
type Resolver struct {
	opts   Options
	client *client
	logger *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	watches map[*watch]struct{}

	failures *prometheus.CounterVec
	refused  *prometheus.CounterVec
	stale    prometheus.GaugeFunc
	nStale   atomic.Int64

	// refreshed, if set (by tests, before the first Resolve), is called
	// after every refresh of a watch with its outcome.
	refreshed func(service string, err error)
}

var (
	_ discovery.Resolver   = (*Resolver)(nil)
	_ prometheus.Collector = (*Resolver)(nil)
)

// New validates opts, reads the nameservers from ResolvConf if none are
// given, and returns a Resolver. It sends no query.
func New(opts Options) (*Resolver, error) {
	opts.Nameservers = slices.Clone(opts.Nameservers)
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if len(opts.Nameservers) == 0 {
		path := cmp.Or(opts.ResolvConf, DefaultResolvConf)
		conf, err := dns.ClientConfigFromFile(path)
		if err != nil {
			return nil, fmt.Errorf("dns: reading nameservers: %w", err)
		}
		for _, s := range conf.Servers {
			addr, err := nameserverAddr(net.JoinHostPort(s, conf.Port))
			if err != nil {
				return nil, fmt.Errorf("dns: %s: %w", path, err)
			}
			opts.Nameservers = append(opts.Nameservers, addr)
		}
		if len(opts.Nameservers) == 0 {
			return nil, fmt.Errorf("dns: %s lists no nameserver", path)
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resolver{
		opts:    opts,
		client:  newClient(opts.Nameservers, opts.Timeout),
		logger:  logger,
		ctx:     ctx,
		cancel:  cancel,
		watches: make(map[*watch]struct{}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quicmesh_discovery_dns_lookup_failures_total",
			Help: "DNS lookups that got no usable answer from any nameserver, by reason; the last good endpoint set is kept.",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quicmesh_discovery_dns_refused_records_total",
			Help: "SRV records not served (counted at every refresh), by reason such as no_identity.",
		}, []string{"reason"}),
	}
	for _, k := range failKinds {
		r.failures.WithLabelValues(k)
	}
	for _, k := range refusalReasons {
		r.refused.WithLabelValues(k)
	}
	r.stale = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "quicmesh_discovery_dns_stale_watches",
		Help: "Watched services whose last refresh failed, so that they serve their last good endpoint set.",
	}, func() float64 { return float64(r.nStale.Load()) })
	return r, nil
}

// Nameservers returns the servers asked, in order.
func (r *Resolver) Nameservers() []string { return slices.Clone(r.opts.Nameservers) }

// SRVName returns the name whose SRV records list service's endpoints.
func (r *Resolver) SRVName(service string) string {
	return servicePrefix + service + "." + r.opts.Zone + "."
}

// Describe implements prometheus.Collector.
func (r *Resolver) Describe(ch chan<- *prometheus.Desc) {
	r.failures.Describe(ch)
	r.refused.Describe(ch)
	r.stale.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Resolver) Collect(ch chan<- prometheus.Metric) {
	r.failures.Collect(ch)
	r.refused.Collect(ch)
	r.stale.Collect(ch)
}

// Resolve looks service up once, bounded by ctx, and starts a watch that
// re-resolves it on TTL. It fails with an error wrapping
// discovery.ErrUnknownService if the name is not a valid service name or
// DNS says it has no SRV records (NXDOMAIN or NODATA), with a
// *lookupError-carrying error if DNS cannot answer, and with one wrapping
// discovery.ErrClosed after Close.
func (r *Resolver) Resolve(ctx context.Context, service string) (discovery.Watch, error) {
	if err := checkName(service); err != nil {
		return nil, fmt.Errorf("dns: resolve %q: invalid service name: %v: %w", service, err, discovery.ErrUnknownService)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.ctx, cancel)
	defer stop()
	if r.ctx.Err() != nil {
		return nil, fmt.Errorf("dns: resolve %q: resolver closed: %w", service, discovery.ErrClosed)
	}
	res, err := r.resolve(ctx, service)
	switch {
	case r.ctx.Err() != nil:
		return nil, fmt.Errorf("dns: resolve %q: resolver closed: %w", service, discovery.ErrClosed)
	case err != nil:
		r.countFailure(err)
		return nil, fmt.Errorf("dns: resolve %q: %w", service, err)
	case !res.exists:
		return nil, fmt.Errorf("dns: resolve %q: no SRV records at %s: %w", service, r.SRVName(service), discovery.ErrUnknownService)
	}
	r.countRefusals(res.refused)

	wctx, wcancel := context.WithCancel(r.ctx)
	w := &watch{Latest: discovery.NewLatest(), r: r, service: service, ctx: wctx, cancel: wcancel}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		wcancel()
		return nil, fmt.Errorf("dns: resolve %q: resolver closed: %w", service, discovery.ErrClosed)
	}
	r.watches[w] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	w.Push(res.eps)
	r.logRefusals(service, res.refused, "")
	go w.run(res)
	return w, nil
}

// Close stops every watch, waits for their goroutines and makes their Next
// return discovery.ErrClosed. It is safe to call more than once.
func (r *Resolver) Close() error {
	r.mu.Lock()
	r.closed = true
	all := r.watches
	r.watches = map[*watch]struct{}{}
	r.mu.Unlock()
	r.cancel()
	for w := range all {
		w.shut()
	}
	r.wg.Wait()
	return nil
}

func (r *Resolver) countFailure(err error) {
	var le *lookupError
	if errors.As(err, &le) {
		r.failures.WithLabelValues(le.Kind).Inc()
	}
}

func (r *Resolver) countRefusals(refused []refusal) {
	for _, rf := range refused {
		r.refused.WithLabelValues(rf.reason).Inc()
	}
}

// logRefusals logs the refused records if they differ from what was last
// logged (prev, as returned before); it returns what it logged.
func (r *Resolver) logRefusals(service string, refused []refusal, prev string) string {
	key := fmt.Sprint(refused)
	if key == prev {
		return prev
	}
	for _, rf := range refused {
		r.logger.Warn("dns discovery: SRV record not served", "service", service,
			"target", rf.target, "port", rf.port, "reason", rf.reason, "detail", rf.detail)
	}
	return key
}

// refreshAfter clamps a TTL to [MinTTL, MaxTTL].
func (r *Resolver) refreshAfter(ttl uint32) time.Duration {
	return min(max(time.Duration(ttl)*time.Second, r.opts.MinTTL), r.opts.MaxTTL)
}

// retryAfter is the wait after the n-th failure in a row (n ≥ 1): MinTTL
// doubling up to MaxTTL, and never more than maxRetryInterval.
func (r *Resolver) retryAfter(n int) time.Duration {
	d := r.opts.MinTTL
	limit := min(r.opts.MaxTTL, maxRetryInterval)
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return max(min(d, limit), r.opts.MinTTL)
}

// result is one complete resolution of a service.
type result struct {
	// exists: DNS has SRV records for the service.
	exists bool
	// eps are the endpoints served, sorted by Key; nil if none.
	eps []discovery.Endpoint
	// ttl is the smallest TTL of everything consulted.
	ttl     uint32
	refused []refusal
}

// refusal is an SRV record that yielded no endpoint.
type refusal struct {
	target string
	port   uint16
	reason string
	detail string
}

func (rf refusal) String() string {
	return fmt.Sprintf("%s:%d %s %s", rf.target, rf.port, rf.reason, rf.detail)
}

// targetInfo is what the lookups of one SRV target found.
type targetInfo struct {
	addrs []netip.Addr
	id    string
	idErr error
}

// resolve looks service up completely: the SRV records, then the
// addresses and identity TXT records of their targets, group by group in
// priority order until one yields an endpoint.
func (r *Resolver) resolve(ctx context.Context, service string) (result, error) {
	srvName := r.SRVName(service)
	srvSet, err := r.client.lookup(ctx, srvName, dns.TypeSRV)
	if err != nil {
		return result{}, err
	}
	res := result{ttl: srvSet.ttl}
	if len(srvSet.rrs) == 0 {
		return res, nil
	}
	res.exists = true
	srvs := make([]*dns.SRV, 0, len(srvSet.rrs))
	for _, rr := range srvSet.rrs {
		srvs = append(srvs, rr.(*dns.SRV))
	}
	slices.SortFunc(srvs, func(a, b *dns.SRV) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(b.Weight, a.Weight),
			strings.Compare(dns.CanonicalName(a.Target), dns.CanonicalName(b.Target)), cmp.Compare(a.Port, b.Port))
	})
	if len(srvs) == 1 && srvs[0].Target == "." {
		return res, nil // RFC 2782: the service is decidedly not available
	}
	if len(srvs) > r.opts.MaxEndpoints {
		for _, s := range srvs[r.opts.MaxEndpoints:] {
			res.refused = append(res.refused, refusal{dns.CanonicalName(s.Target), s.Port, refusedOverLimit,
				fmt.Sprintf("more than %d SRV records", r.opts.MaxEndpoints)})
		}
		srvs = srvs[:r.opts.MaxEndpoints]
	}

	// The service-wide identity, for targets that declare none.
	svcTXT, err := r.client.lookup(ctx, srvName, dns.TypeTXT)
	if err != nil {
		return result{}, err
	}
	res.ttl = min(res.ttl, svcTXT.ttl)
	svcID, svcIDErr := identityFromTXT(txtStrings(svcTXT.rrs))

	for group := range priorityGroups(srvs) {
		targets, err := r.lookupTargets(ctx, group)
		if err != nil {
			return result{}, err
		}
		for _, t := range targets {
			res.ttl = min(res.ttl, t.ttl)
		}
		eps := map[string]discovery.Endpoint{}
		for _, s := range group {
			target := dns.CanonicalName(s.Target)
			ep := discovery.Endpoint{}
			reject := func(reason, detail string) {
				res.refused = append(res.refused, refusal{target, s.Port, reason, detail})
			}
			t, ok := targets[target]
			switch {
			case !ok:
				reject(refusedBadRecord, "invalid target name")
				continue
			case s.Port == 0:
				reject(refusedBadRecord, "port 0")
				continue
			case t.info.idErr != nil:
				reject(refusedBadIdentity, t.info.idErr.Error())
				continue
			case t.info.id != "":
				ep.Identity = t.info.id
			case svcIDErr != nil:
				reject(refusedBadIdentity, "at "+srvName+": "+svcIDErr.Error())
				continue
			case svcID != "":
				ep.Identity = svcID
			default:
				reject(refusedNoIdentity, "no \"spiffe=\" TXT record at the target or at "+srvName)
				continue
			}
			if len(t.info.addrs) == 0 {
				reject(refusedNoAddress, "no A or AAAA record")
				continue
			}
			weight := uint32(1)
			if s.Weight > 0 {
				weight = 100 * uint32(s.Weight)
			}
			weight = max(1, weight/uint32(len(t.info.addrs)))
			for _, a := range t.info.addrs {
				ep.Addr = netip.AddrPortFrom(a, s.Port).String()
				ep.Weight = weight
				if prev, dup := eps[ep.Key()]; dup {
					ep.Weight += prev.Weight // two records naming the same peer
				} else if len(eps) >= r.opts.MaxEndpoints {
					reject(refusedOverLimit, fmt.Sprintf("more than %d endpoints", r.opts.MaxEndpoints))
					break
				}
				eps[ep.Key()] = ep
			}
		}
		if len(eps) > 0 {
			res.eps = slices.SortedFunc(maps.Values(eps), func(a, b discovery.Endpoint) int {
				return strings.Compare(a.Key(), b.Key())
			})
			break
		}
	}
	return res, nil
}

// priorityGroups yields runs of srvs (sorted by priority) sharing a
// priority.
func priorityGroups(srvs []*dns.SRV) func(yield func([]*dns.SRV) bool) {
	return func(yield func([]*dns.SRV) bool) {
		for len(srvs) > 0 {
			n := 1
			for n < len(srvs) && srvs[n].Priority == srvs[0].Priority {
				n++
			}
			if !yield(srvs[:n]) {
				return
			}
			srvs = srvs[n:]
		}
	}
}

// targetLookup is the outcome of the lookups of one target.
type targetLookup struct {
	info targetInfo
	ttl  uint32
}

// lookupTargets looks up the A, AAAA and TXT records of every distinct,
// valid target of group, parallelLookups at a time. Any failed lookup
// fails the whole refresh, so that a partial answer never replaces a
// complete one.
func (r *Resolver) lookupTargets(ctx context.Context, group []*dns.SRV) (map[string]*targetLookup, error) {
	out := map[string]*targetLookup{}
	for _, s := range group {
		name := dns.CanonicalName(s.Target)
		if _, ok := dns.IsDomainName(name); !ok || name == "." {
			continue
		}
		out[name] = &targetLookup{ttl: ^uint32(0)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		sem      = make(chan struct{}, parallelLookups)
	)
	for name, t := range out {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
			wg.Go(func() {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				defer func() { <-sem }()
				set, err := r.client.lookup(ctx, name, qtype)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					return
				}
				t.ttl = min(t.ttl, set.ttl)
				switch qtype {
				case dns.TypeTXT:
					t.info.id, t.info.idErr = identityFromTXT(txtStrings(set.rrs))
				default:
					for _, rr := range set.rrs {
						var ip net.IP
						switch a := rr.(type) {
						case *dns.A:
							ip = a.A
						case *dns.AAAA:
							ip = a.AAAA
						}
						addr, ok := netip.AddrFromSlice(ip)
						if !ok || len(t.info.addrs) >= maxAddrsPerTarget || slices.Contains(t.info.addrs, addr.Unmap()) {
							continue
						}
						t.info.addrs = append(t.info.addrs, addr.Unmap())
					}
				}
			})
		}
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, t := range out {
		slices.SortFunc(t.info.addrs, netip.Addr.Compare)
	}
	return out, nil
}

// watch is one Resolve call's view of a service. It holds at most one
// pending update: the latest full set.
type watch struct {
	*discovery.Latest // the newest endpoint set, for Next
	r                 *Resolver
	service           string
	ctx               context.Context // cancelled by Close
	cancel            context.CancelFunc
}

// run re-resolves the service on TTL until the watch is closed. first is
// the answer Resolve already delivered.
func (w *watch) run(first result) {
	r := w.r
	defer r.wg.Done()
	last := first.eps
	exists := true
	next := r.refreshAfter(first.ttl)
	failures := 0
	lastFailure := "" // the failure last logged; "" while healthy
	refusals := fmt.Sprint(first.refused)
	timer := time.NewTimer(next)
	defer timer.Stop()
	defer func() {
		if failures > 0 {
			r.nStale.Add(-1)
		}
	}()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-timer.C:
		}
		res, err := r.resolve(w.ctx, w.service)
		if w.ctx.Err() != nil {
			return
		}
		if err != nil {
			r.countFailure(err)
			if failures == 0 {
				r.nStale.Add(1)
			}
			failures++
			if key := failureKey(err); key != lastFailure {
				lastFailure = key
				r.logger.Warn("dns discovery: refresh failed; keeping the last endpoint set",
					"service", w.service, "endpoints", len(last), "err", err)
			}
			w.refreshDone(err)
			timer.Reset(r.retryAfter(failures))
			continue
		}
		if failures > 0 {
			r.nStale.Add(-1)
			r.logger.Info("dns discovery: refresh recovered", "service", w.service, "failures", failures)
			failures, lastFailure = 0, ""
		}
		r.countRefusals(res.refused)
		refusals = r.logRefusals(w.service, res.refused, refusals)
		if res.exists != exists {
			exists = res.exists
			if !exists {
				r.logger.Warn("dns discovery: service has no SRV records any more; serving no endpoints",
					"service", w.service, "name", r.SRVName(w.service))
			}
		}
		if !sameEndpoints(res.eps, last) {
			r.logger.Info("dns discovery: endpoints changed", "service", w.service,
				"endpoints", len(res.eps), "was", len(last))
			last = res.eps
			w.Push(res.eps)
		}
		w.refreshDone(nil)
		timer.Reset(r.refreshAfter(res.ttl))
	}
}

// refreshDone reports a finished refresh to the test hook.
func (w *watch) refreshDone(err error) {
	if w.r.refreshed != nil {
		w.r.refreshed(w.service, err)
	}
}

// sameEndpoints compares two sorted sets of endpoints made by resolve
// (which sets no zone or metadata).
func sameEndpoints(a, b []discovery.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Endpoint) bool {
		return x.Addr == y.Addr && x.Identity == y.Identity && x.Weight == y.Weight
	})
}

// failureKey identifies a failure for "log once per distinct failure":
// its kind and question, not its message, which carries ephemeral ports.
func failureKey(err error) string {
	var le *lookupError
	if errors.As(err, &le) {
		return fmt.Sprintf("%s %s %d %s", le.Kind, le.Name, le.Type, le.Server)
	}
	return err.Error()
}

// Close ends the watch and its refreshes; Next then returns
// discovery.ErrClosed. It is safe to call more than once.
func (w *watch) Close() error {
	w.r.mu.Lock()
	delete(w.r.watches, w)
	w.r.mu.Unlock()
	w.shut()
	return nil
}

func (w *watch) shut() {
	w.cancel()
	w.Shut()
}
