package transport

import (
	"context"
	"fmt"
	"io"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// ControlStreamType opens a unidirectional stream that carries one mesh
// control message (the drain handshake, docs/design.md "Draining and
// GOAWAY"). Like the tunnel header it is an HTTP/3 stream type HTTP/3
// does not define, so an HTTP/3 stack ignores it (quic-go's stops
// reading it), and a peer that does not know it loses nothing.
//
// The same value is the frame type of the one control message sent on a
// bidirectional stream, msgFinished, framed as an HTTP/3 frame (type,
// length, payload) so that an HTTP/3 server skips it as a frame type it
// does not know, and sees a request stream that ended before its HEADERS:
// a stream error, never a connection error.
const ControlStreamType uint64 = 0x2d51c0df

// Control messages. Unknown ones are ignored by both sides (the dialing
// side always has: its reader switches on the ones it knows), which is
// what lets a side add messages an older peer does not know.
const (
	// msgGoAway (accepting side to dialing side): the sender is draining;
	// open no new streams on this connection and send new work to other
	// endpoints.
	msgGoAway byte = 1
	// msgReconnect (accepting to dialing): the sender retires this
	// connection only (e.g. the certificate it was authenticated with
	// expired); open no new streams on it but dial a fresh connection
	// right away.
	msgReconnect byte = 2
	// msgDrainAware (dialing to accepting, once, when the connection is
	// taken into service): after a GOAWAY or a reconnect on this
	// connection the sender will say msgFinished. The accepting side then
	// waits for it, not for a quiet period.
	msgDrainAware byte = 3
	// msgFinished (dialing to accepting, on a bidirectional stream of its
	// own): the sender has opened its last stream on this connection and
	// every request and tunnel it had on it has ended on its side. As the
	// stream's ID is higher than that of every stream the sender opened
	// before, the accepting side knows which streams it still has to
	// receive.
	msgFinished byte = 4
)

// SendGoAway tells the peer that dialled conn that we are draining. HTTP/3
// GOAWAY would say the same for requests, but tunnels need it too, and the
// raw HTTP/3 server connection we use leaves its control stream to quic-go.
func SendGoAway(ctx context.Context, conn *quic.Conn) error {
	return sendControl(ctx, conn, msgGoAway)
}

// SendReconnect asks the peer that dialled conn to move to a new
// connection: this one is being retired, the sidecar is not going away.
func SendReconnect(ctx context.Context, conn *quic.Conn) error {
	return sendControl(ctx, conn, msgReconnect)
}

func sendControl(ctx context.Context, conn *quic.Conn, msg byte) error {
	str, err := conn.OpenUniStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("transport: opening control stream: %w", err)
	}
	return writeControl(str, msg)
}

// sayDrainAware sends msgDrainAware without waiting: the stream is
// opened only if the peer's stream credit allows it right away (HTTP/3
// peers grant uni streams with the handshake), and its 5 bytes fit any
// stream window. A peer that does not hear it treats us as an older
// version: the drain still works, with the quiet period.
func sayDrainAware(conn *quic.Conn) error {
	str, err := conn.OpenUniStream()
	if err != nil {
		return fmt.Errorf("transport: opening control stream: %w", err)
	}
	return writeControl(str, msgDrainAware)
}

// writeControl sends msg as the whole of the control stream str.
func writeControl(str *quic.SendStream, msg byte) error {
	b := quicvarint.Append(make([]byte, 0, 5), ControlStreamType)
	if _, err := str.Write(append(b, msg)); err != nil {
		str.CancelWrite(CodeNoError)
		return fmt.Errorf("transport: sending control message %d: %w", msg, err)
	}
	return str.Close()
}

// finishedFrame is msgFinished as sent on its bidirectional stream: an
// HTTP/3-shaped frame of type ControlStreamType with a one-byte payload.
var finishedFrame = func() []byte {
	b := quicvarint.Append(nil, ControlStreamType)
	b = quicvarint.Append(b, 1)
	return append(b, msgFinished)
}()

// sendFinished opens a bidirectional stream on conn and sends msgFinished
// on it. Nothing is read from it: the peer only has to receive it.
func sendFinished(ctx context.Context, conn *quic.Conn) error {
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("transport: opening the finished stream: %w", err)
	}
	str.CancelRead(CodeNoError)
	if _, err := str.Write(finishedFrame); err != nil {
		str.CancelWrite(CodeNoError)
		return fmt.Errorf("transport: sending finished: %w", err)
	}
	return str.Close()
}

// readControl reads the control message of a stream that starts with
// ControlStreamType.
func readControl(str *quic.ReceiveStream) (byte, error) {
	var b [5]byte
	n := quicvarint.Len(ControlStreamType)
	if _, err := io.ReadFull(str, b[:n+1]); err != nil {
		return 0, err
	}
	return b[n], nil
}

// readControlFrame reads the control message of a bidirectional stream
// whose first varint is ControlStreamType: the frame's length, then its
// payload, whose first byte is the message (the rest is for later
// versions and skipped, bounded).
func readControlFrame(str io.Reader) (byte, error) {
	r := quicvarint.NewReader(str)
	if _, err := quicvarint.Read(r); err != nil { // the type
		return 0, err
	}
	n, err := quicvarint.Read(r)
	if err != nil {
		return 0, err
	}
	if n == 0 || n > maxControlFrame {
		return 0, fmt.Errorf("transport: control frame of %d bytes", n)
	}
	var msg [1]byte
	if _, err := io.ReadFull(str, msg[:]); err != nil {
		return 0, err
	}
	if _, err := io.CopyN(io.Discard, str, int64(n-1)); err != nil {
		return 0, err
	}
	return msg[0], nil
}

// maxControlFrame bounds the payload of a control frame.
const maxControlFrame = 64

// isControlStream peeks at the stream type of a unidirectional stream.
func isControlStream(str *quic.ReceiveStream) bool {
	t, err := quicvarint.Peek(str)
	return err == nil && t == ControlStreamType
}
