//go:build !linux

package agent

import "errors"

// startWatch: inotify is Linux's; the guest always is.
func (s *session) startWatch() (func(), error) {
	return nil, errors.New("smolvm-watch needs Linux")
}
