package outbound

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/internal/balance"
)

// Resilience is the failure policy of the requests a proxy forwards
// (docs/design.md, "Outbound resilience"): timeouts, retries within a
// retry budget, a bound on pending requests per service, and failure
// accrual in the balancer. The zero value takes every default.
type Resilience struct {
	// Default is the policy of every service; an entry in Services
	// overrides the fields it sets for that service.
	Default  ServicePolicy
	Services map[string]ServicePolicy
	// Accrual tunes the failure accrual of the default balancer (used
	// when Config.Balancer is nil).
	Accrual balance.AccrualConfig
}

// ServicePolicy is the policy of one service's requests. A zero field
// takes the value of Resilience.Default, then the documented default;
// where "none" is a setting, a negative value says it.
type ServicePolicy struct {
	// Timeout bounds a whole request, retries included, until its
	// response is complete: 504 (gRPC DEADLINE_EXCEEDED) when it
	// expires. Default none; negative: none.
	Timeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the response header,
	// retries included. Default DefaultResponseHeaderTimeout; negative:
	// none.
	ResponseHeaderTimeout time.Duration
	// MaxPending bounds the service's requests in flight through this
	// proxy: beyond it requests get 503 at once (circuit breaking).
	// Default none; negative: none.
	MaxPending int
	// MaxRetries bounds how often one request is sent again. Default 2;
	// negative: never.
	MaxRetries int
	// RetryOn are response statuses after which an idempotent request
	// is sent again (to another endpoint if there is one), within the
	// retry budget. Default none.
	RetryOn []int
	// RetryOnGRPC are gRPC status codes ("UNAVAILABLE", or the number
	// 14) after which a call of a RetryGRPCMethods method is sent again,
	// within the retry budget, when the status came in a Trailers-Only
	// response: then the app has seen nothing of it. A status that ends
	// a response with messages is passed on (they are the app's already).
	// Default none.
	RetryOnGRPC []string
	// RetryGRPCMethods are gRPC methods that may be retried like
	// idempotent HTTP requests: "/package.Service/Method", or
	// "/package.Service/*" for all of a service's. Only unary methods:
	// a retryable request's body is buffered before it is sent.
	RetryGRPCMethods []string
	// RetryBodyBytes is the largest request body buffered so that the
	// request can be sent again. Default 64 KiB; negative: only
	// requests without a body are retried.
	RetryBodyBytes int
	// RetryBudget bounds the retries on RetryOn statuses.
	RetryBudget RetryBudget
}

// RetryBudget bounds status retries to Ratio of the service's requests
// plus MinPerSecond, so retries cannot multiply the load on a failing
// service. Unspent allowance is kept up to 10 seconds' worth of
// MinPerSecond (at least 10 retries).
type RetryBudget struct {
	// Ratio is the retries allowed per request. Default 0.2; negative: 0.
	Ratio float64
	// MinPerSecond is allowed on top, for services with little traffic.
	// Default 10; negative: 0.
	MinPerSecond float64
}

// Defaults of ServicePolicy.
const (
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultMaxRetries            = 2
	DefaultRetryBodyBytes        = 64 << 10
	DefaultRetryRatio            = 0.2
	DefaultRetryMinPerSecond     = 10
)

// over fills p's unset fields from base.
func (p ServicePolicy) over(base ServicePolicy) ServicePolicy {
	if p.Timeout == 0 {
		p.Timeout = base.Timeout
	}
	if p.ResponseHeaderTimeout == 0 {
		p.ResponseHeaderTimeout = base.ResponseHeaderTimeout
	}
	if p.MaxPending == 0 {
		p.MaxPending = base.MaxPending
	}
	if p.MaxRetries == 0 {
		p.MaxRetries = base.MaxRetries
	}
	if p.RetryOn == nil {
		p.RetryOn = base.RetryOn
	}
	if p.RetryGRPCMethods == nil {
		p.RetryGRPCMethods = base.RetryGRPCMethods
	}
	if p.RetryOnGRPC == nil {
		p.RetryOnGRPC = base.RetryOnGRPC
	}
	if p.RetryBodyBytes == 0 {
		p.RetryBodyBytes = base.RetryBodyBytes
	}
	if p.RetryBudget.Ratio == 0 {
		p.RetryBudget.Ratio = base.RetryBudget.Ratio
	}
	if p.RetryBudget.MinPerSecond == 0 {
		p.RetryBudget.MinPerSecond = base.RetryBudget.MinPerSecond
	}
	return p
}

// effective is p with the defaults filled in and "none" (negative) as 0.
func (p ServicePolicy) effective() ServicePolicy {
	p = p.over(ServicePolicy{
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		MaxRetries:            DefaultMaxRetries,
		RetryBodyBytes:        DefaultRetryBodyBytes,
		RetryBudget:           RetryBudget{Ratio: DefaultRetryRatio, MinPerSecond: DefaultRetryMinPerSecond},
	})
	p.Timeout = max(p.Timeout, 0)
	p.ResponseHeaderTimeout = max(p.ResponseHeaderTimeout, 0)
	p.MaxPending = max(p.MaxPending, 0)
	p.MaxRetries = max(p.MaxRetries, 0)
	p.RetryBodyBytes = max(p.RetryBodyBytes, 0)
	p.RetryBudget.Ratio = max(p.RetryBudget.Ratio, 0)
	p.RetryBudget.MinPerSecond = max(p.RetryBudget.MinPerSecond, 0)
	return p
}

