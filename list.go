package smolvm

import (
	"context"
	"errors"
)

// List returns every VM in the state directory, each reconciled with its
// process.
func List(ctx context.Context, opts ...Option) ([]VMInfo, error) {
	s := newSettings(opts)
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
		out = append(out, v.Info())
	}
	return out, nil
}
