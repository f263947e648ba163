package qemu

import "testing"

func TestParseBlockStats(t *testing.T) {
	tests := []struct {
		name, in string
		want     BlockStats
		bad      bool
	}{
		{"drive", `[{"device":"root","node-name":"#block123","qdev":"/machine/peripheral-anon/device[0]/virtio-backend","stats":{"rd_bytes":10,"wr_bytes":20,"rd_operations":1,"wr_operations":2}}]`,
			BlockStats{ReadBytes: 10, WriteBytes: 20, ReadOps: 1, WriteOps: 2}, false},
		{"blockdev (a clone's overlay)", `[{"device":"","qdev":"/machine/peripheral-anon/device[0]/virtio-backend","stats":{"rd_bytes":5,"wr_bytes":6,"rd_operations":7,"wr_operations":8}}]`,
			BlockStats{ReadBytes: 5, WriteBytes: 6, ReadOps: 7, WriteOps: 8}, false},
		{"none", `[]`, BlockStats{}, true},
		{"not JSON", `{`, BlockStats{}, true},
	}
	for _, tt := range tests {
		got, err := parseBlockStats([]byte(tt.in))
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("%s: got %+v, %v; want %+v (error %v)", tt.name, got, err, tt.want, tt.bad)
		}
	}
}
