// Package testkit is the shared support for quicmesh's tests: the hang
// guard and Eventually (waits that give up only at the test binary's own
// deadline), the goroutine-leak check, log capture, and HTTP/1.1, h2c and
// gRPC clients closed with the test. It imports nothing from quicmesh, so
// that any package's tests, internal or external, can use it; the mesh
// builder, which needs the sidecar, is the subpackage meshtest.
//
// Only tests may import it (TestOnlyTestsImportTestkit checks).
package testkit
