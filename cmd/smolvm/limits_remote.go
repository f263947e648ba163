package main

import (
	"context"

	"github.com/smolvm/smolvm"
)

func (v *remoteVM) SetLimits(ctx context.Context, l smolvm.Limits) error {
	if err := v.c.SetLimits(ctx, v.info.ID, l); err != nil {
		return err
	}
	v.info.Config.Limits = l
	return nil
}

func (v *remoteVM) Metrics(ctx context.Context) (*smolvm.Metrics, error) {
	return v.c.Metrics(ctx, v.info.ID)
}
