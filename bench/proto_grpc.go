package bench

import (
	"bytes"
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/quicmesh/quicmesh/internal/echo"
)

// grpcTarget drives the internal/echo gRPC service over Connections client
// connections shared round-robin by the workers: "grpc" makes unary Echo
// calls, "grpc-stream" keeps one Bidi stream per worker and counts each
// message round trip as a request.
type grpcTarget struct {
	stream  bool
	payload []byte
	conns   []*grpc.ClientConn
	// ctx ends the workers' streams when the run is over.
	ctx    context.Context
	cancel context.CancelFunc
}

func newGRPCTarget(cfg Config) (*grpcTarget, error) {
	t := &grpcTarget{
		stream:  cfg.Proto == ProtoGRPCStream,
		payload: bytes.Repeat([]byte("x"), cfg.Payload),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	for range cfg.Connections {
		cc, err := echo.Dial(cfg.Target, grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxPayload+1024), grpc.MaxCallSendMsgSize(MaxPayload+1024)))
		if err != nil {
			t.close()
			return nil, fmt.Errorf("grpc client for %q: %v", cfg.Target, err)
		}
		t.conns = append(t.conns, cc)
	}
	return t, nil
}

func (t *grpcTarget) requester(worker int) requester {
	cc := t.conns[worker%len(t.conns)]
	if t.stream {
		return &grpcStreamRequester{t: t, cc: cc}
	}
	return &grpcUnaryRequester{t: t, cc: cc}
}

// preconnect connects every client connection and waits until each is
// ready or has failed.
func (t *grpcTarget) preconnect(ctx context.Context) {
	for _, cc := range t.conns {
		cc.Connect()
	}
	for _, cc := range t.conns {
		for {
			s := cc.GetState()
			if s == connectivity.Ready || s == connectivity.TransientFailure || s == connectivity.Shutdown {
				break
			}
			if !cc.WaitForStateChange(ctx, s) {
				return
			}
		}
	}
}

func (t *grpcTarget) close() {
	t.cancel()
	for _, cc := range t.conns {
		cc.Close()
	}
}

type grpcUnaryRequester struct {
	t  *grpcTarget
	cc *grpc.ClientConn
}

func (r *grpcUnaryRequester) close() {}

func (r *grpcUnaryRequester) do(ctx context.Context) (int64, error) {
	out, err := echo.EchoUnary(ctx, r.cc, r.t.payload)
	if err != nil {
		return 0, err
	}
	if len(out) != len(r.t.payload) {
		return int64(len(out)), badResponseError{fmt.Sprintf("echoed %d bytes of %d", len(out), len(r.t.payload))}
	}
	return int64(len(out)), nil
}

type grpcStreamRequester struct {
	t      *grpcTarget
	cc     *grpc.ClientConn
	s      *echo.BidiStream
	cancel context.CancelFunc
}

func (r *grpcStreamRequester) close() {
	if r.s != nil {
		r.s.CloseSend()
		r.cancel()
		r.s = nil
	}
}

// open starts the worker's stream if it has none.
func (r *grpcStreamRequester) open() error {
	if r.s != nil {
		return nil
	}
	sctx, cancel := context.WithCancel(r.t.ctx)
	s, err := echo.Bidi(sctx, r.cc)
	if err != nil {
		cancel()
		return err
	}
	r.s, r.cancel = s, cancel
	return nil
}

func (r *grpcStreamRequester) preconnect(context.Context) {
	// The connection is ready (grpcTarget.preconnect runs first); a
	// stream that fails to open here is retried by the first request.
	_ = r.open()
}

func (r *grpcStreamRequester) do(ctx context.Context) (int64, error) {
	if err := r.open(); err != nil {
		return 0, err
	}
	// A stream outlives requests: the request's deadline or cancellation
	// ends the stream, and the next request opens a new one.
	stop := context.AfterFunc(ctx, r.cancel)
	out, err := r.s.RoundTrip(r.t.payload)
	stop()
	if err != nil {
		r.cancel()
		r.s = nil
		return 0, err
	}
	if len(out) != len(r.t.payload) {
		return int64(len(out)), badResponseError{fmt.Sprintf("echoed %d bytes of %d", len(out), len(r.t.payload))}
	}
	return int64(len(out)), nil
}
