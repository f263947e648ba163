package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/smolvm/smolvm"
)

func TestLimitFlags(t *testing.T) {
	tests := []struct {
		args    []string
		want    smolvm.Limits
		wantErr string
	}{
		{nil, smolvm.Limits{}, ""},
		{[]string{"--cpu-limit", "0.5", "--memory-limit", "1024", "--disk-bps", "10M", "--disk-iops", "100", "--net-bps", "512Ki"},
			smolvm.Limits{CPU: 0.5, MemoryMiB: 1024, DiskBPS: 10_000_000, DiskIOPS: 100, NetBPS: 512 << 10}, ""},
		{[]string{"--disk-bps=1MiB/s"}, smolvm.Limits{DiskBPS: 1 << 20}, ""},
		{[]string{"--net-bps", "10Mbit"}, smolvm.Limits{}, "unknown suffix"},
		{[]string{"--cpu-limit", "half"}, smolvm.Limits{}, "invalid argument"},
	}
	for _, tt := range tests {
		var f vmFlags
		cmd := &cobra.Command{}
		f.register(cmd)
		err := cmd.ParseFlags(tt.args)
		var got smolvm.VMConfig
		if err == nil {
			got, err = f.config()
		}
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%q: error = %v, want one mentioning %q", tt.args, err, tt.wantErr)
		case tt.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tt.args, err)
		case tt.wantErr == "" && got.Limits != tt.want:
			t.Errorf("%q: limits = %+v, want %+v", tt.args, got.Limits, tt.want)
		}
	}
}

// TestUpdateKeepsOtherLimits: update changes only the limits it is
// given; 0 lifts one.
func TestUpdateKeepsOtherLimits(t *testing.T) {
	cur := smolvm.Limits{CPU: 0.5, MemoryMiB: 1024, DiskBPS: 1 << 20, NetBPS: 1 << 20}
	for _, tt := range []struct {
		args []string
		want smolvm.Limits
	}{
		{nil, cur},
		{[]string{"--cpu-limit", "0.25"}, smolvm.Limits{CPU: 0.25, MemoryMiB: 1024, DiskBPS: 1 << 20, NetBPS: 1 << 20}},
		{[]string{"--net-bps", "0", "--disk-iops", "50"}, smolvm.Limits{CPU: 0.5, MemoryMiB: 1024, DiskBPS: 1 << 20, DiskIOPS: 50}},
	} {
		cmd := newUpdateCmd(&globalOptions{})
		var f limitFlags
		cmd.ResetFlags()
		f.register(cmd.Flags())
		if err := cmd.ParseFlags(tt.args); err != nil {
			t.Fatal(err)
		}
		if got := f.over(cur, cmd.Flags()); got != tt.want {
			t.Errorf("%q: %+v, want %+v", tt.args, got, tt.want)
		}
	}
}

func TestStatsTable(t *testing.T) {
	ms := []*smolvm.Metrics{{
		ID: "web", CPU: smolvm.CPUMetrics{Usage: 0.256}, Memory: smolvm.MemoryMetrics{RSS: 150 << 20},
		Disk:   smolvm.DiskMetrics{ReadBytes: 1 << 20, WriteBytes: 3 << 30},
		Net:    &smolvm.NetMetrics{RxBytes: 2048, TxBytes: 10},
		Guest:  &smolvm.GuestMetrics{MemTotal: 512 << 20, MemAvailable: 412 << 20},
		Limits: smolvm.Limits{MemoryMiB: 768},
	}, {ID: "user-mode"}}
	var b bytes.Buffer
	if err := statsTable(&b, ms); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"ID", "web", "25.6%", "150.0MiB / 768.0MiB", "100.0MiB / 512.0MiB", "1.0MiB / 3.0GiB", "2.0KiB / 10B", "user-mode", "?"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// --json is the samples themselves.
	j, _ := json.Marshal(ms[:1])
	var back []smolvm.Metrics
	if err := json.Unmarshal(j, &back); err != nil || back[0].Guest.MemTotal != 512<<20 {
		t.Errorf("round trip: %v %+v", err, back)
	}
}

func TestFormatLimits(t *testing.T) {
	got := formatLimits(smolvm.Limits{CPU: 0.5, MemoryMiB: 700, DiskBPS: 5_000_000, DiskIOPS: 100, NetBPS: 1 << 20})
	if want := "cpu 0.5, memory 700 MiB, disk 5M/s, disk 100 IOPS, net 1Mi/s"; got != want {
		t.Errorf("formatLimits = %q, want %q", got, want)
	}
	for n, want := range map[int64]string{1500: "1500", 65536: "64Ki", 2_000_000: "2M", 3 << 30: "3Gi"} {
		if got := formatRate(n); got != want {
			t.Errorf("formatRate(%d) = %q, want %q", n, got, want)
		}
	}
}
