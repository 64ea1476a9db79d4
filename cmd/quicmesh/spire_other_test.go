//go:build !linux

package main

import "testing"

// TestSPIRE (spire_test.go) runs sidecars under other UIDs for SPIRE's
// unix workload attestor, which needs Linux.
func TestSPIRE(t *testing.T) {
	t.Skip("the real-SPIRE test runs on Linux only (unix workload attestor by UID, SysProcAttr.Credential)")
}
