package smolvm

import (
	"os"

	"github.com/smolvm/smolvm/internal/statedir"
)

// newConsoleLog makes an empty console log for a boot, 0600: QEMU would
// create it 0644 less the umask, and the console can carry secrets.
func newConsoleLog(path string) error {
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, statedir.FileMode)
	if err != nil {
		return err
	}
	return f.Close()
}
