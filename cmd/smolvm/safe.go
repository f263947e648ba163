package main

import (
	"strconv"
	"strings"
	"unicode"
)

// terminalSafe escapes what a terminal would act on in s (ESC, C1
// controls, format characters...), keeping newlines and tabs: error
// messages carry the guest's words (agent refusals, guest file names), and
// a hostile guest must not be able to move the cursor, retitle the window
// or hide text on the user's terminal through them.
func terminalSafe(s string) string {
	unsafe := func(r rune) bool { return r != '\n' && r != '\t' && r != ' ' && !unicode.IsPrint(r) }
	if strings.IndexFunc(s, unsafe) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unsafe(r) {
			q := strconv.QuoteRune(r) // '\x1b'
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
