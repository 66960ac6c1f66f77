package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/chunksync/chunksync/bench"
)

// benchLinkOptions are the flags of the bench link command.
type benchLinkOptions struct {
	Listen, Upstream string
	// both holds the flags that set both directions; up and down the
	// --up-* and --down-* flags that override them for one direction.
	both, up, down linkProfileFlags
	Seed           uint64
	StatsEvery     time.Duration
	JSON           bool
}

// linkProfileFlags are the flags of one set of a link's profile flags, as
// typed.
type linkProfileFlags struct {
	Loss, Reorder, Duplicate    probability
	Burst                       float64
	Delay, Jitter, ReorderDelay time.Duration
	Rate                        bitRate
	Queue                       byteSize
}

// newBenchLinkCommand returns the bench link command.
func newBenchLinkCommand() *cobra.Command {
	var opts benchLinkOptions
	cmd := &cobra.Command{
		Use:   "link --listen ADDR --upstream ADDR [flags]",
		Short: "Emulate a lossy, slow link between QUIC clients and a server",
		Long: `Link relays UDP datagrams between clients and a server and does to them
what a real network path does: loss (random, or in bursts), delay and
jitter, a rate limit with a drop-tail queue, reordering and duplication.
Point clients at --listen and the link at the server with --upstream; each
client gets its own upstream port, as behind a NAT.

Every flag sets both directions; --up-FLAG sets only the direction from
the clients to the server, --down-FLAG only the way back, and wins over
FLAG. Probabilities take 2% or 0.02. Rates take bits as tc writes them
(100mbit, 1.5gbit, 512kbit: decimal) or bytes per second as --bwlimit does
(10M is 10 MiB/s). --burst turns random loss into bursts of that mean
length (a Gilbert-Elliott model) at the same average loss. Jitter keeps
datagrams in order; only --reorder reorders. The same --seed and the same
traffic make the same decisions.

Link runs until interrupted, printing the counts of both directions to
stderr every --stats-every, and a summary at the end (on stdout; as JSON
with --json).`,
		Example: `  chunksync bench link --listen :4434 --upstream server:4433 --loss 2% --delay 20ms --jitter 2ms --rate 100mbit
  chunksync bench link --listen :4434 --upstream localhost:4433 --loss 1% --burst 5 --down-rate 20mbit --up-rate 5mbit --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := opts.config(cmd.Flags())
			if err != nil {
				return err
			}
			return runBenchLink(cmd.Context(), opts, cfg, streamsOf(cmd))
		},
	}
	opts.addFlags(cmd.Flags())
	cmd.MarkFlagRequired("listen")
	cmd.MarkFlagRequired("upstream")
	return cmd
}

// addFlags declares the command's flags on f, the flags for both
// directions before those for one.
func (o *benchLinkOptions) addFlags(f *pflag.FlagSet) {
	f.SortFlags = false
	f.StringVar(&o.Listen, "listen", "", "UDP address the clients send to; port 0 picks a free one")
	f.StringVar(&o.Upstream, "upstream", "", "UDP address of the server")
	o.both.addFlags(f, "", "")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of every random decision")
	f.DurationVar(&o.StatsEvery, "stats-every", 5*time.Second, "print the counts to stderr this often; 0 prints only the summary")
	f.BoolVar(&o.JSON, "json", false, "print the summary as one JSON object on stdout")
	o.up.addFlags(f, "up-", "clients to server")
	o.down.addFlags(f, "down-", "server to clients")
}

// addFlags declares one set of profile flags, named with prefix; a set
// for one direction says which.
func (p *linkProfileFlags) addFlags(f *pflag.FlagSet, prefix, direction string) {
	help := func(name, usage string) (string, string) {
		if direction != "" {
			usage = "--" + name + ", " + direction + " only"
		}
		return prefix + name, usage
	}
	name, usage := help("loss", "probability that a datagram is lost, like 2% or 0.02")
	f.Var(&p.Loss, name, usage)
	name, usage = help("burst", "mean length of a burst of losses, in datagrams (at least 1); 0 loses at random")
	f.Float64Var(&p.Burst, name, 0, usage)
	name, usage = help("delay", "one-way delay")
	f.DurationVar(&p.Delay, name, 0, usage)
	name, usage = help("jitter", "spread of the delay, uniform over delay ± jitter; at most the delay")
	f.DurationVar(&p.Jitter, name, 0, usage)
	name, usage = help("rate", "bottleneck rate, like 100mbit, or 10M for 10 MiB/s")
	f.Var(&p.Rate, name, usage)
	name, usage = help("queue", "bottleneck queue, like 256KiB; a datagram that does not fit is dropped (default 50 ms at the rate, at least 64 KiB)")
	f.Var(&p.Queue, name, usage)
	name, usage = help("reorder", "probability that a datagram is held back for later ones to overtake")
	f.Var(&p.Reorder, name, usage)
	name, usage = help("reorder-delay", "how long --reorder holds a datagram back (default "+bench.DefaultReorderDelay.String()+")")
	f.DurationVar(&p.ReorderDelay, name, 0, usage)
	name, usage = help("duplicate", "probability that a datagram is delivered twice")
	f.Var(&p.Duplicate, name, usage)
}

// config turns the parsed flags into the link's configuration. Every
// error is a usage error.
func (o *benchLinkOptions) config(f *pflag.FlagSet) (bench.LinkConfig, error) {
	up, err := o.profile(f, "up-", o.up)
	if err != nil {
		return bench.LinkConfig{}, err
	}
	down, err := o.profile(f, "down-", o.down)
	if err != nil {
		return bench.LinkConfig{}, err
	}
	cfg := bench.LinkConfig{Up: up, Down: down, Seed: o.Seed}
	if err := cfg.Validate(); err != nil {
		return bench.LinkConfig{}, usageError{err}
	}
	return cfg, nil
}

// profile is one direction's profile: the flags for both directions, with
// those of own (named with prefix) that were given instead.
func (o *benchLinkOptions) profile(f *pflag.FlagSet, prefix string, own linkProfileFlags) (bench.LinkProfile, error) {
	p := o.both
	burstFlag := "burst"
	override := func(name string, set func()) {
		if f.Changed(prefix + name) {
			set()
		}
	}
	override("loss", func() { p.Loss = own.Loss })
	override("burst", func() { p.Burst, burstFlag = own.Burst, prefix+"burst" })
	override("delay", func() { p.Delay = own.Delay })
	override("jitter", func() { p.Jitter = own.Jitter })
	override("rate", func() { p.Rate = own.Rate })
	override("queue", func() { p.Queue = own.Queue })
	override("reorder", func() { p.Reorder = own.Reorder })
	override("reorder-delay", func() { p.ReorderDelay = own.ReorderDelay })
	override("duplicate", func() { p.Duplicate = own.Duplicate })

	if p.Queue > math.MaxInt32 {
		return bench.LinkProfile{}, usagef("queue of %d bytes: at most 2 GiB", p.Queue)
	}
	lp := bench.LinkProfile{
		Loss:         float64(p.Loss),
		Delay:        p.Delay,
		Jitter:       p.Jitter,
		Rate:         int64(p.Rate),
		Queue:        int(p.Queue),
		Reorder:      float64(p.Reorder),
		ReorderDelay: p.ReorderDelay,
		Duplicate:    float64(p.Duplicate),
	}
	switch {
	case p.Burst == 0:
	case !(p.Burst >= 1) || math.IsInf(p.Burst, 0):
		return bench.LinkProfile{}, usagef("--%s %v: want a mean burst length of at least 1 datagram, or 0 for random loss", burstFlag, p.Burst)
	case lp.Loss > 0:
		ge, err := bench.BurstLoss(lp.Loss, p.Burst)
		if err != nil {
			return bench.LinkProfile{}, usagef("--%s %v: %v", burstFlag, p.Burst, err)
		}
		lp.Burst, lp.Loss = ge, 0
	}
	return lp, nil
}

// runBenchLink relays until ctx is cancelled, then prints the summary.
func runBenchLink(ctx context.Context, opts benchLinkOptions, cfg bench.LinkConfig, st ioStreams) error {
	l, err := bench.ListenLink(opts.Listen, opts.Upstream, cfg)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(st.Err, "link listening on %s, relaying to %s (seed %d)\n  up:   %s\n  down: %s\n",
		l.Addr(), opts.Upstream, cfg.Seed, describeProfile(cfg.Up), describeProfile(cfg.Down))

	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	var tick <-chan time.Time
	if opts.StatsEvery > 0 {
		t := time.NewTicker(opts.StatsEvery)
		defer t.Stop()
		tick = t.C
	}
	var last [2]bench.LinkStats
	lastAt := start
	for serving := true; serving; {
		select {
		case err = <-done:
			serving = false
		case now := <-tick:
			up, down := l.Stats()
			secs := now.Sub(lastAt).Seconds()
			fmt.Fprintf(st.Err, "%6.1fs  up: %s | down: %s\n", now.Sub(start).Seconds(),
				formatLinkInterval(last[0], up, secs), formatLinkInterval(last[1], down, secs))
			last, lastAt = [2]bench.LinkStats{up, down}, now
		}
	}
	up, down := l.Stats()
	sum := linkSummary{
		Listen:   l.Addr().String(),
		Upstream: opts.Upstream,
		Seed:     cfg.Seed,
		Seconds:  time.Since(start).Seconds(),
		Up:       linkStatsJSON(up),
		Down:     linkStatsJSON(down),
	}
	if opts.JSON {
		if werr := writeJSON(st.Out, sum); err == nil {
			err = werr
		}
	} else {
		sum.write(st.Out)
	}
	return err
}

// formatLinkInterval gives one direction's counts and its delivered rate
// since the previous line, for the line printed every --stats-every.
func formatLinkInterval(prev, cur bench.LinkStats, secs float64) string {
	rate := 0.0
	if secs > 0 {
		rate = float64(cur.DeliveredBytes-prev.DeliveredBytes) * 8 / secs
	}
	return fmt.Sprintf("%d in, %d out, %s, lost %d, queue-dropped %d, duplicated %d, reordered %d",
		cur.Received, cur.Delivered, formatBitRate(rate), cur.DroppedLoss, cur.DroppedQueue, cur.Duplicated, cur.Reordered)
}

// describeProfile says in one line what a direction does.
func describeProfile(p bench.LinkProfile) string {
	var parts []string
	switch {
	case p.Burst != nil:
		parts = append(parts, fmt.Sprintf("loss %s in bursts of %.3g", formatPercent(p.Burst.MeanLoss()), 1/p.Burst.BadToGood))
	case p.Loss > 0:
		parts = append(parts, "loss "+formatPercent(p.Loss))
	}
	if p.Delay > 0 {
		d := "delay " + p.Delay.String()
		if p.Jitter > 0 {
			d += " ± " + p.Jitter.String()
		}
		parts = append(parts, d)
	}
	if p.Rate > 0 {
		r := "rate " + formatBitRate(float64(p.Rate))
		if p.Queue > 0 {
			r += ", queue " + formatBytes(int64(p.Queue))
		}
		parts = append(parts, r)
	}
	if p.Reorder > 0 {
		d := p.ReorderDelay
		if d == 0 {
			d = bench.DefaultReorderDelay
		}
		parts = append(parts, fmt.Sprintf("reorder %s by %v", formatPercent(p.Reorder), d))
	}
	if p.Duplicate > 0 {
		parts = append(parts, "duplicate "+formatPercent(p.Duplicate))
	}
	if len(parts) == 0 {
		return "as is"
	}
	return strings.Join(parts, ", ")
}

// linkSummary is what bench link prints when it stops.
type linkSummary struct {
	Listen   string  `json:"listen"`
	Upstream string  `json:"upstream"`
	Seed     uint64  `json:"seed"`
	Seconds  float64 `json:"seconds"`
	// Up counts the datagrams from clients to the server, Down the way back.
	Up   linkStatsJSON `json:"up"`
	Down linkStatsJSON `json:"down"`
}

// linkStatsJSON is bench.LinkStats as JSON: the same fields, so that a
// conversion makes one and a field added to one must be added to the other.
type linkStatsJSON struct {
	Received       uint64 `json:"received"`
	ReceivedBytes  uint64 `json:"received_bytes"`
	Delivered      uint64 `json:"delivered"`
	DeliveredBytes uint64 `json:"delivered_bytes"`
	DroppedLoss    uint64 `json:"dropped_loss"`
	DroppedQueue   uint64 `json:"dropped_queue"`
	DroppedDown    uint64 `json:"dropped_down"`
	Duplicated     uint64 `json:"duplicated"`
	Reordered      uint64 `json:"reordered"`
	Failed         uint64 `json:"failed"`
}

// write prints the summary for people.
func (s linkSummary) write(w io.Writer) {
	fmt.Fprintf(w, "link %s -> %s, %.1f s, seed %d\n", s.Listen, s.Upstream, s.Seconds, s.Seed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  \tRECEIVED\tDELIVERED\tLOST\tQUEUE-DROPPED\tDUPLICATED\tREORDERED\tFAILED")
	for _, d := range []struct {
		name string
		s    linkStatsJSON
	}{{"up", s.Up}, {"down", s.Down}} {
		fmt.Fprintf(tw, "  %s\t%d (%s)\t%d (%s)\t%d (%s)\t%d\t%d\t%d\t%d\n", d.name,
			d.s.Received, formatBytes(int64(d.s.ReceivedBytes)),
			d.s.Delivered, formatBytes(int64(d.s.DeliveredBytes)),
			d.s.DroppedLoss, formatShare(d.s.DroppedLoss, d.s.Received),
			d.s.DroppedQueue, d.s.Duplicated, d.s.Reordered, d.s.Failed)
	}
	tw.Flush()
}

// formatShare gives n of total as a percentage.
func formatShare(n, total uint64) string {
	if total == 0 {
		return "-"
	}
	return formatPercent(float64(n) / float64(total))
}
