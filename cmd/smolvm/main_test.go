package main

import (
	"os"
	"testing"
)

// TestMain gives this package's VMs (in every smolvm the tests run) an
// address pool of their own: state directories do not know each other's
// leases, so VMs of other tests on this machine, which lease from the low
// end of the default pool (each test package has a part of its own), would otherwise take addresses these tests'
// VMs are given, and fail their starts. SMOLVM_SUBNET, when set, is kept.
func TestMain(m *testing.M) {
	if sock := os.Getenv("SMOLVM_TEST_RELAY"); sock != "" {
		os.Exit(relay(sock)) // this binary as the egress relay (relay_test.go)
	}
	if os.Getenv("SMOLVM_SUBNET") == "" {
		os.Setenv("SMOLVM_SUBNET", "172.29.32.0/19")
	}
	os.Exit(m.Run())
}
