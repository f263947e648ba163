// Package shell quotes words for a POSIX shell.
package shell

import "strings"

// Quote single-quotes s so sh reads it as one word, unchanged: inside
// single quotes only ' itself needs care, written as '\”.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
