package main

import (
	"strings"
	"testing"

	"github.com/smolvm/smolvm"
)

// A hostile guest names its processes, signals and errors with terminal
// escapes; none may reach the terminal raw.
func TestGuestWordsCannotDriveTheTerminal(t *testing.T) {
	const osc = "\x1b]0;pwned\x07" // retitles the window
	const csi8 = "\u009b2J"        // C1 CSI: clears the screen on some terminals
	const rlo = "\u202e"           // shows the rest of the line reversed
	hostile := []string{osc, csi8, rlo, "\x1b[2J", "\r", "\x7f"}
	clean := func(t *testing.T, what, s string) {
		t.Helper()
		for _, h := range hostile {
			if strings.Contains(s, h) {
				t.Errorf("%s = %q: holds %q raw", what, s, h)
			}
		}
	}
	for _, h := range hostile {
		p := smolvm.ProcessInfo{ID: "p1" + h, Args: []string{"sleep" + h}, Exit: &smolvm.ExitStatus{Signal: "TERM" + h}}
		clean(t, "procCommand(argv)", procCommand(p))
		clean(t, "ps id", printable(p.ID))
		clean(t, "ps status", printable(procStatus(p)))
		p.Args, p.Shell = nil, "echo "+h
		clean(t, "procCommand(shell)", procCommand(p))
		clean(t, "error", terminalSafe("agent: no such process "+h))
	}

	// What is printable stays as it is: messages keep their lines, names
	// their accents, commands their length limit in whole runes.
	for _, s := range []string{"plain", "two\nlines\tand a tab", "héllo wörld"} {
		if got := terminalSafe(s); got != s {
			t.Errorf("terminalSafe(%q) = %q, want it unchanged", s, got)
		}
	}
	if got := terminalSafe("a\x1bb"); got != `a\x1bb` {
		t.Errorf("terminalSafe = %q, want the escape spelt out", got)
	}
	long := smolvm.ProcessInfo{Shell: strings.Repeat("é", 100)}
	if got := procCommand(long); got != strings.Repeat("é", 57)+"..." {
		t.Errorf("procCommand(100 × é) = %q, want 57 of them and ...", got)
	}
}
