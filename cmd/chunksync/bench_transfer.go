package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/bench"
	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// benchTransferOptions are the flags of the bench transfer command.
type benchTransferOptions struct {
	Size     byteSize
	Seed     uint64
	Profiles []string
	Rate     bitRate
	RTT      time.Duration
	Loss     probability
	Burst    float64
	Chunkers []string
	Streams  []int
	Conns    []int
	FEC      []string
	Pull     bool
	Timeout  time.Duration
	TCP      []string
	JSON     bool
	CSV      bool
	Report   string
	Quiet    bool
}

// defaultTransferProfiles are the links bench transfer measures when not
// told otherwise: a fast LAN, and a 200 Mbit/s path of 20 ms without loss,
// with 1% and with 5%.
var defaultTransferProfiles = []bench.TransferProfile{
	{Rate: 1e9, RTT: 2 * time.Millisecond},
	{Rate: 200e6, RTT: 20 * time.Millisecond},
	{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01},
	{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.05},
}

// newBenchTransferCommand returns the bench transfer command.
func newBenchTransferCommand() *cobra.Command {
	opts := benchTransferOptions{
		Size: 32 << 20, Seed: 1, Rate: 200e6, RTT: 20 * time.Millisecond,
		Chunkers: []string{engine.DefaultCDC}, Streams: []int{8}, Conns: []int{0}, FEC: []string{"auto"},
		Pull: true, Timeout: 2 * time.Minute, TCP: defaultTCPTools,
	}
	cmd := &cobra.Command{
		Use:   "transfer [flags] [FILE...]",
		Short: "Measure pushes and pulls through emulated links",
		Long: `Transfer starts a chunksync server and the link emulator on loopback, and
pushes each FILE (or a generated file of --size random bytes) to a new,
empty server through the emulated link, then pulls it back, for every link
profile, chunker, stream and connection count and FEC mode asked for.
For each transfer it reports the time, the goodput, the bytes on the wire
both ways, the CPU time and the datagrams the link dropped.

On every profile it also sends the same files with TCP tools (--tcp): "tcp",
one TCP connection carrying the file and nothing else, and "rsync", rsync -z
against a daemon, both with CUBIC, and with "tcp-bbr" and "rsync-bbr" the
same with BBR. They cross an IP-level link: two network namespaces that the
benchmark creates, joined through TUN devices by the same emulator, which
drops, queues and delays each IP packet as it does chunksync's datagrams.
That link takes root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and /dev/net/tun on
Linux; without them the TCP tools are skipped with a note, or, when --tcp
was given, the run fails.

Without --profile, --rate, --rtt, --loss or --burst it runs a grid: 1gbit
2ms, and 200mbit 20ms with 0%, 1% and 5% loss. A --profile is written as
"RATE RTT LOSS" with an optional "burst N" (a mean burst of N lost
datagrams, Gilbert-Elliott): "200mbit 20ms 1%", "50mbit 100ms 5% burst 4".

The CPU time of chunksync and tcp is that of this process, which runs both
ends and the link emulator; that of rsync is its client's and its
daemon's. A transfer that takes longer than --timeout is reported
incomplete, with the goodput of what arrived.`,
		Example: `  chunksync bench transfer
  chunksync bench transfer --size 256MiB --rate 200mbit --rtt 20ms --loss 5% --streams 8
  chunksync bench transfer --profile "1gbit 1ms 0%" --chunker fastcdc,fixed --streams 1,8 disk.img
  chunksync bench transfer --size 64MiB --tcp tcp,tcp-bbr,rsync,rsync-bbr --loss 5% --burst 4
  chunksync bench transfer --profile "200mbit 20ms 1%" --fec off,auto --conns 1,0
  chunksync bench transfer --json --report out/`,
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			single := f.Changed("rate") || f.Changed("rtt") || f.Changed("loss") || f.Changed("burst")
			return runBenchTransfer(cmd.Context(), opts, args, single, f.Changed("tcp"), streamsOf(cmd))
		},
	}
	f := cmd.Flags()
	f.Var(&opts.Size, "size", "size of the generated file when no FILE is given (default 32MiB)")
	f.Uint64Var(&opts.Seed, "seed", opts.Seed, "seed of the generated file and of the link's losses")
	f.StringArrayVar(&opts.Profiles, "profile", nil, `a link to measure, like "200mbit 20ms 1%" or "50mbit 100ms 5% burst 4"; repeat for more`)
	f.Var(&opts.Rate, "rate", "one profile: the link's rate, like 200mbit or 1gbit")
	f.DurationVar(&opts.RTT, "rtt", opts.RTT, "one profile: the link's round-trip time")
	f.Var(&opts.Loss, "loss", "one profile: the share of datagrams lost each way, like 1% or 0.01")
	f.Float64Var(&opts.Burst, "burst", 0, "one profile: lose datagrams in bursts of this many on average (Gilbert-Elliott) rather than one at a time")
	f.StringSliceVar(&opts.Chunkers, "chunker", opts.Chunkers, "chunkers to push with, like fastcdc,fixed ('chunksync chunkers' lists them)")
	f.IntSliceVar(&opts.Streams, "streams", opts.Streams, "parallel data streams to push with, like 1,8")
	f.IntSliceVar(&opts.Conns, "conns", opts.Conns, "connections the streams are spread over, like 1,8; 0 decides from the link (see push --conns)")
	f.StringSliceVar(&opts.FEC, "fec", opts.FEC, "forward error correction modes to compare, like off,auto,on (see push --fec)")
	f.BoolVar(&opts.Pull, "pull", opts.Pull, "also pull each pushed file back")
	f.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "give up a push or pull after this long and report what it moved")
	f.StringSliceVar(&opts.TCP, "tcp", opts.TCP, "TCP tools to measure on every profile through the IP-level link: tcp, tcp-bbr, rsync, rsync-bbr, or none")
	f.BoolVar(&opts.JSON, "json", false, "print one JSON object per transfer, one per line")
	f.BoolVar(&opts.CSV, "csv", false, "print the results as CSV, a header and a row per transfer")
	f.StringVar(&opts.Report, "report", "", "also write an HTML report with charts to this directory")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "no progress bar")
	return cmd
}

