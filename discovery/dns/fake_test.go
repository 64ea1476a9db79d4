package dns

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeServer is an in-process authoritative server for the zone mesh.test
// (miekg/dns on loopback, UDP and TCP on one port) whose records and
// misbehaviour a test changes at will.
type fakeServer struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	mu       sync.Mutex
	rrs      []dns.RR
	rcode    map[string]int  // "name type" → forced response code
	drop     map[string]bool // "name type" → never answered
	truncate map[string]bool // "name type" → truncated over UDP
	truncTCP map[string]bool // "name type" → truncated over TCP too
	wrongQ   map[string]bool // "name type" → answered for another question
	queries  chan string     // "udp|tcp name type", for tests that count
}

const testSOA = "mesh.test. 5 IN SOA ns.mesh.test. admin.mesh.test. 1 3600 600 86400 5"

func startFake(t *testing.T, zone string) *fakeServer {
	t.Helper()
	f := &fakeServer{
		rcode: map[string]int{}, drop: map[string]bool{}, truncate: map[string]bool{}, truncTCP: map[string]bool{}, wrongQ: map[string]bool{},
		queries: make(chan string, 4096),
	}
	f.set(t, zone)
	var pc net.PacketConn
	var ln net.Listener
	// UDP and TCP must share a port number; another process may hold the
	// TCP side of the port the kernel gave the UDP socket.
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	f.addr = pc.LocalAddr().String()
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	f.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(f.serve), NotifyStartedFunc: notify}
	f.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(f.serve), NotifyStartedFunc: notify}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{f.udp, f.tcp} {
		wg.Go(func() { s.ActivateAndServe() })
	}
	<-started
	<-started
	t.Cleanup(func() {
		f.udp.Shutdown()
		f.tcp.Shutdown()
		wg.Wait()
	})
	return f
}

// set replaces the zone's records (one RR per line, "" for none).
func (f *fakeServer) set(t *testing.T, zone string) {
	t.Helper()
	var rrs []dns.RR
	for line := range strings.SplitSeq(zone, "\n") {
		line = strings.TrimSpace(line) // leading blanks would mean "the previous owner"
		if line == "" {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			t.Fatalf("bad test record %q: %v", line, err)
		}
		rrs = append(rrs, rr)
	}
	f.mu.Lock()
	f.rrs = rrs
	f.mu.Unlock()
}

// misbehave sets how the server treats one question ("name type", e.g.
// "_quicmesh._udp.echo.mesh.test. SRV"); fn changes the maps under lock.
func (f *fakeServer) misbehave(fn func(f *fakeServer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	key := dns.CanonicalName(q.Name) + " " + dns.TypeToString[q.Qtype]
	isUDP := w.LocalAddr().Network() == "udp"
	proto := "tcp"
	if isUDP {
		proto = "udp"
	}
	select {
	case f.queries <- proto + " " + key:
	default:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.drop[key] {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if rc, ok := f.rcode[key]; ok {
		m.Rcode = rc
		w.WriteMsg(m)
		return
	}
	if f.wrongQ[key] {
		m.Question[0].Name = "other.mesh.test."
		w.WriteMsg(m)
		return
	}
	if isUDP && f.truncate[key] || f.truncTCP[key] {
		m.Truncated = true
		w.WriteMsg(m)
		return
	}
	name := dns.CanonicalName(q.Name)
	exists := false
	for _, rr := range f.rrs {
		h := rr.Header()
		if dns.CanonicalName(h.Name) != name {
			continue
		}
		exists = true
		if h.Rrtype == q.Qtype || h.Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, dns.Copy(rr))
			if c, ok := rr.(*dns.CNAME); ok { // follow one alias, like an authoritative server
				for _, rr2 := range f.rrs {
					if dns.CanonicalName(rr2.Header().Name) == dns.CanonicalName(c.Target) && rr2.Header().Rrtype == q.Qtype {
						m.Answer = append(m.Answer, dns.Copy(rr2))
					}
				}
			}
		}
	}
	if len(m.Answer) == 0 {
		soa, _ := dns.NewRR(testSOA)
		m.Ns = []dns.RR{soa}
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
	}
	w.WriteMsg(m)
}

// refreshEvents delivers every refresh outcome of r's watches.
func refreshEvents(r *Resolver) <-chan error {
	ch := make(chan error, 1024)
	r.refreshed = func(_ string, err error) {
		if err == nil {
			err = errOK
		}
		select {
		case ch <- err:
		default:
		}
	}
	return ch
}

var errOK = errors.New("ok")

// waitRefresh waits for the next refresh and returns its error (nil for
// success).
func waitRefresh(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		if err == errOK {
			return nil
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("no refresh within 30s")
		return nil
	}
}
