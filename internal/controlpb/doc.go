// Package controlpb is the gRPC API between sidecars and the control plane
// (quicmesh-control): the Discovery and Identity services, generated from
// discovery.proto and identity.proto with protoc-gen-go and
// protoc-gen-go-grpc (`make proto`; the generated code is committed).
//
// The contract is the .proto files, not this Go package: it is internal so
// that only quicmesh's own binaries build on the generated types, and the
// top level of the repository stays the data plane's layout. Both sides of
// the wire live in this module: the sidecar's discovery/control and
// identity/control clients, and internal/control's servers.
package controlpb
