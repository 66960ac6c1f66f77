package main

import (
	"io"
	"os"
	"sync/atomic"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/chunksync/chunksync/engine"
)

// isTerminal reports whether w is a terminal, where progress bars belong.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// transferProgress receives a push's or a pull's progress reports. It
// always counts them, for the message of an interrupted push, and draws
// bars when it was given a terminal: for a push, hashed and in sync with the
// server; for a pull, in sync with the server.
type transferProgress struct {
	scanned, present, stored atomic.Int64

	bars       *mpb.Progress
	scan, sync *mpb.Bar
}

// newPushProgress returns the progress of pushing a file of size bytes
// named name; it draws bars on w only when show is set and w is a terminal.
func newPushProgress(w io.Writer, name string, size int64, show bool) *transferProgress {
	return newTransferProgress(w, name, size, show, true)
}

// newPullProgress returns the progress of pulling a file of size bytes
// into name; it draws a bar on w only when show is set and w is a terminal.
func newPullProgress(w io.Writer, name string, size int64, show bool) *transferProgress {
	return newTransferProgress(w, name, size, show, false)
}

func newTransferProgress(w io.Writer, name string, size int64, show, scan bool) *transferProgress {
	p := new(transferProgress)
	if !show || size <= 0 || !isTerminal(w) {
		return p
	}
	p.bars = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40))
	bar := func(label string, eta bool) *mpb.Bar {
		right := []decor.Decorator{decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace)}
		if eta {
			right = append(right, decor.OnComplete(decor.AverageETA(decor.ET_STYLE_GO, decor.WCSyncSpace), ""))
		}
		return p.bars.AddBar(size,
			mpb.PrependDecorators(
				decor.Name(label, decor.WCSyncSpaceR),
				decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace),
			),
			mpb.AppendDecorators(right...),
		)
	}
	if scan {
		p.scan = bar("hash "+name, false)
	}
	p.sync = bar("sync "+name, true)
	return p
}

// Add implements engine.Progress; it is safe for concurrent use.
func (p *transferProgress) Add(stage engine.Stage, n int64) {
	switch stage {
	case engine.StageScanned:
		p.scanned.Add(n)
		if p.scan != nil {
			p.scan.IncrInt64(n)
		}
	case engine.StagePresent, engine.StageStored, engine.StageReused, engine.StageFetched:
		if stage == engine.StagePresent || stage == engine.StageReused {
			p.present.Add(n)
		} else {
			p.stored.Add(n)
		}
		if p.sync != nil {
			p.sync.IncrInt64(n)
		}
	}
}

// synced is the number of bytes the server holds so far: already present
// or stored by this push.
func (p *transferProgress) synced() int64 { return p.present.Load() + p.stored.Load() }

// finish completes the bars (ok) or leaves them where they stopped, and
// waits until they are drawn for the last time.
func (p *transferProgress) finish(ok bool) {
	if p.bars == nil {
		return
	}
	for _, b := range []*mpb.Bar{p.scan, p.sync} {
		if b == nil {
			continue
		}
		if ok {
			// Chunks repeated within the file are reported neither as
			// present nor as stored, so the sync bar may fall short.
			b.SetTotal(-1, true)
		} else {
			b.Abort(false)
		}
	}
	p.bars.Wait()
}
