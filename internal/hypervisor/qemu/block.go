package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Throttle is a disk bandwidth and operation-rate limit; zero fields are
// unlimited.
type Throttle struct {
	BPS  int64 // bytes per second, read and write together
	IOPS int64 // operations per second, read and write together
}

// RootDrive names the VM's root disk: the BlockBackend of a -drive, or
// the node of a -blockdev (clones).
const RootDrive = "root"

// SetThrottle sets QEMU's own I/O throttling on the root disk (QMP
// block_set_io_throttle): the guest's requests beyond it wait in QEMU.
func (q *QMP) SetThrottle(t Throttle) error {
	dev, err := q.rootDevice()
	if err != nil {
		return err
	}
	args := map[string]any{
		"bps": t.BPS, "bps_rd": 0, "bps_wr": 0,
		"iops": t.IOPS, "iops_rd": 0, "iops_wr": 0,
	}
	for k, v := range dev {
		args[k] = v
	}
	_, err = q.Execute("block_set_io_throttle", args)
	return err
}

// rootDevice says how block_set_io_throttle finds the root disk: by the
// BlockBackend's name for a -drive, by the guest device's QOM path when
// the backend is anonymous (-blockdev).
func (q *QMP) rootDevice() (map[string]any, error) {
	ret, err := q.Execute("query-block", nil)
	if err != nil {
		return nil, err
	}
	var blocks []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &blocks); err != nil {
		return nil, fmt.Errorf("qmp query-block: %w", err)
	}
	for _, b := range blocks {
		switch {
		case b.Device == RootDrive:
			return map[string]any{"device": RootDrive}, nil
		case b.Inserted != nil && b.Inserted.NodeName == RootDrive && b.QDev != "":
			return map[string]any{"id": b.QDev}, nil
		}
	}
	return nil, errors.New("qmp query-block: no root disk")
}

// BlockStats are the root disk's counters since QEMU started.
type BlockStats struct {
	ReadBytes, WriteBytes int64
	ReadOps, WriteOps     int64
}

// RootBlockStats reads the root disk's counters (QMP query-blockstats).
func (q *QMP) RootBlockStats() (BlockStats, error) {
	ret, err := q.Execute("query-blockstats", nil)
	if err != nil {
		return BlockStats{}, err
	}
	return parseBlockStats(ret)
}

func parseBlockStats(ret json.RawMessage) (BlockStats, error) {
	var stats []struct {
		Device   string `json:"device"`
		NodeName string `json:"node-name"`
		QDev     string `json:"qdev"`
		Stats    struct {
			RdBytes      int64 `json:"rd_bytes"`
			WrBytes      int64 `json:"wr_bytes"`
			RdOperations int64 `json:"rd_operations"`
			WrOperations int64 `json:"wr_operations"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(ret, &stats); err != nil {
		return BlockStats{}, fmt.Errorf("qmp query-blockstats: %w", err)
	}
	// One entry per guest device (the root disk is the only one); with
	// -drive it is named, with -blockdev it is anonymous but has a qdev.
	for _, s := range stats {
		if s.Device == RootDrive || s.NodeName == RootDrive || (s.Device == "" && s.QDev != "") {
			return BlockStats{ReadBytes: s.Stats.RdBytes, WriteBytes: s.Stats.WrBytes, ReadOps: s.Stats.RdOperations, WriteOps: s.Stats.WrOperations}, nil
		}
	}
	return BlockStats{}, errors.New("qmp query-blockstats: no root disk")
}
