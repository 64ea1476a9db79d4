package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/echo"
)

// callResult is what 'lab call' prints, one JSON object: what answered
// and what the server app saw.
type callResult struct {
	Proto  string `json:"proto"`
	Target string `json:"target"`
	OK     bool   `json:"ok"`
	// ServerAddr is the address and port the server app was reached at
	// (Echo-Local-Addr), PeerIdentity the SPIFFE ID its sidecar vouched
	// for (Echo-Peer-Identity); both empty for TCP, which has no way to
	// tell.
	ServerAddr   string `json:"server_addr,omitempty"`
	PeerIdentity string `json:"peer_identity,omitempty"`
	Error        string `json:"error,omitempty"`
}

// runLabCall is the client the lab's demo and tests run inside a pod: a
// plain net/http, x/net/http2 (h2c) or grpc-go client, or a raw TCP one,
// with no proxy settings at all. It exits 0 when the call worked.
func runLabCall(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev lab call", `Usage: quicmesh-dev lab call --proto http1|h2c|grpc|tcp --target HOST:PORT

Calls a bundled echo app at HOST:PORT (a DNS name, a service's virtual IP,
a pod IP) as an ordinary client would, with no proxy configuration, and
prints one JSON object: whether it worked, the address the server app was
reached at and the caller identity the server's sidecar vouched for.
`, stdout, stderr)
	proto := c.Flags.String("proto", "http1", "http1, h2c, grpc or tcp")
	target := c.Flags.String("target", "", "HOST:PORT to call")
	timeout := c.Flags.Duration("timeout", 10*time.Second, "bound on the whole call")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if _, _, err := net.SplitHostPort(*target); err != nil {
		return c.Fail("--target %q: want HOST:PORT", *target)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res := callResult{Proto: *proto, Target: *target}
	var err error
	switch *proto {
	case "http1":
		err = callHTTP(ctx, &http.Client{Transport: &http.Transport{Proxy: nil}}, *target, &res)
	case "h2c":
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
		err = callHTTP(ctx, &http.Client{Transport: tr}, *target, &res)
	case "grpc":
		err = callGRPC(ctx, *target, &res)
	case "tcp":
		err = callTCP(ctx, *target)
	default:
		return c.Fail("--proto: unknown protocol %q (want http1, h2c, grpc or tcp)", *proto)
	}
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	b, _ := json.Marshal(res)
	fmt.Fprintln(stdout, string(b))
	if err != nil {
		return cli.ExitFail
	}
	return cli.ExitOK
}

func callHTTP(ctx context.Context, client *http.Client, target string, res *callResult) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+"/", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	res.ServerAddr = resp.Header.Get(echo.HeaderLocalAddr)
	res.PeerIdentity = resp.Header.Get(echo.HeaderPeerIdentity)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

func callGRPC(ctx context.Context, target string, res *callResult) error {
	// The default resolver (dns) reads the pod's /etc/hosts like any app.
	cc, err := echo.Dial(target)
	if err != nil {
		return err
	}
	defer cc.Close()
	var header metadata.MD
	msg := []byte("hello from lab call")
	out := new([]byte)
	if err := cc.Invoke(ctx, echo.MethodEcho, &msg, out, grpc.Header(&header)); err != nil {
		return err
	}
	if !bytes.Equal(*out, msg) {
		return fmt.Errorf("echoed %q, want %q", *out, msg)
	}
	if v := header.Get(echo.MDLocalAddr); len(v) > 0 {
		res.ServerAddr = v[0]
	}
	if v := header.Get(echo.MDPeerIdentity); len(v) > 0 {
		res.PeerIdentity = v[0]
	}
	return nil
}

func callTCP(ctx context.Context, target string) error {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	// Not text an HTTP parser could take for a request line: the far
	// sidecar only splices raw to an app whose protocol it does not know
	// when no HTTP/1 parser could read the bytes (proxy/inbound).
	msg := []byte("\x00\x01raw TCP from lab call\n")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}
