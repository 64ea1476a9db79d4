package dns

import (
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// TestMain fails the run if a goroutine the tests started outlives them:
// every watch's refresh loop and every lookup must end with Close.
func TestMain(m *testing.M) { testkit.Main(m) }
