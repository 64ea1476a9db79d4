package sidecar_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"google.golang.org/grpc"
)

// largeMsgMesh is a client and a server sidecar over one transport with
// one set of QUIC limits, in front of the HTTP/1.1 and gRPC echo apps,
// and a warm client for each.
type largeMsgMesh struct {
	name string
	web  string
	hc   *http.Client
	cc   *grpc.ClientConn
}

func newLargeMsgMesh(t testing.TB, name string, mode fallback.Mode, l transport.Limits) *largeMsgMesh {
	t.Helper()
	mesh := meshtest.NewOver(t, mode)
	web := mesh.HTTPApp("web", meshtest.H1, nil)
	g := mesh.GRPCApp("grpc")
	mesh.Start("server", meshtest.Spec{ID: echoID, Limits: l, Routes: map[string]string{"web": web.URL("http"), "grpc": g.URL("h2c")}})
	client := mesh.Start("client", meshtest.Spec{ID: clientID, Limits: l, Binds: []meshtest.Bind{{Service: "web"}, {Service: "grpc"}}})
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &largeMsgMesh{name: name, web: "http://" + client.Bind("web"), hc: &http.Client{Transport: tr}, cc: testkit.GRPCConn(t, client.Bind("grpc"))}
}

// largeMsgKinds are the calls measured: an HTTP/1.1 POST the echo app
// sends back (size bytes each way), an HTTP/1.1 GET of size bytes (the
// response only) and a gRPC unary echo (size bytes each way).
var largeMsgKinds = []struct {
	name string
	call func(ctx context.Context, m *largeMsgMesh, body []byte) error
}{
	{"h1-post", func(ctx context.Context, m *largeMsgMesh, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.web+"/", bytes.NewReader(body))
		if err != nil {
			return err
		}
		return readAll(m.hc.Do(req))(len(body))
	}},
	{"h1-get", func(ctx context.Context, m *largeMsgMesh, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.web+"/?size="+strconv.Itoa(len(body)), nil)
		if err != nil {
			return err
		}
		return readAll(m.hc.Do(req))(len(body))
	}},
	{"grpc-unary", func(ctx context.Context, m *largeMsgMesh, body []byte) error {
		got, err := echo.EchoUnary(ctx, m.cc, body)
		if err != nil {
			return err
		}
		if len(got) != len(body) {
			return fmt.Errorf("echoed %d bytes, sent %d", len(got), len(body))
		}
		return nil
	}},
}

// readAll drains a response and checks its length.
func readAll(resp *http.Response, err error) func(want int) error {
	return func(want int) error {
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || n != int64(want) {
			return fmt.Errorf("status %d, %d bytes, want %d", resp.StatusCode, n, want)
		}
		return nil
	}
}

// BenchmarkLargeMessageLatency measures single large requests through two
// sidecars: QUIC with several initial stream windows against the TCP
// transport, side by side, one call at a time, the configurations
// alternating call by call; b.N is the number of rounds, the table goes
// to the log (docs/benchmarks.md, "Large single messages"):
//
//	go test ./proxy/sidecar -run '^$' -bench LargeMessageLatency -benchtime 15x -v
func BenchmarkLargeMessageLatency(b *testing.B) {
	t, rounds := b, b.N
	windows := []uint64{4 << 10, 64 << 10, 512 << 10}
	if s := os.Getenv("QUICMESH_LARGEMSG_WINDOWS"); s != "" {
		windows = nil
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			windows = append(windows, n<<10)
		}
	}
	var meshes []*largeMsgMesh
	for _, w := range windows {
		meshes = append(meshes, newLargeMsgMesh(t, fmt.Sprintf("quic-%dk", w>>10), fallback.QUIC, transport.Limits{InitialStreamReceiveWindow: w}))
	}
	meshes = append(meshes, newLargeMsgMesh(t, "tcp", fallback.TCP, transport.Limits{}))
	sizes := []int{256 << 10, 1 << 20, 3 << 20}
	ctx := testkit.HangCtx(t)
	type key struct {
		mesh, kind string
		size       int
	}
	took := map[key][]time.Duration{}
	load := loadavg()
	for r := -1; r < rounds; r++ { // round -1 warms the connections
		for _, size := range sizes {
			body := bytes.Repeat([]byte{0xab}, size)
			for _, kind := range largeMsgKinds {
				for i := range meshes {
					m := meshes[(i+r+1)%len(meshes)] // rotate who goes first
					start := time.Now()
					if err := kind.call(ctx, m, body); err != nil {
						t.Fatalf("%s %s %d: %v", m.name, kind.name, size, err)
					}
					if r >= 0 {
						k := key{m.name, kind.name, size}
						took[k] = append(took[k], time.Since(start))
					}
				}
			}
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "load before %s, after %s; %d rounds; median (p90) ms\n%-10s %-8s", load, loadavg(), rounds, "kind", "size")
	for _, m := range meshes {
		fmt.Fprintf(&out, " %16s", m.name)
	}
	out.WriteString("\n")
	for _, kind := range largeMsgKinds {
		for _, size := range sizes {
			fmt.Fprintf(&out, "%-10s %-8s", kind.name, fmt.Sprintf("%dK", size>>10))
			for _, m := range meshes {
				d := took[key{m.name, kind.name, size}]
				slices.Sort(d)
				fmt.Fprintf(&out, " %7.1f (%6.1f)", ms(d[len(d)/2]), ms(d[len(d)*9/10]))
			}
			out.WriteString("\n")
		}
	}
	t.Log("\n" + out.String())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
