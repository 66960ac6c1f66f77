package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/bench"
	"github.com/chunksync/chunksync/engine"
)

// benchChunkersOptions are the flags of the bench chunkers command.
type benchChunkersOptions struct {
	Chunkers     []string
	Sizes        []string
	Pairs        []string
	Module       string
	Rsync        bool
	DeltaMaxFile byteSize
	MinTime      time.Duration
	JSON, CSV    bool
	Report       string
	Quiet        bool
}

// newBenchChunkersCommand returns the bench chunkers command.
func newBenchChunkersCommand() *cobra.Command {
	opts := benchChunkersOptions{Rsync: true, DeltaMaxFile: bench.DefaultDeltaMaxFile, MinTime: bench.DefaultMinPassTime}
	cmd := &cobra.Command{
		Use:   "chunkers [flags] [FILE...] [--pairs OLD:NEW,...]",
		Short: "Measure chunking strategies and chunk sizes on your own files",
		Long: `Chunkers answers "which chunking strategy and which chunk size for my data?".
It cuts every FILE, and both files of every pair, with every chunker at every
average chunk size (min a quarter and max four times the average, or the
chunker's own ratios), and reports:

  - throughput in MB/s (10^6 bytes/s), of cutting alone and of cutting plus
    the BLAKE3 chunk IDs, on one core, over files read once beforehand so
    that they are in the page cache (the copies out of it are timed); a
    file is cut again until --min-time is spent on it (at most 20 passes)
    and the fastest pass counts;
  - the chunk count and sizes: mean, 10th, 50th and 90th percentile, min, max;
  - dedup: bytes of distinct chunks over all bytes, within each file and
    across all of them (1 = nothing repeats, 0.5 = everything twice);
  - for each pair OLD:NEW, the bytes a push of NEW sends to a receiver that
    holds OLD: the missing chunks zstd-compressed one by one plus the
    manifest and chunk list ("chunks+list"), and, for files up to
    --delta-max-file, the same with deltas against the replaced chunks
    ("delta estimate"); with rsync installed, also what rsync -z
    --no-whole-file moves on loopback for the same pair, and the ratios.

The adaptive chunker is left out unless named: without a link to follow it
cuts the same chunks as fixed.

Sizes take binary suffixes: 8K, 64KiB, 1M. Files stream through fixed
buffers; only the delta estimates hold a pair's two files in memory.`,
		Example: `  chunksync bench chunkers disk.img
  chunksync bench chunkers --chunkers fastcdc,rabin --sizes 64K,256K,1M --pairs v1.tar:v2.tar
  chunksync bench chunkers --csv db.sqlite > chunkers.csv`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBenchChunkers(cmd.Context(), opts, args, cmd.Flags().Changed("rsync"), streamsOf(cmd))
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&opts.Chunkers, "chunkers", nil, "chunkers to measure, like rabin,fastcdc (default: all but adaptive; 'chunksync chunkers' lists them)")
	f.StringSliceVar(&opts.Sizes, "sizes", nil, "average chunk sizes to measure, like 16KiB,64KiB,1M (default: powers of two from 8KiB to 4MiB)")
	f.StringSliceVar(&opts.Pairs, "pairs", nil, "old and new versions of a file, OLD:NEW; repeat the flag or separate pairs with commas")
	f.StringVar(&opts.Module, "module", "", "also measure consecutive releases of a Go module, MODULE@V1,V2,..., as tars (fetched with go mod download)")
	f.StringVar(&opts.Report, "report", "", "also write an HTML report with charts to this directory")
	f.BoolVar(&opts.Rsync, "rsync", true, "also measure rsync -z on each pair (skipped with a note when rsync is not installed)")
	f.Var(&opts.DeltaMaxFile, "delta-max-file", "largest file, old or new, whose pair gets a delta estimate (held in memory); 0 for none (default 64MiB)")
	f.DurationVar(&opts.MinTime, "min-time", opts.MinTime, "cut each file with each setting until this much time is spent, and time the fastest pass; 0 for one pass")
	f.BoolVar(&opts.JSON, "json", false, "print the results as one JSON document")
	f.BoolVar(&opts.CSV, "csv", false, "print the results as CSV: a header, then a row per file, all files, or pair, per chunker and size")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "no progress bar")
	return cmd
}

