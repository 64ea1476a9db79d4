package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/miekg/dns"
)

// udpSize is the EDNS0 buffer size the client advertises and reads: the
// "DNS flag day 2020" value, small enough to avoid IP fragmentation. A
// larger answer comes back truncated and is asked again over TCP, where
// the protocol's 16-bit length bounds a message to 64 KiB.
const udpSize = 1232

// Failure kinds: the bounded values of the "reason" label of
// quicmesh_discovery_dns_lookup_failures_total.
const (
	failTimeout   = "timeout"   // no answer within Options.Timeout
	failNetwork   = "network"   // the server could not be reached (e.g. port unreachable)
	failServfail  = "servfail"  // the server answered SERVFAIL
	failRefused   = "refused"   // the server answered REFUSED
	failRcode     = "rcode"     // another error response code
	failMalformed = "malformed" // the answer did not parse or did not match the question
	failTruncated = "truncated" // truncated even over TCP
)

var failKinds = []string{failTimeout, failNetwork, failServfail, failRefused, failRcode, failMalformed, failTruncated}

// lookupError is a query that got no usable answer from any nameserver.
type lookupError struct {
	Kind   string // one of the fail* constants
	Name   string
	Type   uint16
	Server string
	Err    error
}

func (e *lookupError) Error() string {
	return fmt.Sprintf("%s %s via %s: %s: %v", dns.TypeToString[e.Type], e.Name, e.Server, e.Kind, e.Err)
}

func (e *lookupError) Unwrap() error { return e.Err }

// client asks the configured nameservers, in order, until one answers.
type client struct {
	servers []string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

func newClient(servers []string, timeout time.Duration) *client {
	return &client{
		servers: servers,
		timeout: timeout,
		udp:     &dns.Client{Net: "udp", UDPSize: udpSize, Timeout: timeout},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
	}
}

// lookup queries (name, qtype). NOERROR and NXDOMAIN are answers; any
// other outcome makes it try the next nameserver, and if none answers
// it returns the last *lookupError.
func (c *client) lookup(ctx context.Context, name string, qtype uint16) (rrset, error) {
	var last error
	for _, server := range c.servers {
		m, err := c.exchange(ctx, server, name, qtype)
		if err == nil {
			return extract(m, name, qtype), nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return rrset{}, last
}

// exchange asks one server over UDP, and again over TCP if the answer was
// truncated, and checks that the response answers the question.
func (c *client) exchange(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	fail := func(kind string, err error) (*dns.Msg, error) {
		return nil, &lookupError{Kind: kind, Name: name, Type: qtype, Server: server, Err: err}
	}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(udpSize, false)
	m, err := c.do(ctx, c.udp, server, q)
	if err == nil && m.Truncated {
		m, err = c.do(ctx, c.tcp, server, q)
		if err == nil && m.Truncated {
			return fail(failTruncated, errors.New("the TCP answer is truncated too"))
		}
	}
	if err != nil {
		return fail(transportFailure(ctx, err), err)
	}
	if !m.Response || m.Opcode != dns.OpcodeQuery {
		return fail(failMalformed, errors.New("not a response to a query"))
	}
	if len(m.Question) != 1 || m.Question[0].Qtype != qtype || m.Question[0].Qclass != dns.ClassINET ||
		dns.CanonicalName(m.Question[0].Name) != dns.CanonicalName(name) {
		return fail(failMalformed, errors.New("the response is for another question"))
	}
	switch m.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return m, nil
	case dns.RcodeServerFailure:
		return fail(failServfail, errors.New("SERVFAIL"))
	case dns.RcodeRefused:
		return fail(failRefused, errors.New("REFUSED"))
	default:
		return fail(failRcode, fmt.Errorf("response code %s", dns.RcodeToString[m.Rcode]))
	}
}

// do runs one exchange bounded by the timeout; cancelling ctx closes the
// connection at once rather than at the deadline.
func (c *client) do(ctx context.Context, cl *dns.Client, server string, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := cl.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	m, _, err := cl.ExchangeWithConnContext(ctx, q, conn)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return m, err
}

// transportFailure classifies an exchange error.
func transportFailure(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return failTimeout
	case errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	case errors.As(err, new(*net.OpError)):
		return failNetwork
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return failTimeout
	default:
		return failMalformed
	}
}
