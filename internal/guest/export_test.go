package guest

import (
	"context"
	"log/slog"

	"github.com/pkg/sftp"
)

// DownloadWithEntries is Download with a smaller entry limit, so a test
// need not make a million files to reach it.
func DownloadWithEntries(ctx context.Context, c *sftp.Client, lim *RecvLimit, src, dst string, log *slog.Logger, maxEntries int) error {
	return download(ctx, c, lim, src, dst, log, maxEntries, CopyOptions{})
}
