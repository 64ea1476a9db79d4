package testkit

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/httpx"
)

// Outcome is one request of a RateLoad.
type Outcome struct {
	Start time.Time
	Took  time.Duration
	Err   string // empty: 200
}

// RateLoad offers GETs at about a rate per second with at most a number
// outstanding (a machine that cannot keep up is offered less), and keeps
// every outcome: the load of the failure tests (a peer killed, frozen or
// drained, a gateway killed), which then judge each request.
type RateLoad struct {
	mu       sync.Mutex
	outcomes []Outcome
	inFlight atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

// StartRateLoad offers GETs of url until Finish or the end of the test.
// Requests give up only at the hang guard, so a request the proxy does not
// fail itself shows as slow, not as a client timeout.
func StartRateLoad(t testing.TB, url string, rate, maxInFlight int) *RateLoad {
	// Idle keep-alive connections beyond a few are closed, as most
	// clients do: each is a socket and a goroutine in the sidecar, which
	// the partition test counts.
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: time.Until(HangGuard(t))}
	t.Cleanup(c.CloseIdleConnections)
	l := &RateLoad{stop: make(chan struct{})}
	sem := make(chan struct{}, maxInFlight)
	l.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				continue
			}
			l.inFlight.Add(1)
			l.wg.Go(func() {
				defer func() { <-sem; l.inFlight.Add(-1) }()
				o := Outcome{Start: time.Now()}
				resp, err := c.Get(url)
				if err != nil {
					o.Err = err.Error()
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						o.Err = fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
					}
				}
				o.Took = time.Since(o.Start)
				l.mu.Lock()
				l.outcomes = append(l.outcomes, o)
				l.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() { l.Finish() })
	return l
}

// Finish stops the load and returns every outcome, by start time.
func (l *RateLoad) Finish() []Outcome {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.SortFunc(l.outcomes, func(a, b Outcome) int { return a.Start.Compare(b.Start) })
	return l.outcomes
}

// Served counts the outcomes so far that were 200.
func (l *RateLoad) Served() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, o := range l.outcomes {
		if o.Err == "" {
			n++
		}
	}
	return n
}

// InFlight is the number of requests outstanding now.
func (l *RateLoad) InFlight() int64 { return l.inFlight.Load() }