// runBenchChunkers measures the files of args and the pairs of opts and
// prints the result; rsyncSet says whether --rsync was given.
func runBenchChunkers(ctx context.Context, opts benchChunkersOptions, args []string, rsyncSet bool, st ioStreams) error {
	cfg, err := opts.config(args)
	if err != nil {
		return err
	}
	if cfg.Rsync && len(cfg.Pairs) > 0 {
		if _, err := exec.LookPath("rsync"); err != nil {
			if rsyncSet {
				return fmt.Errorf("--rsync: %w", err)
			}
			fmt.Fprintln(st.Err, "chunksync: rsync is not installed: measuring without it")
			cfg.Rsync = false
		}
	}
	if opts.Module != "" {
		pairs, cleanup, err := modulePairs(ctx, opts.Module)
		if err != nil {
			return err
		}
		defer cleanup()
		cfg.Pairs = append(cfg.Pairs, pairs...)
	}
	bar := newBenchProgress(st.Err, !opts.Quiet)
	cfg.Progress = bar.update
	res, err := bench.MeasureChunkers(ctx, cfg)
	bar.finish(err == nil)
	if err != nil {
		return err
	}
	if opts.Report != "" {
		page, err := bench.WriteReport(opts.Report, res.Report())
		if err != nil {
			return err
		}
		fmt.Fprintf(st.Err, "chunksync: report written to %s\n", page)
	}
	switch {
	case opts.JSON:
		return writeJSON(st.Out, res)
	case opts.CSV:
		return writeChunkersCSV(st.Out, res)
	}
	return writeReportText(st.Out, res.Report())
}

// config checks the flags and files and turns them into what
// bench.MeasureChunkers takes. Flags in error are usage errors; files
// that are missing or not regular are file errors.
func (opts benchChunkersOptions) config(files []string) (bench.ChunkersConfig, error) {
	cfg := bench.ChunkersConfig{Files: files, Chunkers: opts.Chunkers, Rsync: opts.Rsync, DeltaMaxFile: int64(opts.DeltaMaxFile)}
	if opts.JSON && opts.CSV {
		return cfg, usagef("--json and --csv: choose one")
	}
	if cfg.DeltaMaxFile == 0 {
		cfg.DeltaMaxFile = -1
	}
	if opts.MinTime < 0 {
		return cfg, usagef("--min-time %v: want 0 or more", opts.MinTime)
	}
	if cfg.MinPassTime = opts.MinTime; cfg.MinPassTime == 0 {
		cfg.MinPassTime = -1
	}
	for _, s := range opts.Pairs {
		old, new, ok := strings.Cut(s, ":")
		if !ok || old == "" || new == "" {
			return cfg, usagef("--pairs %q: want OLD:NEW, two files separated by a colon", s)
		}
		cfg.Pairs = append(cfg.Pairs, bench.FilePair{Old: old, New: new})
	}
	if opts.Module != "" {
		if _, _, err := parseModuleVersions(opts.Module); err != nil {
			return cfg, usageError{fmt.Errorf("--module: %w", err)}
		}
	}
	if len(files) == 0 && len(cfg.Pairs) == 0 && opts.Module == "" {
		return cfg, usagef("give at least one FILE, --pairs OLD:NEW or --module MODULE@V1,V2")
	}
	for _, name := range cfg.Chunkers {
		if _, err := engine.LookupChunker(name); err != nil {
			return cfg, usagef("--chunkers: %v", err)
		}
	}
	for _, s := range opts.Sizes {
		n, err := parseSize(s)
		if err != nil {
			return cfg, usagef("--sizes: %v", err)
		}
		if n <= 0 || n > engine.MaxChunkSize {
			return cfg, usagef("--sizes %s: want an average chunk size from 1 byte to %s", s, formatBytes(engine.MaxChunkSize))
		}
		cfg.Sizes = append(cfg.Sizes, uint32(n))
	}
	chunkers := cfg.Chunkers
	if len(chunkers) == 0 {
		chunkers = bench.DefaultMeasuredChunkers()
	}
	for _, name := range chunkers {
		for i, size := range cfg.Sizes {
			if _, err := bench.ChunkerFor(name, size); err != nil {
				return cfg, usagef("--sizes %s: chunker %s refuses it: %v", opts.Sizes[i], name, err)
			}
		}
	}
	for _, f := range files {
		if err := checkRegular(f); err != nil {
			return cfg, err
		}
	}
	for _, p := range cfg.Pairs {
		for _, f := range []string{p.Old, p.New} {
			if err := checkRegular(f); err != nil {
				return cfg, fmt.Errorf("--pairs %s:%s: %w", p.Old, p.New, err)
			}
		}
	}
	return cfg, nil
}

