package image

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// reporter writes build progress: a redrawn bar on a terminal, plain
// lines elsewhere (a log, a pipe, a CI job).
type reporter struct {
	w   io.Writer
	tty bool
	mu  sync.Mutex
}

func (b *Builder) reporter() *reporter {
	r := &reporter{w: b.Progress}
	if f, ok := b.Progress.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.tty = true
	}
	return r
}

// step reports the start of a build step.
func (r *reporter) step(format string, args ...any) {
	if r == nil || r.w == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, format+"\n", args...)
}

// bar tracks bytes of a transfer or step whose total is known (0 if not).
// Its Write counts bytes, so it can sit in an io.TeeReader.
type bar struct {
	r       *reporter
	label   string
	total   int64
	n       int64
	start   time.Time
	drawn   time.Time
	lastPct int
}

func (r *reporter) bar(label string, total int64) *bar {
	b := &bar{r: r, label: label, total: total, start: time.Now(), lastPct: -1}
	if r != nil && r.w != nil && !r.tty {
		r.step("%s (%s)", label, mib(total))
	}
	return b
}

func (b *bar) Write(p []byte) (int, error) {
	b.add(int64(len(p)))
	return len(p), nil
}

func (b *bar) add(n int64) {
	b.n += n
	if b.r == nil || b.r.w == nil || !b.r.tty {
		return
	}
	if now := time.Now(); now.Sub(b.drawn) > 100*time.Millisecond {
		b.drawn = now
		b.draw(false)
	}
}

func (b *bar) draw(done bool) {
	const width = 30
	b.r.mu.Lock()
	defer b.r.mu.Unlock()
	line := fmt.Sprintf("%-40.40s ", b.label)
	if b.total > 0 {
		frac := min(float64(b.n)/float64(b.total), 1)
		fill := int(frac * width)
		line += "[" + strings.Repeat("=", fill) + strings.Repeat(" ", width-fill) + "]" +
			fmt.Sprintf(" %3.0f%% %s/%s", frac*100, mib(b.n), mib(b.total))
	} else {
		line += mib(b.n)
	}
	end := "\r"
	if done {
		end = fmt.Sprintf(" %s\n", time.Since(b.start).Round(100*time.Millisecond))
	}
	fmt.Fprint(b.r.w, "\r"+line+"\033[K"+end)
}

// done finishes the bar: the final state on a terminal, a line otherwise.
func (b *bar) done() {
	if b.r == nil || b.r.w == nil {
		return
	}
	if b.r.tty {
		b.draw(true)
		return
	}
	b.r.step("  done: %s in %s", mib(b.n), time.Since(b.start).Round(100*time.Millisecond))
}

func mib(n int64) string {
	if n <= 0 {
		return "? MiB"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
