package bench

import (
	"bytes"
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/quicmesh/quicmesh/bench/echo"
)

// grpcTarget drives the bench/echo gRPC service over Connections client
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

func (r *grpcStreamRequester) do(ctx context.Context) (int64, error) {
	if r.s == nil {
		sctx, cancel := context.WithCancel(r.t.ctx)
		s, err := echo.Bidi(sctx, r.cc)
		if err != nil {
			cancel()
			return 0, err
		}
		r.s, r.cancel = s, cancel
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
