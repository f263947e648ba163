package agent

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		in      string
		want    BootConfig
		wantErr bool
	}{
		{in: "console=ttyS0 quiet", want: BootConfig{Root: "/dev/vda", RootType: "ext4"}},
		{
			in: "quiet smolvm.ip=172.29.0.2/30 smolvm.gw=172.29.0.1 smolvm.dns=1.1.1.1,8.8.8.8 smolvm.hostname=web smolvm.root=/dev/vdb smolvm.debug",
			want: BootConfig{
				IP: netip.MustParsePrefix("172.29.0.2/30"), Gateway: netip.MustParseAddr("172.29.0.1"),
				DNS:      []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8")},
				Hostname: "web", Root: "/dev/vdb", RootType: "ext4", Debug: true,
			},
		},
		{in: "smolvm.mount=smol0:/data:ro smolvm.mount=smol1:/mnt/w:rw", want: BootConfig{Root: "/dev/vda", RootType: "ext4",
			Mounts: []Mount{{Tag: "smol0", Path: "/data", ReadOnly: true}, {Tag: "smol1", Path: "/mnt/w"}}}},
		{in: "smolvm.mount=smol0:relative:ro", wantErr: true},
		{in: "smolvm.mount=smol0:/x:maybe", wantErr: true},
		{in: "smolvm.ip=300.1.1.1/24", wantErr: true},
		{in: "smolvm.gw=nope", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseCmdline(tt.in)
		if (err != nil) != tt.wantErr {
			t.Fatalf("%q: err = %v, wantErr %v", tt.in, err, tt.wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
}
