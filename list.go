package smolvm

import (
	"context"
	"errors"
)

// List returns every VM in the state directory, each reconciled with its
// process, or those WithLabelFilter selects. Like every look at a VM, it
// ends VMs whose lifetime is over (a deleted one is not listed) and
// restarts a running VM's missing keeper (docs/lifetimes.md).
func List(ctx context.Context, opts ...Option) ([]VMInfo, error) {
	s := newSettings(opts)
	filter, err := parseLabelFilter(s.labelFilter)
	if err != nil {
		return nil, opError("list", "", err)
	}
	st, err := openStore(ctx, s)
	if err != nil {
		return nil, opError("list", "", err)
	}
	defer st.Close()
	rows, err := st.ListVMs(ctx)
	if err != nil {
		return nil, opError("list", "", err)
	}
	out := make([]VMInfo, 0, len(rows))
	for _, row := range rows {
		v := &VM{s: s, st: st, id: row.ID, paths: newPaths(s.home, row.ID)}
		if err := v.setFromRow(row); err != nil {
			return nil, opError("list", row.ID, err)
		}
		if err := v.reconcile(ctx); errors.Is(err, ErrNotFound) {
			continue // its create was interrupted; reconcile removed it
		} else if err != nil {
			return nil, opError("list", row.ID, err)
		}
		if err := v.expireOnLook(ctx); errors.Is(err, ErrNotFound) {
			continue // expired and deleted
		} else if err != nil {
			return nil, opError("list", row.ID, err)
		}
		v.lookedAt(ctx)
		if !matchLabels(v.Info().Config.Labels, filter) {
			continue
		}
		out = append(out, v.Info())
	}
	return out, nil
}