// defaultTCPTools are the TCP tools bench transfer measures when not told
// otherwise: the two that run with Linux's default congestion control.
var defaultTCPTools = []string{"tcp", "rsync"}

// transferPlan is the checked grid of a bench transfer run.
type transferPlan struct {
	files    []string
	profiles []bench.TransferProfile
	chunkers []engine.ChunkerParams
	streams  []int
	conns    []int
	fec      []transport.FECMode
	// tcp are the TCP tools that can run here; notes say why the others
	// asked for by default cannot.
	tcp   []string
	notes []string
}

// plan checks the flags and files; single says whether the one-profile
// flags were given, tcpSet whether --tcp was. checkTUN says why the
// IP-level link cannot be made (bench.CheckTUNLink): the TCP tools need it.
func (o benchTransferOptions) plan(ctx context.Context, files []string, single, tcpSet bool, checkTUN func(context.Context) error) (transferPlan, error) {
	p := transferPlan{files: files, streams: o.Streams, conns: o.Conns}
	if o.JSON && o.CSV {
		return p, usagef("--json and --csv: choose one")
	}
	switch {
	case single && len(o.Profiles) > 0:
		return p, usagef("--profile and --rate, --rtt, --loss or --burst: give the links one way")
	case single:
		p.profiles = []bench.TransferProfile{{Rate: int64(o.Rate), RTT: o.RTT, Loss: float64(o.Loss), Burst: o.Burst}}
	case len(o.Profiles) > 0:
		for _, s := range o.Profiles {
			tp, err := parseTransferProfile(s)
			if err != nil {
				return p, usageError{fmt.Errorf("--profile: %w", err)}
			}
			p.profiles = append(p.profiles, tp)
		}
	default:
		p.profiles = defaultTransferProfiles
	}
	for _, tp := range p.profiles {
		if _, err := tp.Link(o.Seed); err != nil {
			return p, usageError{err}
		}
	}
	for _, name := range o.Chunkers {
		k, err := engine.LookupChunker(name)
		if err != nil {
			return p, usageError{fmt.Errorf("--chunker: %w", err)}
		}
		p.chunkers = append(p.chunkers, k.Defaults)
	}
	if len(p.chunkers) == 0 {
		return p, usagef("--chunker: name at least one chunker")
	}
	if len(o.Streams) == 0 {
		return p, usagef("--streams: give at least one stream count")
	}
	for _, n := range o.Streams {
		if n < 1 || n > 64 {
			return p, usagef("--streams %d: want 1 to 64", n)
		}
		for _, c := range o.Conns {
			if err := (dataOptions{Streams: n, Conns: c}).check(); err != nil {
				return p, err
			}
		}
	}
	if len(o.Conns) == 0 {
		return p, usagef("--conns: give at least one connection count")
	}
	for _, name := range o.FEC {
		m, err := (dataOptions{FEC: name}).fecMode()
		if err != nil {
			return p, err
		}
		p.fec = append(p.fec, m)
	}
	if len(p.fec) == 0 {
		return p, usagef("--fec: give at least one mode")
	}
	if o.Timeout <= 0 {
		return p, usagef("--timeout %v: want a positive duration", o.Timeout)
	}
	if len(files) == 0 && o.Size <= 0 {
		return p, usagef("--size %d: want a positive size", o.Size)
	}
	for _, f := range files {
		if err := checkRegular(f); err != nil {
			return p, err
		}
	}
	return p, p.planTCP(ctx, o.TCP, tcpSet, checkTUN)
}