// Validate reports the first setting of r that cannot work, naming the
// service ("" for the default).
func (r Resilience) Validate() error {
	for _, name := range append([]string{""}, slices.Sorted(maps.Keys(r.Services))...) {
		p := r.Default
		if name != "" {
			p = r.Services[name]
		}
		if err := p.Validate(); err != nil {
			if name == "" {
				return fmt.Errorf("default policy: %w", err)
			}
			return fmt.Errorf("service %q: %w", name, err)
		}
	}
	return nil
}

// Validate reports the first setting of p that cannot work.
func (p ServicePolicy) Validate() error {
	for _, code := range p.RetryOn {
		if code < 400 || code > 599 {
			return fmt.Errorf("retry status %d: only 4xx and 5xx statuses can be retried", code)
		}
	}
	for _, name := range p.RetryOnGRPC {
		if _, err := parseGRPCCode(name); err != nil {
			return err
		}
	}
	for _, m := range p.RetryGRPCMethods {
		svc, method, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
		if !strings.HasPrefix(m, "/") || !ok || svc == "" || method == "" || strings.Contains(method, "/") ||
			strings.Contains(method, "*") && method != "*" || strings.Contains(svc, "*") {
			return fmt.Errorf("gRPC method %q: want /package.Service/Method or /package.Service/*", m)
		}
	}
	if p.RetryBudget.Ratio > 10 {
		return fmt.Errorf("retry budget ratio %g: more than 10 retries per request is no budget", p.RetryBudget.Ratio)
	}
	return nil
}

// servicePolicy is the effective policy of one service and its state.
type servicePolicy struct {
	ServicePolicy
	retryOn map[int]bool
	// retryOnGRPC holds the RetryOnGRPC codes as grpc-status values.
	retryOnGRPC map[string]bool
	budget      *retryBudget
	pending     atomic.Int64
}

// retryableGRPC reports whether the gRPC method at path is marked
// retryable.
func (sp *servicePolicy) retryableGRPC(path string) bool {
	for _, m := range sp.RetryGRPCMethods {
		if m == path || strings.HasSuffix(m, "/*") && strings.HasPrefix(path, m[:len(m)-1]) {
			return true
		}
	}
	return false
}

// policies hands out each service's policy and state, made on first use.
type policies struct {
	res Resilience
	now func() time.Time

	mu  sync.Mutex
	svc map[string]*servicePolicy
	// shared is the state of services beyond maxPolicyStates that have
	// no entry of their own: the HTTP proxy listener routes by request
	// host, so service names come from the apps and must not grow the
	// map without bound.
	shared *servicePolicy
}

const maxPolicyStates = 1024

func newPolicies(res Resilience, now func() time.Time) *policies {
	p := &policies{res: res, now: now, svc: make(map[string]*servicePolicy)}
	p.shared = p.make("")
	return p
}

func (p *policies) make(service string) *servicePolicy {
	eff := p.res.Default
	if sp, ok := p.res.Services[service]; ok && service != "" {
		eff = sp.over(p.res.Default)
	}
	eff = eff.effective()
	sp := &servicePolicy{ServicePolicy: eff, retryOn: make(map[int]bool), retryOnGRPC: make(map[string]bool)}
	for _, name := range eff.RetryOnGRPC {
		if code, err := parseGRPCCode(name); err == nil { // Validate reported the others
			sp.retryOnGRPC[strconv.Itoa(code)] = true
		}
	}
	for _, c := range eff.RetryOn {
		sp.retryOn[c] = true
	}
	sp.budget = newRetryBudget(eff.RetryBudget, p.now)
	return sp
}

func (p *policies) get(service string) *servicePolicy {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sp := p.svc[service]; sp != nil {
		return sp
	}
	if _, configured := p.res.Services[service]; !configured && len(p.svc) >= maxPolicyStates {
		return p.shared
	}
	sp := p.make(service)
	p.svc[service] = sp
	return sp
}

// retryBudget is a token bucket: each request deposits ratio tokens, the
// clock minPerSecond per second, and each status retry takes one.
type retryBudget struct {
	ratio, perSecond, capacity float64
	now                        func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// budgetWindow is how long unspent allowance of the per-second floor is
// kept.
const budgetWindow = 10

func newRetryBudget(b RetryBudget, now func() time.Time) *retryBudget {
	capacity := max(budgetWindow*b.MinPerSecond, budgetWindow)
	return &retryBudget{ratio: b.Ratio, perSecond: b.MinPerSecond, capacity: capacity, now: now, tokens: budgetWindow * b.MinPerSecond, last: now()}
}

func (b *retryBudget) refill() {
	now := b.now()
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.capacity, b.tokens+dt*b.perSecond)
	}
	b.last = now
}

// deposit counts one request.
func (b *retryBudget) deposit() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.tokens = min(b.capacity, b.tokens+b.ratio)
}

// withdraw takes the allowance for one retry, if there is any.
func (b *retryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// errHeaderTimeout is the cause of a request cancelled because its
// response header did not arrive in time. It is a timeout (bridge
// classifies it as one).
var errHeaderTimeout = timeoutError("response header timeout")

type timeoutError string

func (e timeoutError) Error() string { return string(e) }
func (timeoutError) Timeout() bool   { return true }

// grpcCodes are the gRPC status codes by name (grpc/codes; the sidecar
// does not link gRPC's packages for these sixteen names).
var grpcCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// parseGRPCCode reads a gRPC status code given by name (any case) or
// number; OK is not a failure and cannot be retried.
func parseGRPCCode(s string) (int, error) {
	code, err := strconv.Atoi(s)
	if err != nil {
		code = slices.Index(grpcCodes[:], strings.ToUpper(s))
	}
	if code <= 0 || code >= len(grpcCodes) {
		return 0, fmt.Errorf("gRPC retry status %q: want a gRPC status code other than OK, e.g. UNAVAILABLE or 14", s)
	}
	return code, nil
}
