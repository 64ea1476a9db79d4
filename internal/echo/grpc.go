package echo

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// gRPC names of the echo service.
const (
	// ServiceName is the fully qualified gRPC service name.
	ServiceName = "quicmesh.bench.Echo"
	// MethodEcho is unary: the response is the request.
	MethodEcho = "/" + ServiceName + "/Echo"
	// MethodStream is server-streaming: the response is N copies of the
	// request, N from the request metadata key [MDCount] (default 1).
	MethodStream = "/" + ServiceName + "/Stream"
	// MethodCollect is client-streaming: the response is the concatenation
	// of all request messages.
	MethodCollect = "/" + ServiceName + "/Collect"
	// MethodBidi is bidirectional: every request message is sent back as
	// soon as it is received.
	MethodBidi = "/" + ServiceName + "/Bidi"

	// CodecName is the name of the raw-bytes codec; on the wire the
	// content-type is "application/grpc+quicmesh-raw".
	CodecName = "quicmesh-raw"

	// MDCount is the request metadata key giving Stream's number of copies.
	MDCount = "echo-count"
	// MDAuthority is the response header key carrying the :authority the
	// server saw.
	MDAuthority = "echo-authority"
	// MDPeerIdentity is the response header key carrying the values of the
	// request metadata key "quicmesh-peer-identity".
	MDPeerIdentity = "echo-peer-identity"
	// MDLocalAddr is the response header key carrying the server's end of
	// the connection: which address and port the app was reached at.
	MDLocalAddr = "echo-local-addr"
	// MDTrailer is a trailer key always set to "done".
	MDTrailer = "echo-trailer"
	// MDEchoPrefix prefixes echoed request metadata keys: request key K
	// comes back as "echo-K" in both the header and the trailer.
	MDEchoPrefix = "echo-"
)

// MaxStreamCount bounds [MDCount].
const MaxStreamCount = 1 << 20

// Codec is the raw-bytes gRPC codec: messages are []byte (or *[]byte) sent
// as they are. It is never put in grpc's global codec registry (importing
// this package changes nothing elsewhere in the process): the echo server
// selects it with grpc.ForceServerCodecV2 and the client helpers with
// grpc.ForceCodecV2, which also sends content-subtype [CodecName].
var Codec encoding.CodecV2 = rawCodec{}

type rawCodec struct{}

func (rawCodec) Name() string { return CodecName }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case []byte:
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	}
	return nil, fmt.Errorf("echo: %s codec cannot marshal %T", CodecName, v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("echo: %s codec cannot unmarshal into %T", CodecName, v)
	}
	*p = data.Materialize()
	return nil
}

// service is the handler type the serviceDesc requires.
type service interface{ echoService() }

type echoImpl struct{}

func (echoImpl) echoService() {}

// serviceDesc describes the echo service without generated stubs.
//
// Control messages: a request message starting with "status:CODE" or
// "status:CODE:message" (CODE a number or a name such as UNAVAILABLE)
// makes the call fail with that status; one starting with "sleep:DURATION"
// (up to an optional newline, Go duration syntax) is answered after that
// delay, or fails with the context's status if the deadline comes first.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*service)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler:    handleUnary,
	}},
	Streams: []grpc.StreamDesc{
		{StreamName: "Stream", Handler: handleStream, ServerStreams: true},
		{StreamName: "Collect", Handler: handleCollect, ClientStreams: true},
		{StreamName: "Bidi", Handler: handleBidi, ServerStreams: true, ClientStreams: true},
	},
	Metadata: "quicmesh/internal/echo (hand-written, raw bytes)",
}

// StartGRPC serves the echo service on ln. The server forces [Codec], so it
// also answers clients that send plain application/grpc (their message
// bytes are echoed untouched). Extra options are appended.
func StartGRPC(ln net.Listener, opts ...grpc.ServerOption) *Server {
	opts = append([]grpc.ServerOption{grpc.ForceServerCodecV2(Codec), grpc.WaitForHandlers(true)}, opts...)
	s := grpc.NewServer(opts...)
	s.RegisterService(&serviceDesc, echoImpl{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.Serve(ln)
	}()
	return newServer("grpc", ln, s.Stop, func() { <-served })
}

// ListenGRPC listens on addr and calls [StartGRPC].
func ListenGRPC(addr string, opts ...grpc.ServerOption) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return StartGRPC(ln, opts...), nil
}

