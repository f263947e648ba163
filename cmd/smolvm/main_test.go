package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"testing"
)

// TestMain gives this package's VMs (in every smolvm the tests run) an
// address pool of their own: state directories do not know each other's
// leases, so VMs of other tests on this machine, which lease from the low
// end of the default pool, would otherwise take addresses these tests'
// VMs are given, and fail their starts. SMOLVM_SUBNET, when set, is kept.
func TestMain(m *testing.M) {
	if os.Getenv("SMOLVM_SUBNET") == "" {
		var b [1]byte
		rand.Read(b[:])
		os.Setenv("SMOLVM_SUBNET", fmt.Sprintf("172.29.%d.0/24", 128+int(b[0])%128))
	}
	os.Exit(m.Run())
}
