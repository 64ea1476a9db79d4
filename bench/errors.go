package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error kinds used as keys of Result.Errors. gRPC status errors are
// "grpc_" + the canonical code name, e.g. "grpc_UNAVAILABLE"; HTTP
// responses with status >= 300 are "http_3xx", "http_4xx" or "http_5xx".
const (
	ErrTimeout     = "timeout"      // the request exceeded --timeout
	ErrConnRefused = "conn_refused" // connection refused (target down)
	ErrReset       = "reset"        // connection reset, closed or cut short mid-request
	ErrBadResponse = "bad_response" // the echo did not match what was sent
	ErrOther       = "other"        // anything else
)

// httpStatusError reports a response with an unwanted status code.
type httpStatusError struct{ code int }

func (e httpStatusError) Error() string { return "http status " + strconv.Itoa(e.code) }

// badResponseError reports an echo that differs from the request.
type badResponseError struct{ msg string }

func (e badResponseError) Error() string { return "bad response: " + e.msg }

var grpcCodeNames = [...]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// grpcCodeName returns the canonical upper-case name of c.
func grpcCodeName(c codes.Code) string {
	if int(c) < len(grpcCodeNames) {
		return grpcCodeNames[c]
	}
	return "CODE_" + strconv.Itoa(int(c))
}

// classify maps a request error to its kind. ctx is the request's context:
// if it expired, the error is a timeout whatever layer reported it.
func classify(ctx context.Context, err error) string {
	if ctx != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrTimeout
	}
	var hs httpStatusError
	if errors.As(err, &hs) {
		return "http_" + strconv.Itoa(hs.code/100) + "xx"
	}
	var br badResponseError
	if errors.As(err, &br) {
		return ErrBadResponse
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK {
		return "grpc_" + grpcCodeName(s.Code())
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrConnRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ErrTimeout
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return ErrReset
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrTimeout
	}
	// net/http reports some connection losses only as text.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return ErrConnRefused
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"),
		strings.Contains(msg, "server closed"), strings.Contains(msg, "connection lost"),
		strings.Contains(msg, "unexpected EOF"), strings.Contains(msg, "GOAWAY"),
		strings.Contains(msg, "readLoop exiting"), strings.Contains(msg, "closed idle connection"):
		return ErrReset
	}
	return ErrOther
}

// checkTarget validates the form of a target for proto.
func checkTarget(proto, target string) error {
	switch proto {
	case ProtoHTTP1, ProtoH2C:
		_, _, err := parseHTTPTarget(target)
		return err
	}
	if strings.Contains(target, "://") {
		return fmt.Errorf("--target %q: want host:port for %s", target, proto)
	}
	if _, port, err := net.SplitHostPort(target); err != nil || port == "" {
		return fmt.Errorf("--target %q: want host:port for %s", target, proto)
	}
	return nil
}
