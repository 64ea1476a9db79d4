package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/quicmesh/quicmesh/internal/echo"
)

func h1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableCompression: true}}
}

func h2cClient() *http.Client {
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

// httpGet checks a GET round trip and which protocol the app spoke and
// which caller identity it was told.
func httpGet(ctx context.Context, c *http.Client, url, wantAppProto string) (string, error) {
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/?size=1024", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, echo.Body(1024)) {
		return "", fmt.Errorf("status %d, %d body bytes (proxy error: %q)", resp.StatusCode, len(body), resp.Header.Get("Quicmesh-Proxy-Error"))
	}
	if got := resp.Header.Get("Echo-Proto"); got != wantAppProto {
		return "", fmt.Errorf("app spoke %s, want %s", got, wantAppProto)
	}
	if got := resp.Header.Get("Echo-Peer-Identity"); got != demoClientID {
		return "", fmt.Errorf("app was told the caller is %q, want %q", got, demoClientID)
	}
	return fmt.Sprintf("200, app spoke %s, caller verified", resp.Header.Get("Echo-Proto")), nil
}

func httpPost(ctx context.Context, c *http.Client, url string, size int) (string, error) {
	defer c.CloseIdleConnections()
	payload := make([]byte, size)
	rand.NewChaCha8([32]byte{2}).Read(payload)
	t0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/", bytes.NewReader(payload))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return "", err
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), sha256Sum(payload)) {
		return "", fmt.Errorf("echoed %d of %d bytes or content differs", n, size)
	}
	return fmt.Sprintf("%s byte-identical%s", byteSize(size), throughput(size, time.Since(t0))), nil
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func grpcUnary(ctx context.Context, addr string) (string, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer cc.Close()
	var hdr metadata.MD
	const n = 100
	t0 := time.Now()
	for i := range n {
		msg := []byte(fmt.Sprintf("hello %d", i))
		resp, err := echo.EchoUnary(ctx, cc, msg, grpc.Header(&hdr))
		if err != nil {
			return "", err
		}
		if !bytes.Equal(resp, msg) {
			return "", fmt.Errorf("echo %q, want %q", resp, msg)
		}
	}
	if v := hdr.Get(echo.MDPeerIdentity); len(v) != 1 || v[0] != demoClientID {
		return "", fmt.Errorf("app was told the caller is %v, want %s", v, demoClientID)
	}
	return fmt.Sprintf("%d calls, mean %s", n, (time.Since(t0) / n).Round(time.Microsecond)), nil
}

func grpcBidi(ctx context.Context, addr string, n int) (string, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer cc.Close()
	b, err := echo.Bidi(ctx, cc)
	if err != nil {
		return "", err
	}
	for i := range n {
		msg := []byte(fmt.Sprintf("m%d", i))
		resp, err := b.RoundTrip(msg)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(resp, msg) {
			return "", fmt.Errorf("echo %q, want %q", resp, msg)
		}
	}
	if err := b.CloseSend(); err != nil {
		return "", err
	}
	if _, err := b.Recv(); err != io.EOF {
		return "", fmt.Errorf("stream ended with %v, want a clean end", err)
	}
	return fmt.Sprintf("%d interleaved round trips on one stream", n), nil
}