// planTCP checks the TCP tools asked for and keeps those that can run. A
// tool that cannot is an error when --tcp named it, and a note when it is
// a default, so that bench transfer works, without them, where the
// IP-level link cannot be made.
func (p *transferPlan) planTCP(ctx context.Context, tools []string, tcpSet bool, checkTUN func(context.Context) error) error {
	if len(tools) == 1 && tools[0] == "none" {
		return nil
	}
	for _, tool := range tools {
		if !slices.Contains(bench.TCPTools, tool) {
			return usagef("--tcp %q: want some of %s, or none", tool, strings.Join(bench.TCPTools, ", "))
		}
		if slices.Contains(p.tcp, tool) {
			continue
		}
		if err := bench.CheckTCPTool(tool); err != nil {
			if tcpSet {
				return fmt.Errorf("--tcp: %w", err)
			}
			p.notes = append(p.notes, fmt.Sprintf("measuring without %s: %v", tool, err))
			continue
		}
		p.tcp = append(p.tcp, tool)
	}
	if len(p.tcp) == 0 {
		return nil
	}
	if err := checkTUN(ctx); err != nil {
		if tcpSet {
			return fmt.Errorf("--tcp: %w", err)
		}
		p.notes = append(p.notes, fmt.Sprintf("measuring without the TCP tools (%s): %v", strings.Join(p.tcp, ", "), err))
		p.tcp = nil
	}
	return nil
}

// parseTransferProfile reads "RATE RTT LOSS [burst N]".
func parseTransferProfile(s string) (bench.TransferProfile, error) {
	fields := strings.Fields(s)
	bad := func(why string, err error) (bench.TransferProfile, error) {
		if err != nil {
			why += ": " + err.Error()
		}
		return bench.TransferProfile{}, fmt.Errorf(`profile %q: %s; want "RATE RTT LOSS", like "200mbit 20ms 1%%", and optionally "burst N"`, s, why)
	}
	if len(fields) != 3 && !(len(fields) == 5 && fields[3] == "burst") {
		return bad("wrong number of fields", nil)
	}
	var p bench.TransferProfile
	var err error
	if p.Rate, err = parseBitRate(fields[0]); err != nil {
		return bad("rate", err)
	}
	if p.RTT, err = time.ParseDuration(fields[1]); err != nil || p.RTT < 0 {
		return bad("round-trip time", err)
	}
	if p.Loss, err = parseProbability(fields[2]); err != nil {
		return bad("loss", err)
	}
	if len(fields) == 5 {
		if p.Burst, err = strconv.ParseFloat(fields[4], 64); err != nil || p.Burst < 1 {
			return bad("burst, a mean burst length of 1 or more", err)
		}
	}
	return p, nil
}

// runBenchTransfer runs the grid of opts on the files of args, or on a
// generated file, and prints the results.
func runBenchTransfer(ctx context.Context, opts benchTransferOptions, args []string, single, tcpSet bool, st ioStreams) error {
	plan, err := opts.plan(ctx, args, single, tcpSet, bench.CheckTUNLink)
	if err != nil {
		return err
	}
	for _, note := range plan.notes {
		fmt.Fprintln(st.Err, "chunksync: "+note)
	}
	work, err := os.MkdirTemp("", "chunksync-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if len(plan.files) == 0 {
		name := filepath.Join(work, fmt.Sprintf("random-%s.bin", strings.ReplaceAll(formatBytes(int64(opts.Size)), " ", "")))
		if err := bench.WriteRandomFile(name, int64(opts.Size), opts.Seed); err != nil {
			return err
		}
		plan.files = []string{name}
	}
	sizes := make(map[string]int64)
	var total int64
	directions := int64(1)
	if opts.Pull {
		directions = 2
	}
	runs := int64(len(plan.profiles) * (len(plan.tcp) + len(plan.chunkers)*len(plan.streams)*len(plan.conns)*len(plan.fec)))
	for _, f := range plan.files {
		fi, err := os.Stat(f)
		if err != nil {
			return err
		}
		sizes[f] = fi.Size()
		total += fi.Size() * directions * runs
	}
	bar := newBenchProgress(st.Err, !opts.Quiet && !opts.JSON && !opts.CSV)
	progress := &transferBar{bar: bar, total: total}
	out := &transferOutput{opts: opts, w: st.Out}
	if err := out.start(); err != nil {
		return err
	}
	var results []bench.TransferResult
	// record takes the results of one run, and moves the bar to done: a
	// transfer that stopped short leaves its share of the bar to skip.
	record := func(rs []bench.TransferResult, err error, done int64) error {
		if err != nil {
			return err
		}
		progress.set(done)
		results = append(results, rs...)
		if err := out.write(rs); err != nil {
			return err
		}
		return ctx.Err()
	}
	for _, file := range plan.files {
		for _, tp := range plan.profiles {
			for _, tool := range plan.tcp {
				progress.step(tool, file, tp)
				done := progress.done.Load()
				rs, err := bench.RunTCPTransfer(ctx, work, bench.TCPTransferSpec{
					File: file, Profile: tp, Tool: tool, Pull: opts.Pull, Timeout: opts.Timeout, Seed: opts.Seed,
				})
				if err := record(rs, err, done+sizes[file]*directions); err != nil {
					return err
				}
			}
			for _, c := range plan.chunkers {
				for _, n := range plan.streams {
					for _, conns := range plan.conns {
						for _, fec := range plan.fec {
							progress.step(fmt.Sprintf("%s×%d/%d fec %s", c.Name, n, conns, fec), file, tp)
							done := progress.done.Load()
							rs, err := bench.RunTransfer(ctx, work, bench.TransferSpec{
								File: file, Profile: tp, Chunker: c, Streams: n, Conns: conns, FEC: fec, Pull: opts.Pull,
								Timeout: opts.Timeout, Seed: opts.Seed, Progress: progress,
							})
							if err := record(rs, err, done+sizes[file]*directions); err != nil {
								return err
							}
						}
					}
				}
			}
		}
	}
	bar.finish(true)
	rep := bench.TransferReport(results)
	if opts.Report != "" {
		page, err := bench.WriteReport(opts.Report, rep)
		if err != nil {
			return err
		}
		fmt.Fprintf(st.Err, "chunksync: report written to %s\n", page)
	}
	return out.finish(rep)
}

