package main

import (
	"io"
	"sync/atomic"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/chunksync/chunksync/bench"
)

// newBenchCommand returns the bench command, whose subcommands measure
// chunking strategies and transfers on the user's own data and links.
func newBenchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure chunking strategies and transfers on your own data and links",
		Long: `bench answers "which chunking strategy, which chunk size, how many
streams, for my data and my link?" with measurements on your own files and
on emulated links.`,
	}
	cmd.AddCommand(
		newBenchChunkersCommand(),
		newBenchLinkCommand(),
		newBenchTransferCommand(),
	)
	return cmd
}

// benchProgress draws the progress of a measurement as one bar when it was
// given a terminal, and does nothing otherwise.
type benchProgress struct {
	w    io.Writer
	show bool
	step atomic.Pointer[string]

	bars *mpb.Progress
	bar  *mpb.Bar
}

// newBenchProgress returns the progress of a measurement; it draws a bar
// on w only when show is set and w is a terminal.
func newBenchProgress(w io.Writer, show bool) *benchProgress {
	return &benchProgress{w: w, show: show && isTerminal(w)}
}

// update takes a report of how far the run is; the bar appears with the
// first report, which brings the total.
func (p *benchProgress) update(r bench.StepProgress) {
	if !p.show || r.Total <= 0 {
		return
	}
	p.step.Store(&r.Step)
	if p.bar == nil {
		p.bars = mpb.New(mpb.WithOutput(p.w), mpb.WithWidth(40))
		p.bar = p.bars.AddBar(r.Total,
			mpb.PrependDecorators(
				decor.Any(func(decor.Statistics) string { return *p.step.Load() }, decor.WCSyncSpaceR),
				decor.Percentage(decor.WCSyncSpace),
			),
			mpb.AppendDecorators(decor.OnComplete(decor.AverageETA(decor.ET_STYLE_GO, decor.WCSyncSpace), "")),
		)
	}
	p.bar.SetTotal(r.Total, false)
	p.bar.SetCurrent(r.Done)
}

// finish completes the bar (ok) or leaves it where it stopped, and waits
// until it is drawn for the last time.
func (p *benchProgress) finish(ok bool) {
	if p.bars == nil {
		return
	}
	if ok {
		p.bar.SetTotal(-1, true)
	} else {
		p.bar.Abort(false)
	}
	p.bars.Wait()
}
