package smolvm_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/smolvm/smolvm"
)

// TestLimitsValidation checks each limit's bounds, with no VM: a bad
// limit is an ErrInvalid that names it and says how to fix it.
func TestLimitsValidation(t *testing.T) {
	home := t.TempDir()
	mem := smolvm.DefaultMemoryMiB
	tests := []struct {
		name string
		cfg  smolvm.VMConfig
		want string // "" = valid
	}{
		{"none", smolvm.VMConfig{}, ""},
		{"all", smolvm.VMConfig{VCPUs: 1, Limits: smolvm.Limits{CPU: 0.5, MemoryMiB: mem + smolvm.MemoryLimitMarginMiB, DiskBPS: 1 << 20, DiskIOPS: 100, NetBPS: 1 << 20}}, ""},
		{"cpu equal to vcpus", smolvm.VMConfig{Limits: smolvm.Limits{CPU: 1}}, ""},
		{"cpu least", smolvm.VMConfig{Limits: smolvm.Limits{CPU: smolvm.MinCPULimit}}, ""},
		{"cpu negative", smolvm.VMConfig{Limits: smolvm.Limits{CPU: -0.5}}, "invalid cpu limit"},
		{"cpu NaN", smolvm.VMConfig{Limits: smolvm.Limits{CPU: math.NaN()}}, "invalid cpu limit"},
		{"cpu infinite", smolvm.VMConfig{Limits: smolvm.Limits{CPU: math.Inf(1)}}, "invalid cpu limit"},
		{"cpu tiny", smolvm.VMConfig{Limits: smolvm.Limits{CPU: 0.001}}, "at least 0.01"},
		{"cpu above vcpus", smolvm.VMConfig{VCPUs: 1, Limits: smolvm.Limits{CPU: 1.5}}, "has 1 vCPUs"},
		{"memory negative", smolvm.VMConfig{Limits: smolvm.Limits{MemoryMiB: -1}}, "invalid memory limit"},
		{"memory below guest", smolvm.VMConfig{Limits: smolvm.Limits{MemoryMiB: mem}}, "must leave QEMU"},
		{"memory margin short", smolvm.VMConfig{Limits: smolvm.Limits{MemoryMiB: mem + smolvm.MemoryLimitMarginMiB - 1}}, "must leave QEMU"},
		{"memory of a bigger guest", smolvm.VMConfig{MemoryMiB: 1024, Limits: smolvm.Limits{MemoryMiB: 1024}}, "guest's 1024 MiB"},
		{"disk bps negative", smolvm.VMConfig{Limits: smolvm.Limits{DiskBPS: -1}}, "invalid disk bps"},
		{"disk bps tiny", smolvm.VMConfig{Limits: smolvm.Limits{DiskBPS: 1000}}, "at least 65536"},
		{"disk iops tiny", smolvm.VMConfig{Limits: smolvm.Limits{DiskIOPS: 1}}, "invalid disk iops"},
		{"net bps tiny", smolvm.VMConfig{Limits: smolvm.Limits{NetBPS: 100}}, "invalid net bps"},
		{"net bps huge", smolvm.VMConfig{Limits: smolvm.Limits{NetBPS: 1 << 40}}, "32 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate(smolvm.WithHome(home))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid limits refused: %v", err)
			case tt.want != "" && (!errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
	t.Run("net limit in user mode", func(t *testing.T) {
		cfg := smolvm.VMConfig{Limits: smolvm.Limits{NetBPS: 1 << 20}}
		_, err := smolvm.NewFromConfig(t.Context(), cfg, smolvm.WithHome(home), smolvm.WithNetwork(smolvm.NetworkUser))
		if !errors.Is(err, smolvm.ErrInvalid) || !strings.Contains(err.Error(), "needs TAP networking") {
			t.Fatalf("got %v, want ErrInvalid saying it needs TAP networking", err)
		}
	})
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		bad  bool
	}{
		{"0", 0, false},
		{"1024", 1024, false},
		{"10k", 10_000, false},
		{"10K", 10_000, false},
		{"10M", 10_000_000, false},
		{"1G", 1_000_000_000, false},
		{"2T", 2_000_000_000_000, false},
		{"512Ki", 512 << 10, false},
		{"1Mi", 1 << 20, false},
		{"1MiB", 1 << 20, false},
		{"1MiB/s", 1 << 20, false},
		{"10MB/s", 10_000_000, false},
		{"3Gi", 3 << 30, false},
		{" 7 ", 7, false},
		{"", 0, true},
		{"M", 0, true},
		{"-1M", 0, true},
		{"1.5M", 0, true},
		{"10m", 0, true}, // milli is no byte rate
		{"10Mbit", 0, true},
		{"99999999999999999999", 0, true},
		{"9000000Ti", 0, true}, // overflows int64
	}
	for _, tt := range tests {
		got, err := smolvm.ParseRate(tt.in)
		switch {
		case tt.bad && !errors.Is(err, smolvm.ErrInvalid):
			t.Errorf("ParseRate(%q) = %d, %v; want ErrInvalid", tt.in, got, err)
		case !tt.bad && (err != nil || got != tt.want):
			t.Errorf("ParseRate(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}