// echoMD builds the response header/trailer metadata from the request's.
func echoMD(ctx context.Context) metadata.MD {
	out := metadata.MD{}
	if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil {
		out.Set(MDLocalAddr, p.LocalAddr.String())
	}
	in, _ := metadata.FromIncomingContext(ctx)
	for k, vs := range in {
		switch {
		case k == ":authority":
			out.Append(MDAuthority, vs...)
		case k == "quicmesh-peer-identity":
			out.Append(MDPeerIdentity, vs...)
			out.Append(MDEchoPrefix+k, vs...)
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"),
			k == "content-type", k == "user-agent", k == "te":
		default:
			out.Append(MDEchoPrefix+k, vs...)
		}
	}
	return out
}

func trailerMD(ctx context.Context) metadata.MD {
	md := echoMD(ctx)
	md.Set(MDTrailer, "done")
	return md
}

// control interprets the control prefixes of a request message.
func control(ctx context.Context, msg []byte) error {
	switch {
	case bytes.HasPrefix(msg, []byte("status:")):
		rest := string(msg[len("status:"):])
		codeStr, text, _ := strings.Cut(rest, ":")
		code, ok := parseCode(codeStr)
		if !ok {
			return status.Errorf(codes.InvalidArgument, "echo: bad status control %q", codeStr)
		}
		if text == "" {
			text = "echo: requested status " + code.String()
		}
		return status.Error(code, text)
	case bytes.HasPrefix(msg, []byte("sleep:")):
		rest := msg[len("sleep:"):]
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[:i]
		}
		d, err := time.ParseDuration(string(rest))
		if err != nil || d < 0 {
			return status.Errorf(codes.InvalidArgument, "echo: bad sleep control %q", rest)
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	return ctx.Err()
}

func parseCode(s string) (codes.Code, bool) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return codes.Code(n), true
	}
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(s)))); err != nil {
		return 0, false
	}
	return c, true
}

func handleUnary(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	h := func(ctx context.Context, req any) (any, error) {
		_ = grpc.SetHeader(ctx, echoMD(ctx))
		_ = grpc.SetTrailer(ctx, trailerMD(ctx))
		msg := req.([]byte)
		if err := control(ctx, msg); err != nil {
			return nil, err
		}
		return msg, nil
	}
	if interceptor == nil {
		return h(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: echoImpl{}, FullMethod: MethodEcho}, h)
}

func handleStream(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	n := 1
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(MDCount); len(v) > 0 {
			c, err := strconv.Atoi(v[0])
			if err != nil || c < 0 || c > MaxStreamCount {
				return status.Errorf(codes.InvalidArgument, "echo: bad %s %q", MDCount, v[0])
			}
			n = c
		}
	}
	ss.SetTrailer(trailerMD(ctx))
	var in []byte
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	if err := ss.SendHeader(echoMD(ctx)); err != nil {
		return err
	}
	if err := control(ctx, in); err != nil {
		return err
	}
	for range n {
		if err := ss.SendMsg(in); err != nil {
			return err
		}
	}
	return nil
}

func handleCollect(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	ss.SetTrailer(trailerMD(ctx))
	if err := ss.SendHeader(echoMD(ctx)); err != nil {
		return err
	}
	var all []byte
	for {
		var in []byte
		err := ss.RecvMsg(&in)
		if err != nil {
			if isEOF(err) {
				break
			}
			return err
		}
		if err := control(ctx, in); err != nil {
			return err
		}
		all = append(all, in...)
	}
	return ss.SendMsg(all)
}

func handleBidi(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	ss.SetTrailer(trailerMD(ctx))
	if err := ss.SendHeader(echoMD(ctx)); err != nil {
		return err
	}
	for {
		var in []byte
		if err := ss.RecvMsg(&in); err != nil {
			if isEOF(err) {
				return nil
			}
			return err
		}
		if err := control(ctx, in); err != nil {
			return err
		}
		if err := ss.SendMsg(in); err != nil {
			return err
		}
	}
}

// ---- client helpers ----

// CallOptions returns the call options that select the raw codec; the
// helpers below always add them.
func CallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.ForceCodecV2(Codec)}
}

