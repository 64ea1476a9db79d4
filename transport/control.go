package transport

import (
	"context"
	"fmt"
	"io"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// ControlStreamType opens a unidirectional stream that carries a mesh
// control message from the accepting sidecar to the dialing one. Like the
// tunnel header it is an HTTP/3 stream type HTTP/3 does not define, so an
// HTTP/3 stack would ignore it.
const ControlStreamType uint64 = 0x2d51c0df

// Control messages.
const (
	// msgGoAway: the sender is draining; open no new streams on this
	// connection and send new work to other endpoints.
	msgGoAway byte = 1
	// msgReconnect: the sender retires this connection only (e.g. the
	// certificate it was authenticated with expired); open no new
	// streams on it but dial a fresh connection right away.
	msgReconnect byte = 2
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
	b := quicvarint.Append(nil, ControlStreamType)
	b = append(b, msg)
	if _, err := str.Write(b); err != nil {
		str.CancelWrite(CodeNoError)
		return fmt.Errorf("transport: sending goaway: %w", err)
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

// isControlStream peeks at the stream type of a unidirectional stream.
func isControlStream(str *quic.ReceiveStream) bool {
	t, err := quicvarint.Peek(str)
	return err == nil && t == ControlStreamType
}
