package apiclient

import (
	"context"
	"net/http"

	"github.com/smolvm/smolvm"
)

// SetLimits replaces a VM's limits (PUT /v1/vms/{id}/limits).
func (c *Client) SetLimits(ctx context.Context, id string, l smolvm.Limits) error {
	return c.call(ctx, http.MethodPut, "/vms/"+esc(id)+"/limits", nil, l, nil)
}

// Metrics samples a running VM (GET /v1/vms/{id}/metrics).
func (c *Client) Metrics(ctx context.Context, id string) (*smolvm.Metrics, error) {
	var m smolvm.Metrics
	if err := c.call(ctx, http.MethodGet, "/vms/"+esc(id)+"/metrics", nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}