// Dial returns a client connection to a plaintext gRPC server at addr
// (host:port) whose calls use the raw codec by default. It does not block;
// the connection is made on first use. Extra options are appended.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec)),
	}, opts...)
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

func callOpts(opts []grpc.CallOption) []grpc.CallOption {
	return append(CallOptions(), opts...)
}

// EchoUnary calls Echo with payload and returns the response message. Use
// grpc.Header / grpc.Trailer options to see the echoed metadata.
func EchoUnary(ctx context.Context, conn grpc.ClientConnInterface, payload []byte, opts ...grpc.CallOption) ([]byte, error) {
	var out []byte
	if err := conn.Invoke(ctx, MethodEcho, payload, &out, callOpts(opts)...); err != nil {
		return nil, err
	}
	return out, nil
}

// StreamN calls the server-streaming Stream method asking for n copies of
// payload and returns them.
func StreamN(ctx context.Context, conn grpc.ClientConnInterface, payload []byte, n int, opts ...grpc.CallOption) ([][]byte, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, MDCount, strconv.Itoa(n))
	cs, err := conn.NewStream(ctx, &serviceDesc.Streams[0], MethodStream, callOpts(opts)...)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(payload); err != nil && !isEOF(err) {
		return nil, err
	}
	if err := cs.CloseSend(); err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		var m []byte
		if err := cs.RecvMsg(&m); err != nil {
			if isEOF(err) {
				return out, nil
			}
			return out, err
		}
		out = append(out, m)
	}
}

// Collect calls the client-streaming Collect method with msgs and returns
// the server's single response (their concatenation).
func Collect(ctx context.Context, conn grpc.ClientConnInterface, msgs [][]byte, opts ...grpc.CallOption) ([]byte, error) {
	cs, err := conn.NewStream(ctx, &serviceDesc.Streams[1], MethodCollect, callOpts(opts)...)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if err := cs.SendMsg(m); err != nil {
			if isEOF(err) {
				break // the server ended the call; RecvMsg reports why
			}
			return nil, err
		}
	}
	if err := cs.CloseSend(); err != nil {
		return nil, err
	}
	var out []byte
	if err := cs.RecvMsg(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// BidiStream is a client's end of a Bidi call. Send and Recv may be used
// from two goroutines (one each); RoundTrip from one goroutine only.
type BidiStream struct {
	cs grpc.ClientStream
}

// Bidi opens a Bidi call. Cancel ctx, or CloseSend and Recv until an error,
// to end it.
func Bidi(ctx context.Context, conn grpc.ClientConnInterface, opts ...grpc.CallOption) (*BidiStream, error) {
	cs, err := conn.NewStream(ctx, &serviceDesc.Streams[2], MethodBidi, callOpts(opts)...)
	if err != nil {
		return nil, err
	}
	return &BidiStream{cs: cs}, nil
}

// Send sends one message. If the server has ended the call it returns
// io.EOF; Recv then returns the call's status.
func (b *BidiStream) Send(p []byte) error { return b.cs.SendMsg(p) }

// Recv receives one message; io.EOF means the server ended the call with
// status OK.
func (b *BidiStream) Recv() ([]byte, error) {
	var m []byte
	if err := b.cs.RecvMsg(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// RoundTrip sends p and receives the echo. If the send fails because the
// server ended the call, the call's status error is returned.
func (b *BidiStream) RoundTrip(p []byte) ([]byte, error) {
	if err := b.cs.SendMsg(p); err != nil {
		if isEOF(err) {
			_, rerr := b.Recv()
			if rerr != nil && !isEOF(rerr) {
				return nil, rerr
			}
		}
		return nil, err
	}
	return b.Recv()
}

// CloseSend half-closes the call.
func (b *BidiStream) CloseSend() error { return b.cs.CloseSend() }

// Header returns the response header metadata, waiting for it.
func (b *BidiStream) Header() (metadata.MD, error) { return b.cs.Header() }

// Trailer returns the trailer metadata; valid after Recv returned an error.
func (b *BidiStream) Trailer() metadata.MD { return b.cs.Trailer() }

// Context returns the call's context.
func (b *BidiStream) Context() context.Context { return b.cs.Context() }