// transferBar turns the transfers' progress into the run's progress bar.
type transferBar struct {
	bar   *benchProgress
	total int64
	done  atomic.Int64
	label atomic.Pointer[string]
}

// step names the transfer that starts.
func (b *transferBar) step(what, file string, p bench.TransferProfile) {
	label := fmt.Sprintf("%s %s %s", what, filepath.Base(file), p)
	b.label.Store(&label)
	b.update()
}

// set moves the bar to done bytes.
func (b *transferBar) set(done int64) {
	b.done.Store(done)
	b.update()
}

func (b *transferBar) update() {
	b.bar.update(bench.StepProgress{Step: *b.label.Load(), Done: b.done.Load(), Total: b.total})
}

// Add implements engine.Progress: the bytes that arrived, pushed or
// pulled, advance the bar.
func (b *transferBar) Add(stage engine.Stage, n int64) {
	switch stage {
	case engine.StageStored, engine.StagePresent, engine.StageFetched, engine.StageReused:
		b.done.Add(n)
		b.update()
	}
}

// transferOutput prints results as they come (JSON lines, CSV) or at the
// end (tables).
type transferOutput struct {
	opts benchTransferOptions
	w    io.Writer
	csv  *csv.Writer
}

// transferCSVColumns head the CSV output.
var transferCSVColumns = []string{
	"tool", "direction", "profile", "chunker", "streams", "conns", "connections", "fec", "fec_connections", "size", "moved", "seconds", "goodput_mbit",
	"wire_bytes_sent", "wire_bytes_received", "cpu_seconds", "datagrams_lost", "complete", "error",
}

func (o *transferOutput) start() error {
	if o.opts.CSV {
		o.csv = csv.NewWriter(o.w)
		o.csv.Write(transferCSVColumns)
		o.csv.Flush()
		return o.csv.Error()
	}
	return nil
}

// write prints rs at once in the formats for scripts, so that a long run
// shows its results as they come.
func (o *transferOutput) write(rs []bench.TransferResult) error {
	switch {
	case o.opts.JSON:
		enc := json.NewEncoder(o.w)
		for _, r := range rs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	case o.csv != nil:
		f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
		for _, r := range rs {
			o.csv.Write([]string{
				r.Tool, r.Direction, r.Profile, r.Chunker, strconv.Itoa(r.Streams), strconv.Itoa(r.Conns), strconv.Itoa(r.Connections),
				r.FEC, strconv.Itoa(r.FECConnections),
				strconv.FormatInt(r.Size, 10), strconv.FormatInt(r.Moved, 10), f(r.Seconds), f(r.GoodputMbit),
				strconv.FormatUint(r.WireBytesSent, 10), strconv.FormatUint(r.WireBytesReceived, 10),
				f(r.CPUSeconds), strconv.FormatUint(r.DatagramsLost, 10), strconv.FormatBool(r.Complete), r.Error,
			})
		}
		o.csv.Flush()
		return o.csv.Error()
	}
	return nil
}

// finish prints the tables for people, unless a format for scripts was
// asked for.
func (o *transferOutput) finish(rep bench.Report) error {
	if o.opts.JSON || o.opts.CSV {
		return nil
	}
	return writeReportText(o.w, rep)
}
