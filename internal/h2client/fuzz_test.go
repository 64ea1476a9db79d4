package h2client

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzAppBytes plays an app that sends the fuzzed bytes (after the
// client's preface has been read) and then closes the connection. Two
// requests, one with a body, are in flight. Whatever the bytes, the
// client must neither panic nor hang: each request ends with an error,
// or with a response whose body reads to an end; the read loop ends.
func FuzzAppBytes(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := New(Config{
			StreamWindow: 1 << 10, MaxStreams: 2, MaxResponseHeaderBytes: 1 << 10,
			PingAfter: time.Hour, PingTimeout: 5 * time.Second,
			Fallback: failRT{t},
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				cn, app := net.Pipe()
				go func() {
					defer app.Close()
					go io.Copy(io.Discard, app)
					app.Write(data)
				}()
				return cn, nil
			},
		})
		defer func() {
			all := c.pool.all()
			c.Close()
			for _, cc := range all {
				<-cc.done
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errc := make(chan error, 2)
		for i := range 2 {
			go func() {
				var body io.Reader
				if i == 1 {
					body = bytes.NewReader(bytes.Repeat([]byte("b"), 3000))
				}
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://app:1/x", body)
				resp, err := c.RoundTrip(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				errc <- err
			}()
		}
		for range 2 {
			<-errc
		}
		if ctx.Err() != nil {
			t.Fatal("a request hung until the deadline")
		}
	})
}

func fuzzSeeds() [][]byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return bytes.Clone(hb.Bytes())
	}
	var seeds [][]byte
	add := func(frames func()) {
		buf.Reset()
		hb.Reset()
		enc = hpack.NewEncoder(&hb)
		fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
		frames()
		seeds = append(seeds, bytes.Clone(buf.Bytes()))
	}
	add(func() {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(":status", "200", "content-type", "application/grpc")})
		fr.WriteData(1, false, []byte("\x00\x00\x00\x00\x02hi"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: block("grpc-status", "0")})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, EndStream: true, BlockFragment: block(":status", "204")})
	})
	add(func() {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: false, BlockFragment: block(":status", "103", "link", "</a>")})
		fr.WriteContinuation(1, true, nil)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(":status", "200", "content-length", "2")})
		fr.WriteDataPadded(1, true, []byte("ok"), []byte{0, 0, 0})
		fr.WriteWindowUpdate(0, 1000)
		fr.WriteWindowUpdate(3, 1000)
		fr.WriteRSTStream(3, http2.ErrCodeRefusedStream)
	})
	add(func() {
		fr.WritePing(false, [8]byte{1})
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
		fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(":status", "200")})
		fr.WriteData(1, false, bytes.Repeat([]byte("d"), 1000))
		fr.WriteData(1, true, bytes.Repeat([]byte("d"), 100))
	})
	return seeds
}