// parseModuleVersions reads MODULE@V1,V2,...: a module path and at least
// two versions.
func parseModuleVersions(s string) (module string, versions []string, err error) {
	module, list, ok := strings.Cut(s, "@")
	if ok {
		versions = strings.Split(list, ",")
	}
	if module == "" || len(versions) < 2 || slices.Contains(versions, "") {
		return "", nil, fmt.Errorf("%q: want MODULE@V1,V2,..., like golang.org/x/tools@v0.26.0,v0.27.0", s)
	}
	return module, versions, nil
}

// modulePairs writes tars of the releases of spec (MODULE@V1,V2,...) to a
// new directory, the downloads kept in the user's cache, and returns each
// release paired with the next; cleanup removes the tars.
func modulePairs(ctx context.Context, spec string) (pairs []bench.FilePair, cleanup func(), err error) {
	module, versions, err := parseModuleVersions(spec)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--module: %w", err)}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return nil, nil, fmt.Errorf("--module: %w", err)
	}
	work, err := os.MkdirTemp("", "chunksync-module-")
	if err != nil {
		return nil, nil, err
	}
	tars, err := bench.ModuleTars(ctx, filepath.Join(cache, "chunksync", "modules"), work, module, versions...)
	if err != nil {
		os.RemoveAll(work)
		return nil, nil, fmt.Errorf("--module: %w", err)
	}
	for i := 1; i < len(tars); i++ {
		pairs = append(pairs, bench.FilePair{Old: tars[i-1], New: tars[i]})
	}
	return pairs, func() { os.RemoveAll(work) }, nil
}

// writeReportText prints the sections of rep for people: each heading, its
// text, and its table aligned in columns. Charts are for the HTML report.
func writeReportText(w io.Writer, rep bench.Report) error {
	fmt.Fprintf(w, "%s (%s)\n", rep.Title, rep.Note)
	for _, s := range rep.Sections {
		fmt.Fprintf(w, "\n%s\n", s.Heading)
		if s.Text != "" {
			fmt.Fprintln(w, wrapText(s.Text, 100))
		}
		if s.Table == nil {
			continue
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, strings.ToUpper(strings.Join(s.Table.Columns, "\t")))
		for _, row := range s.Table.Rows {
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// wrapText breaks s into lines of at most width bytes at spaces.
func wrapText(s string, width int) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		if i > 0 && line+1+len(word) > width {
			b.WriteByte('\n')
			line = 0
		} else if i > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}

// chunkersCSVColumns head the CSV output; a row fills the columns that
// apply to its kind: file (one file), all_files (all of them together) or
// pair (a re-sync of old to new; bytes and chunks are the new version's).
var chunkersCSVColumns = []string{
	"kind", "file", "old", "new", "chunker", "min", "avg", "max", "bytes", "chunks",
	"mean_size", "p10_size", "p50_size", "p90_size", "min_size", "max_size",
	"cut_mb_per_s", "cut_hash_mb_per_s", "distinct_chunks", "distinct_bytes", "dedup_ratio",
	"old_bytes", "lacked_chunks", "lacked_bytes", "list_bytes", "chunk_bytes", "plain_bytes",
	"delta_estimate_bytes", "rsync_bytes", "plain_rsync_ratio", "delta_rsync_ratio",
}

// writeChunkersCSV prints res as CSV, a row per file, all files and pair
// for every chunker and size.
func writeChunkersCSV(w io.Writer, res bench.ChunkersResult) error {
	cw := csv.NewWriter(w)
	cw.Write(chunkersCSVColumns)
	i := func(n int64) string { return strconv.FormatInt(n, 10) }
	u := func(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	row := func(cells map[string]string) {
		r := make([]string, len(chunkersCSVColumns))
		for k, col := range chunkersCSVColumns {
			r[k] = cells[col]
		}
		cw.Write(r)
	}
	setting := func(kind string, s bench.ChunkerSetting) map[string]string {
		return map[string]string{"kind": kind, "chunker": s.Chunker, "min": u(s.Min), "avg": u(s.Avg), "max": u(s.Max)}
	}
	for _, r := range res.Runs {
		c := setting("file", r.ChunkerSetting)
		c["file"], c["bytes"], c["chunks"] = r.File, i(r.Bytes), i(r.Chunks)
		c["mean_size"], c["p10_size"], c["p50_size"], c["p90_size"] = f(r.Mean), u(r.P10), u(r.P50), u(r.P90)
		c["min_size"], c["max_size"] = u(r.MinSize), u(r.MaxSize)
		c["cut_mb_per_s"], c["cut_hash_mb_per_s"] = f(r.CutMBps), f(r.CutHashMBps)
		c["distinct_chunks"], c["distinct_bytes"], c["dedup_ratio"] = i(r.DistinctChunks), i(r.DistinctBytes), f(r.DedupRatio)
		row(c)
	}
	for _, t := range res.Totals {
		c := setting("all_files", t.ChunkerSetting)
		c["bytes"], c["chunks"] = i(t.Bytes), i(t.Chunks)
		c["cut_mb_per_s"], c["cut_hash_mb_per_s"] = f(t.CutMBps), f(t.CutHashMBps)
		c["distinct_chunks"], c["distinct_bytes"], c["dedup_ratio"] = i(t.DistinctChunks), i(t.DistinctBytes), f(t.DedupRatio)
		row(c)
	}
	for _, p := range res.Pairs {
		c := setting("pair", p.ChunkerSetting)
		c["old"], c["new"], c["bytes"], c["chunks"], c["old_bytes"] = p.Old, p.New, i(p.NewBytes), i(p.Chunks), i(p.OldBytes)
		c["lacked_chunks"], c["lacked_bytes"] = i(p.LackedChunks), i(p.LackedBytes)
		c["list_bytes"], c["chunk_bytes"], c["plain_bytes"] = i(p.ListBytes), i(p.ChunkBytes), i(p.PlainBytes)
		if p.DeltaEstimateBytes != nil {
			c["delta_estimate_bytes"] = i(*p.DeltaEstimateBytes)
		}
		if p.RsyncBytes > 0 {
			c["rsync_bytes"], c["plain_rsync_ratio"] = i(p.RsyncBytes), f(p.PlainRsyncRatio)
			if p.DeltaEstimateBytes != nil {
				c["delta_rsync_ratio"] = f(p.DeltaRsyncRatio)
			}
		}
		row(c)
	}
	cw.Flush()
	return cw.Error()
}
