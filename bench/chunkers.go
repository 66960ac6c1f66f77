package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// DefaultDeltaMaxFile is the largest file, old or new, whose pairs
// MeasureChunkers also gives a delta estimate: EstimateResync holds both
// versions in memory, and besides them a few times the bytes that changed
// (2×9 MiB of x/tools releases, where at 4 MiB chunks every chunk changes,
// peak at about 150 MiB more; 2×64 MiB with a few small edits at 50 to
// 300 MiB more). At 64 MiB the estimate stays within a few hundred MiB.
const DefaultDeltaMaxFile = 64 << 20

// DefaultMinPassTime is how long MeasureChunkers keeps cutting a file with
// one setting to time it, unless told otherwise; see ChunkersConfig.
const DefaultMinPassTime = 250 * time.Millisecond

// maxTimingPasses bounds the passes over a small file.
const maxTimingPasses = 20

// DefaultChunkSizes returns the average chunk sizes MeasureChunkers tries
// unless told otherwise: the powers of two from 8 KiB to 4 MiB. 4 MiB is the
// largest whose max (four times the average, see ChunkerFor) stays within
// engine.MaxChunkSize.
func DefaultChunkSizes() []uint32 {
	var sizes []uint32
	for s := uint32(8 << 10); s <= 4<<20; s *= 2 {
		sizes = append(sizes, s)
	}
	return sizes
}

// DefaultMeasuredChunkers returns the registered chunkers MeasureChunkers
// measures unless told otherwise: all but the adaptive one. Adaptive cuts
// fixed-size chunks whose size follows the speed a transfer measures; with
// no transfer it cuts every chunk at its average size, exactly as fixed
// does, so measuring it here would only repeat fixed under another name.
func DefaultMeasuredChunkers() []string {
	var names []string
	for _, k := range engine.ChunkerKinds() {
		if k.Name != engine.AdaptiveChunker {
			names = append(names, k.Name)
		}
	}
	return names
}

// FilePair is an old and a new version of a file, for a re-sync estimate.
type FilePair struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// ChunkersConfig says what MeasureChunkers measures. Only Files or Pairs
// must be set.
type ChunkersConfig struct {
	// Files are cut one by one with every chunker at every size. The
	// files of Pairs are measured too, after these, each once.
	Files []string
	// Pairs are versions of a file whose re-sync, old to new, is
	// estimated with every chunker at every size.
	Pairs []FilePair
	// Chunkers names the registered chunkers to measure; default
	// DefaultMeasuredChunkers.
	Chunkers []string
	// Sizes are the average chunk sizes to measure, min and max derived
	// as ChunkerFor derives them; default DefaultChunkSizes. A size a
	// chunker refuses is an error.
	Sizes []uint32
	// Rsync also measures rsync -z on every pair, with an RsyncServer;
	// it needs rsync on PATH.
	Rsync bool
	// WorkDir is where the rsync daemon's module and its copies of the
	// old versions go; default a temporary directory, removed at the end.
	WorkDir string
	// DeltaMaxFile is the largest old or new version a pair may have to
	// get a delta estimate; 0 means DefaultDeltaMaxFile, negative none.
	DeltaMaxFile int64
	// MinPassTime is how long a file is cut with one setting for its
	// throughput: after the pass that gathers the statistics it is cut
	// again, up to 20 times, until the passes add up to MinPassTime, and
	// the fastest pass counts, so that a pause of a busy machine is
	// unlikely to count. 0 means DefaultMinPassTime, negative one pass.
	MinPassTime time.Duration
	// Progress, when not nil, is called now and then, from the goroutine
	// that called MeasureChunkers, with how far the measurement is.
	Progress func(StepProgress)
}

// ChunkerSetting is a chunker at one average size, min and max as
// ChunkerFor derives them.
type ChunkerSetting struct {
	Chunker string `json:"chunker"`
	Min     uint32 `json:"min"`
	Avg     uint32 `json:"avg"`
	Max     uint32 `json:"max"`
}

// String names the setting for people, like "fastcdc 64 KiB".
func (s ChunkerSetting) String() string { return s.Chunker + " " + formatSize(int64(s.Avg)) }

// ChunkSizeStats describe the sizes of the chunks of a file. Min, Max and
// Mean are exact; the percentiles come from a histogram with 64 buckets
// per power of two, so they are within 1/64 of the true value, and exact
// for sizes below 128 bytes and for chunks that all have one size.
type ChunkSizeStats struct {
	Chunks  int64   `json:"chunks"`
	Mean    float64 `json:"mean_size"`
	P10     uint32  `json:"p10_size"`
	P50     uint32  `json:"p50_size"`
	P90     uint32  `json:"p90_size"`
	MinSize uint32  `json:"min_size"`
	MaxSize uint32  `json:"max_size"`
}

// ChunkingRun is one file cut with one chunker at one size.
//
// Throughput is in MB/s (10^6 bytes per second) of the file's bytes over
// the time of its fastest pass (see ChunkersConfig.MinPassTime), on one
// goroutine, over a file read once before so that it is in the page cache.
// CutSeconds times the chunker's Next calls only, which read the file
// through a 1 MiB buffer: the copies from the page cache are included,
// nothing else is. CutHashSeconds adds the time of engine.SumChunk
// (BLAKE3-256) on every chunk. Statistics and progress are kept outside
// the timed calls.
//
// DedupRatio is DistinctBytes / Bytes: the share of the file that a store
// keeps once chunks repeated within the file are stored once. 1 means no
// chunk repeats; a file that is another one twice over gives about 0.5.
// Chunks are told apart by the first 8 bytes of their IDs.
type ChunkingRun struct {
	File string `json:"file"`
	ChunkerSetting
	Bytes int64 `json:"bytes"`
	ChunkSizeStats
	Passes         int     `json:"passes"`
	CutSeconds     float64 `json:"cut_seconds"`
	CutHashSeconds float64 `json:"cut_hash_seconds"`
	CutMBps        float64 `json:"cut_mb_per_s"`
	CutHashMBps    float64 `json:"cut_hash_mb_per_s"`
	DistinctChunks int64   `json:"distinct_chunks"`
	DistinctBytes  int64   `json:"distinct_bytes"`
	DedupRatio     float64 `json:"dedup_ratio"`
}

// ChunkingTotal is all files cut with one chunker at one size: throughput
// over all of them, and dedup across them, defined as ChunkingRun defines
// them with all files as one.
type ChunkingTotal struct {
	ChunkerSetting
	Files          int     `json:"files"`
	Bytes          int64   `json:"bytes"`
	Chunks         int64   `json:"chunks"`
	CutMBps        float64 `json:"cut_mb_per_s"`
	CutHashMBps    float64 `json:"cut_hash_mb_per_s"`
	DistinctChunks int64   `json:"distinct_chunks"`
	DistinctBytes  int64   `json:"distinct_bytes"`
	DedupRatio     float64 `json:"dedup_ratio"`
}

// PairRun is the re-sync of a pair, old to new, with one chunker at one
// size: the bytes sent by a push to a receiver that holds the old version.
//
// PlainBytes is ListBytes plus ChunkBytes, counted the way ResyncCost
// counts PlainTotal: ListBytes is the new manifest's header and its chunk
// list as engine.AppendChunkListDelta writes it against the old one, plus
// the receiver's answer of one bit per lacked chunk; ChunkBytes is every
// chunk of the new version that the old one lacks, compressed on its own
// with engine.Compress and preceded by a uvarint of its length, once
// however often it repeats, as a push sends it. QUIC's own framing is not
// counted.
//
// DeltaEstimateBytes is ResyncCost.Push of EstimateResync with this chunker
// in DefaultResync's strategy: what a push that sends the lacked chunks as
// deltas against the chunks they replaced carries. It is absent when old or
// new is larger than ChunkersConfig.DeltaMaxFile.
//
// RsyncBytes is what rsync -z moved on the wire for the same pair (see
// PairRsync), and the ratios are PlainBytes and DeltaEstimateBytes over it;
// all three are absent without rsync.
type PairRun struct {
	Old string `json:"old"`
	New string `json:"new"`
	ChunkerSetting
	OldBytes           int64   `json:"old_bytes"`
	NewBytes           int64   `json:"new_bytes"`
	Chunks             int64   `json:"chunks"`
	LackedChunks       int64   `json:"lacked_chunks"`
	LackedBytes        int64   `json:"lacked_bytes"`
	ListBytes          int64   `json:"list_bytes"`
	ChunkBytes         int64   `json:"chunk_bytes"`
	PlainBytes         int64   `json:"plain_bytes"`
	DeltaEstimateBytes *int64  `json:"delta_estimate_bytes,omitempty"`
	RsyncBytes         int64   `json:"rsync_bytes,omitempty"`
	PlainRsyncRatio    float64 `json:"plain_rsync_ratio,omitempty"`
	DeltaRsyncRatio    float64 `json:"delta_rsync_ratio,omitempty"`
}

// PairRsync is what rsync -z (RsyncArgs) moved to bring a copy of old up to
// new through an RsyncServer on loopback.
type PairRsync struct {
	Old      string  `json:"old"`
	New      string  `json:"new"`
	Up       int64   `json:"up_bytes"`
	Down     int64   `json:"down_bytes"`
	Total    int64   `json:"total_bytes"`
	Literal  int64   `json:"literal_bytes"`
	Matched  int64   `json:"matched_bytes"`
	Compress string  `json:"compress,omitempty"`
	Seconds  float64 `json:"seconds"`
}

// SizeHistogram counts the chunk sizes of all files cut with one chunker
// at one size, in bins of an eighth of a power of two.
type SizeHistogram struct {
	ChunkerSetting
	Bins []HistogramBin `json:"bins"`
}

// HistogramBin counts the chunks of Lower bytes or more and less than Upper.
type HistogramBin struct {
	Lower uint32 `json:"lower"`
	Upper uint32 `json:"upper"`
	Count int64  `json:"count"`
}

// ChunkersResult is what MeasureChunkers measured. Runs are in the order
// file, chunker, size; Totals chunker, size; Pairs pair, chunker, size.
type ChunkersResult struct {
	// Machine says where the figures were made: OS, architecture, CPUs
	// and Go version.
	Machine  string          `json:"machine"`
	Chunkers []string        `json:"chunkers"`
	Sizes    []uint32        `json:"sizes"`
	Runs     []ChunkingRun   `json:"runs"`
	Totals   []ChunkingTotal `json:"totals"`
	Pairs    []PairRun       `json:"pairs,omitempty"`
	Rsync    []PairRsync     `json:"rsync,omitempty"`
	// Histograms has one entry per chunker, at the size of the grid
	// nearest its default average (the only size when one was given).
	Histograms []SizeHistogram `json:"histograms"`
}

// MeasureChunkers cuts files with every chunker at every size and measures
// throughput, chunk sizes and dedup (see ChunkingRun), and estimates the
// re-sync of every pair (see PairRun).
//
// Files stream through fixed buffers: memory grows with the number of
// chunks only in the dedup maps (8-byte keys) and, for a pair, in the two
// chunk lists (36 bytes per chunk) that the chunk list delta is made from,
// plus the two versions themselves for the delta estimate, within
// DeltaMaxFile each. It runs on the calling goroutine (rsync aside), so
// that the throughput figures do not compete with one another.
func MeasureChunkers(ctx context.Context, cfg ChunkersConfig) (ChunkersResult, error) {
	m, err := newChunkersMeasurement(cfg)
	if err != nil {
		return ChunkersResult{}, err
	}
	return m.run(ctx)
}

// chunkersMeasurement is one MeasureChunkers call with its checked input.
type chunkersMeasurement struct {
	cfg      ChunkersConfig
	files    []string
	sizes    map[string]int64 // of files and pair members
	settings [][]engine.ChunkerParams
	res      ChunkersResult

	done, total int64
	step        string
	reported    int64
}

func newChunkersMeasurement(cfg ChunkersConfig) (*chunkersMeasurement, error) {
	m := &chunkersMeasurement{cfg: cfg, sizes: map[string]int64{}}
	if len(cfg.Files) == 0 && len(cfg.Pairs) == 0 {
		return nil, errors.New("measure chunkers: no files and no pairs")
	}
	if len(m.cfg.Chunkers) == 0 {
		m.cfg.Chunkers = DefaultMeasuredChunkers()
	}
	if len(m.cfg.Sizes) == 0 {
		m.cfg.Sizes = DefaultChunkSizes()
	}
	if m.cfg.DeltaMaxFile == 0 {
		m.cfg.DeltaMaxFile = DefaultDeltaMaxFile
	}
	if m.cfg.MinPassTime == 0 {
		m.cfg.MinPassTime = DefaultMinPassTime
	}
	for _, name := range m.cfg.Chunkers {
		var row []engine.ChunkerParams
		for _, size := range m.cfg.Sizes {
			p, err := ChunkerFor(name, size)
			if err != nil {
				return nil, fmt.Errorf("measure chunkers: %s at %s: %w", name, formatSize(int64(size)), err)
			}
			row = append(row, p)
		}
		m.settings = append(m.settings, row)
	}
	add := func(path string) error {
		if _, seen := m.sizes[path]; seen {
			return nil
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("measure chunkers: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("measure chunkers: %s is not a regular file", path)
		}
		m.sizes[path] = fi.Size()
		m.files = append(m.files, path)
		return nil
	}
	for _, f := range cfg.Files {
		if err := add(f); err != nil {
			return nil, err
		}
	}
	for _, p := range cfg.Pairs {
		if p.Old == "" || p.New == "" {
			return nil, fmt.Errorf("measure chunkers: pair %q:%q lacks a file", p.Old, p.New)
		}
		if err := add(p.Old); err != nil {
			return nil, err
		}
		if err := add(p.New); err != nil {
			return nil, err
		}
	}

	grid := int64(len(m.cfg.Chunkers) * len(m.cfg.Sizes))
	for _, f := range m.files {
		m.total += grid * m.sizes[f]
	}
	for _, p := range cfg.Pairs {
		both := m.sizes[p.Old] + m.sizes[p.New]
		m.total += grid * both
		if m.estimates(p) {
			m.total += grid * both
		}
		if cfg.Rsync {
			m.total += m.sizes[p.New]
		}
	}
	m.res = ChunkersResult{
		Machine:  Machine(),
		Chunkers: m.cfg.Chunkers,
		Sizes:    m.cfg.Sizes,
	}
	return m, nil
}

// estimates reports whether pair p gets a delta estimate.
func (m *chunkersMeasurement) estimates(p FilePair) bool {
	limit := m.cfg.DeltaMaxFile
	return limit > 0 && m.sizes[p.Old] <= limit && m.sizes[p.New] <= limit
}

func (m *chunkersMeasurement) run(ctx context.Context) (ChunkersResult, error) {
	if err := m.measureFiles(ctx); err != nil {
		return ChunkersResult{}, err
	}
	if err := m.measurePairs(ctx); err != nil {
		return ChunkersResult{}, err
	}
	m.report(true)
	return m.res, nil
}

// progress counts n bytes of work done on step and reports it, at most
// every few MiB unless a new step begins.
func (m *chunkersMeasurement) progress(step string, n int64) {
	m.done += n
	force := step != m.step
	m.step = step
	if force || m.done-m.reported >= 4<<20 {
		m.report(false)
	}
}

func (m *chunkersMeasurement) report(final bool) {
	if m.cfg.Progress == nil {
		return
	}
	if final {
		m.done = m.total
	}
	m.reported = m.done
	m.cfg.Progress(StepProgress{Step: m.step, Done: m.done, Total: m.total})
}

// measureFiles makes the Runs, Totals and Histograms. The loops go by
// chunker and size first, so that only one cross-file dedup map is alive.
func (m *chunkersMeasurement) measureFiles(ctx context.Context) error {
	// Read every file once, so that all passes find it in the page cache.
	buf := make([]byte, 1<<20)
	for _, f := range m.files {
		if err := readThrough(ctx, f, buf); err != nil {
			return err
		}
	}
	runs := make([]ChunkingRun, len(m.files)*len(m.cfg.Chunkers)*len(m.cfg.Sizes))
	var stats sizeStats
	for ci, name := range m.cfg.Chunkers {
		hi := nearestSize(m.cfg.Sizes, name)
		var chart sizeStats
		for si, p := range m.settings[ci] {
			total := ChunkingTotal{ChunkerSetting: settingOf(p), Files: len(m.files)}
			var cut, cutHash time.Duration
			across := map[uint64]struct{}{}
			for fi, path := range m.files {
				run := ChunkingRun{File: path, ChunkerSetting: settingOf(p)}
				within := map[uint64]struct{}{}
				stats.reset()
				step := fmt.Sprintf("%s %s", total.ChunkerSetting, filepath.Base(path))
				pass, err := cutFile(ctx, path, p, func(n int64) { m.progress(step, n) }, func(data []byte, id engine.ChunkID) error {
					n := uint32(len(data))
					stats.add(n)
					k := idKey(id)
					if _, dup := within[k]; !dup {
						within[k] = struct{}{}
						run.DistinctChunks++
						run.DistinctBytes += int64(n)
					}
					if _, dup := across[k]; !dup {
						across[k] = struct{}{}
						total.DistinctChunks++
						total.DistinctBytes += int64(n)
					}
					return nil
				})
				if err != nil {
					return err
				}
				run.Bytes = pass.bytes
				run.ChunkSizeStats = stats.summary()
				bestCut, bestCutHash := pass.cut, pass.cut+pass.hash
				run.Passes = 1
				for spent := bestCutHash; spent < m.cfg.MinPassTime && run.Passes < maxTimingPasses; run.Passes++ {
					again, err := cutFile(ctx, path, p, func(int64) {}, nil)
					if err != nil {
						return err
					}
					spent += again.cut + again.hash
					bestCut, bestCutHash = min(bestCut, again.cut), min(bestCutHash, again.cut+again.hash)
				}
				run.CutSeconds, run.CutHashSeconds = bestCut.Seconds(), bestCutHash.Seconds()
				run.CutMBps, run.CutHashMBps = mbps(pass.bytes, bestCut), mbps(pass.bytes, bestCutHash)
				run.DedupRatio = ratio(run.DistinctBytes, run.Bytes)
				runs[(fi*len(m.cfg.Chunkers)+ci)*len(m.cfg.Sizes)+si] = run
				if si == hi {
					chart.merge(&stats)
				}
				total.Bytes += run.Bytes
				total.Chunks += run.Chunks
				cut += bestCut
				cutHash += bestCutHash
			}
			total.CutMBps, total.CutHashMBps = mbps(total.Bytes, cut), mbps(total.Bytes, cutHash)
			total.DedupRatio = ratio(total.DistinctBytes, total.Bytes)
			m.res.Totals = append(m.res.Totals, total)
		}
		m.res.Histograms = append(m.res.Histograms, SizeHistogram{ChunkerSetting: settingOf(m.settings[ci][hi]), Bins: chart.bins()})
	}
	m.res.Runs = runs
	return nil
}

// measurePairs makes the Pairs and Rsync results, one pair at a time, so
// that at most one pair's versions are in memory for the delta estimates.
func (m *chunkersMeasurement) measurePairs(ctx context.Context) error {
	if len(m.cfg.Pairs) == 0 {
		return nil
	}
	var srv *RsyncServer
	if m.cfg.Rsync {
		work := m.cfg.WorkDir
		if work == "" {
			dir, err := os.MkdirTemp("", "chunksync-bench-rsync-")
			if err != nil {
				return fmt.Errorf("measure chunkers: %w", err)
			}
			defer os.RemoveAll(dir)
			work = dir
		}
		var err error
		if srv, err = NewRsyncServer(work); err != nil {
			return fmt.Errorf("measure chunkers: %w", err)
		}
	}
	strategy, err := DefaultResync()
	if err != nil {
		return fmt.Errorf("measure chunkers: %w", err)
	}
	for _, pair := range m.cfg.Pairs {
		var rsync int64
		if srv != nil {
			m.progress("rsync "+filepath.Base(pair.New), 0)
			r, err := m.rsyncPair(ctx, srv, pair)
			if err != nil {
				return err
			}
			m.progress("rsync "+filepath.Base(pair.New), m.sizes[pair.New])
			m.res.Rsync = append(m.res.Rsync, r)
			rsync = r.Total
		}
		var old, new []byte
		if m.estimates(pair) {
			if old, err = os.ReadFile(pair.Old); err != nil {
				return fmt.Errorf("measure chunkers: %w", err)
			}
			if new, err = os.ReadFile(pair.New); err != nil {
				return fmt.Errorf("measure chunkers: %w", err)
			}
		}
		for _, row := range m.settings {
			for _, p := range row {
				run, err := m.pairRun(ctx, pair, p)
				if err != nil {
					return err
				}
				if old != nil {
					step := fmt.Sprintf("delta %s %s", settingOf(p), filepath.Base(pair.New))
					m.progress(step, 0)
					s := strategy
					s.Chunker = p
					c, err := EstimateResync(old, new, s)
					if err != nil {
						return fmt.Errorf("measure chunkers: delta estimate %s to %s with %s: %w", pair.Old, pair.New, p, err)
					}
					est := int64(c.Push())
					run.DeltaEstimateBytes = &est
					m.progress(step, int64(len(old)+len(new)))
				}
				if rsync > 0 {
					run.RsyncBytes = rsync
					run.PlainRsyncRatio = float64(run.PlainBytes) / float64(rsync)
					if run.DeltaEstimateBytes != nil {
						run.DeltaRsyncRatio = float64(*run.DeltaEstimateBytes) / float64(rsync)
					}
				}
				m.res.Pairs = append(m.res.Pairs, run)
			}
		}
	}
	return nil
}

// pairRun cuts both versions of pair with p and counts what a push of new
// to a receiver holding old sends without deltas (see PairRun).
func (m *chunkersMeasurement) pairRun(ctx context.Context, pair FilePair, p engine.ChunkerParams) (PairRun, error) {
	run := PairRun{Old: pair.Old, New: pair.New, ChunkerSetting: settingOf(p)}
	step := fmt.Sprintf("re-sync %s %s", run.ChunkerSetting, filepath.Base(pair.New))
	tick := func(n int64) { m.progress(step, n) }
	var oldRefs, newRefs []engine.ChunkRef
	held := map[uint64]struct{}{}
	pass, err := cutFile(ctx, pair.Old, p, tick, func(data []byte, id engine.ChunkID) error {
		oldRefs = append(oldRefs, engine.ChunkRef{ID: id, Size: uint32(len(data))})
		held[idKey(id)] = struct{}{}
		return nil
	})
	if err != nil {
		return PairRun{}, err
	}
	run.OldBytes = pass.bytes
	var z []byte
	pass, err = cutFile(ctx, pair.New, p, tick, func(data []byte, id engine.ChunkID) error {
		newRefs = append(newRefs, engine.ChunkRef{ID: id, Size: uint32(len(data))})
		k := idKey(id)
		if _, ok := held[k]; ok {
			return nil
		}
		// A chunk repeated within new travels once; from then on
		// the receiver holds it.
		held[k] = struct{}{}
		_, z = engine.Compress(z[:0], data)
		run.LackedChunks++
		run.LackedBytes += int64(len(data))
		run.ChunkBytes += int64(uvarintLen(uint64(len(z))) + len(z))
		return nil
	})
	if err != nil {
		return PairRun{}, err
	}
	run.NewBytes = pass.bytes
	run.Chunks = int64(len(newRefs))
	header, err := manifestHeaderLen(pair.New, run.NewBytes, p)
	if err != nil {
		return PairRun{}, err
	}
	list := engine.AppendChunkListDelta(nil, oldRefs, newRefs)
	run.ListBytes = int64(header+len(list)) + (run.LackedChunks+7)/8
	run.PlainBytes = run.ListBytes + run.ChunkBytes
	return run, nil
}

// manifestHeaderLen is the length of the header of a manifest of path, of
// size bytes cut with p: everything MarshalBinary writes but the chunk
// list, which travels as a delta. It is counted as EstimateResync counts
// it, from the encoding of the manifest without chunks.
func manifestHeaderLen(path string, size int64, p engine.ChunkerParams) (int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("measure chunkers: %w", err)
	}
	m := engine.Manifest{Path: strings.ToValidUTF8(filepath.Base(path), "?"), Mode: fi.Mode().Perm(), ModTime: fi.ModTime(), Chunker: p}
	b, err := m.MarshalBinary()
	if err != nil {
		return 0, fmt.Errorf("measure chunkers: manifest of %s: %w", path, err)
	}
	// Less the size 0 and the chunk count 0 (one byte each), plus the
	// real size.
	return len(b) - 2 + len(binary.AppendVarint(nil, size)), nil
}

// rsyncPair puts a copy of pair.Old into srv's module and has rsync bring
// it up to pair.New.
func (m *chunkersMeasurement) rsyncPair(ctx context.Context, srv *RsyncServer, pair FilePair) (PairRsync, error) {
	name := filepath.Base(pair.New)
	remote := filepath.Join(srv.Dir(), name)
	if err := copyFile(pair.Old, remote); err != nil {
		return PairRsync{}, fmt.Errorf("measure chunkers: rsync %s: %w", pair.Old, err)
	}
	defer os.Remove(remote)
	t, err := srv.Push(ctx, pair.New, name)
	if err != nil {
		return PairRsync{}, fmt.Errorf("measure chunkers: rsync %s onto %s: %w", pair.New, pair.Old, err)
	}
	return PairRsync{
		Old: pair.Old, New: pair.New,
		Up: t.Up, Down: t.Down, Total: t.Total(),
		Literal: t.Literal, Matched: t.Matched, Compress: t.Compress,
		Seconds: t.Wall.Seconds(),
	}, nil
}

// copyFile copies src to a new file dst, streaming.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// readThrough reads the file at path once, to bring it into the page cache.
func readThrough(ctx context.Context, path string, buf []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("measure chunkers: %w", err)
	}
	defer f.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := f.Read(buf)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("measure chunkers: read %s: %w", path, err)
		}
	}
}

// chunkPass is what one pass of a chunker over a file took.
type chunkPass struct {
	bytes     int64
	cut, hash time.Duration
}

// cutFile cuts the file at path with p, reading it through a 1 MiB buffer,
// and calls visit, unless nil, with every chunk and its ID. It times the
// chunker's Next calls and the SumChunk calls, and nothing else: progress
// gets the bytes cut every few MiB, between chunks, which is also when ctx
// is checked.
func cutFile(ctx context.Context, path string, p engine.ChunkerParams, progress func(n int64), visit func(data []byte, id engine.ChunkID) error) (chunkPass, error) {
	f, err := os.Open(path)
	if err != nil {
		return chunkPass{}, fmt.Errorf("measure chunkers: %w", err)
	}
	defer f.Close()
	c, err := engine.NewChunker(bufio.NewReaderSize(f, 1<<20), p)
	if err != nil {
		return chunkPass{}, fmt.Errorf("measure chunkers: %w", err)
	}
	var pass chunkPass
	var unreported int64
	for {
		t0 := time.Now()
		data, err := c.Next()
		t1 := time.Now()
		pass.cut += t1.Sub(t0)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return chunkPass{}, fmt.Errorf("measure chunkers: cut %s with %s: %w", path, p, err)
		}
		id := engine.SumChunk(data)
		pass.hash += time.Since(t1)
		pass.bytes += int64(len(data))
		if visit != nil {
			if err := visit(data, id); err != nil {
				return chunkPass{}, err
			}
		}
		if unreported += int64(len(data)); unreported >= 4<<20 {
			progress(unreported)
			unreported = 0
			if err := ctx.Err(); err != nil {
				return chunkPass{}, err
			}
		}
	}
	progress(unreported)
	return pass, nil
}

// idKey is the part of a chunk ID that the dedup statistics tell chunks
// apart by: two different chunks of a data set share it with a
// probability of about n²/2⁶⁵, negligible even for billions of chunks.
func idKey(id engine.ChunkID) uint64 { return binary.LittleEndian.Uint64(id[:8]) }

func settingOf(p engine.ChunkerParams) ChunkerSetting {
	return ChunkerSetting{Chunker: p.Name, Min: p.Min, Avg: p.Avg, Max: p.Max}
}

// nearestSize returns the index of the size in sizes nearest, by ratio,
// to the default average of the chunker name; the smaller one on a tie.
func nearestSize(sizes []uint32, name string) int {
	k, err := engine.LookupChunker(name)
	if err != nil {
		return 0
	}
	want := math.Log2(float64(k.Defaults.Avg))
	best := 0
	for i, s := range sizes {
		d, bd := math.Abs(math.Log2(float64(s))-want), math.Abs(math.Log2(float64(sizes[best]))-want)
		if d < bd || d == bd && s < sizes[best] {
			best = i
		}
	}
	return best
}

// mbps is n bytes over d in MB/s (10^6 bytes a second); 0 for no time.
func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds() / 1e6
}

// ratio is a dedup ratio: distinct over total bytes, 1 for no bytes (JSON
// has no NaN, and nothing repeats in an empty file).
func ratio(distinct, total int64) float64 {
	if total == 0 {
		return 1
	}
	return float64(distinct) / float64(total)
}

// The size histogram has histSub buckets per power of two: sizes below
// 2·histSub have a bucket each, larger ones share a bucket with those that
// agree in their top log2(histSub)+1 bits. Sizes up to 2^25 fit, above
// engine.MaxChunkSize.
const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	histBuckets = (25 - histSubBits + 1) * histSub
	// chartMerge fine buckets make a bin of a chart: an eighth of a
	// power of two.
	chartMerge = histSub / 8
)

// sizeStats are exact count, sum, min and max of chunk sizes and their
// histogram; 10 KiB however many chunks it has seen.
type sizeStats struct {
	count, sum int64
	min, max   uint32
	hist       [histBuckets]int64
}

func (s *sizeStats) reset() { *s = sizeStats{} }

func (s *sizeStats) add(n uint32) {
	if s.count == 0 || n < s.min {
		s.min = n
	}
	s.max = max(s.max, n)
	s.count++
	s.sum += int64(n)
	s.hist[histBucket(n)]++
}

func (s *sizeStats) merge(o *sizeStats) {
	if o.count == 0 {
		return
	}
	if s.count == 0 || o.min < s.min {
		s.min = o.min
	}
	s.max = max(s.max, o.max)
	s.count += o.count
	s.sum += o.sum
	for i, c := range o.hist {
		s.hist[i] += c
	}
}

// histBucket returns the bucket of size n.
func histBucket(n uint32) int {
	e := bits.Len32(n) - 1
	if e < histSubBits {
		return int(n)
	}
	return min((e-histSubBits+1)*histSub+int(n>>(e-histSubBits)&(histSub-1)), histBuckets-1)
}

// histLower returns the smallest size of bucket b; histLower(histBuckets)
// is the end of the last.
func histLower(b int) uint64 {
	if b < 2*histSub {
		return uint64(b)
	}
	e := b/histSub + histSubBits - 1
	return uint64(histSub+b%histSub) << (e - histSubBits)
}

// percentile returns the size below which a share q of the chunks fall:
// the middle of the bucket that holds the chunk of that rank, within min
// and max.
func (s *sizeStats) percentile(q float64) uint32 {
	if s.count == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(s.count))), 1)
	var seen int64
	for b, c := range s.hist {
		if seen += c; seen >= rank {
			mid := (histLower(b) + histLower(b+1) - 1) / 2
			return uint32(min(max(mid, uint64(s.min)), uint64(s.max)))
		}
	}
	return s.max
}

func (s *sizeStats) summary() ChunkSizeStats {
	st := ChunkSizeStats{Chunks: s.count, MinSize: s.min, MaxSize: s.max,
		P10: s.percentile(0.1), P50: s.percentile(0.5), P90: s.percentile(0.9)}
	if s.count > 0 {
		st.Mean = float64(s.sum) / float64(s.count)
	}
	return st
}

// bins returns the histogram in bins of chartMerge buckets, from the first
// bin that has chunks to the last.
func (s *sizeStats) bins() []HistogramBin {
	var bins []HistogramBin
	for b := 0; b < histBuckets; b += chartMerge {
		var n int64
		for _, c := range s.hist[b : b+chartMerge] {
			n += c
		}
		if n == 0 && len(bins) == 0 {
			continue
		}
		bins = append(bins, HistogramBin{Lower: uint32(histLower(b)), Upper: uint32(min(histLower(b+chartMerge), math.MaxUint32)), Count: n})
	}
	for len(bins) > 0 && bins[len(bins)-1].Count == 0 {
		bins = bins[:len(bins)-1]
	}
	return bins
}

// formatSize gives n bytes in binary units for people: "64 KiB" when exact,
// else with one decimal, "1.5 MiB".
func formatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i, v := 0, float64(n)
	for i < len(units)-1 && (v >= 1024 || v <= -1024) {
		v /= 1024
		i++
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%d %s", int64(v), units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// Report builds the report of the measurement: the chunking of every file
// with its size histogram and throughput charts, the totals over all files,
// and, with pairs, their re-sync bytes against rsync's.
func (r ChunkersResult) Report() Report {
	rep := Report{Title: "Chunking strategies", Note: r.Machine}
	names := displayNames(r)

	hist := Chart{Kind: ChartHistogram, Title: "Chunk sizes, all files", XLabel: "chunk size (bytes)", YLabel: "chunks", LogX: true}
	for _, h := range r.Histograms {
		s := Series{Name: h.ChunkerSetting.String()}
		for _, b := range h.Bins {
			// A log axis has no 0: the bin from 0 holds only a
			// file's tiny last chunks.
			s.Points = append(s.Points, Point{X: math.Max(float64(b.Lower), 1), Y: float64(b.Count)})
		}
		if n := len(h.Bins); n > 0 {
			// The end of the last bin, which has no chunks.
			s.Points = append(s.Points, Point{X: float64(h.Bins[n-1].Upper)})
		}
		hist.Series = append(hist.Series, s)
	}
	speed := Chart{Kind: ChartLine, Title: "Chunking throughput, all files", XLabel: "average chunk size (bytes)", YLabel: "MB/s", LogX: true, LogY: true}
	for _, name := range r.Chunkers {
		cut, hashed := Series{Name: name}, Series{Name: name + " + BLAKE3"}
		for _, t := range r.Totals {
			if t.Chunker == name {
				cut.Points = append(cut.Points, Point{X: float64(t.Avg), Y: t.CutMBps})
				hashed.Points = append(hashed.Points, Point{X: float64(t.Avg), Y: t.CutHashMBps})
			}
		}
		speed.Series = append(speed.Series, cut, hashed)
	}
	runs := &Table{Columns: []string{"file", "chunker", "avg", "chunks", "mean", "p10", "p50", "p90", "min", "max", "cut MB/s", "cut+BLAKE3 MB/s", "dedup"}}
	for _, run := range r.Runs {
		runs.Rows = append(runs.Rows, []string{
			names[run.File], run.Chunker, formatSize(int64(run.Avg)), fmt.Sprint(run.Chunks),
			formatSize(int64(math.Round(run.Mean))), formatSize(int64(run.P10)), formatSize(int64(run.P50)), formatSize(int64(run.P90)),
			formatSize(int64(run.MinSize)), formatSize(int64(run.MaxSize)),
			fmt.Sprintf("%.0f", run.CutMBps), fmt.Sprintf("%.0f", run.CutHashMBps), fmt.Sprintf("%.3f", run.DedupRatio),
		})
	}
	rep.Sections = append(rep.Sections, Section{
		Heading: "Chunking",
		Text: "Each file cut with each chunker at each average size (min a quarter, max four times the average, or the chunker's own ratios). " +
			"Throughput is MB/s (10^6 bytes a second) of the fastest of a few passes, on one goroutine, over a file already in the page cache: " +
			"cut times the chunker's Next calls, which read the file through a 1 MiB buffer; cut+BLAKE3 adds the BLAKE3-256 chunk IDs. " +
			"Percentiles are within 1/64 of the exact sizes; mean, min and max are exact. " +
			"Dedup is the bytes of distinct chunks over all bytes: 1 when no chunk repeats, about 0.5 for a file that is another one twice.",
		Charts: []Chart{hist, speed},
		Table:  runs,
	})

	totals := &Table{Columns: []string{"chunker", "avg", "files", "bytes", "chunks", "distinct bytes", "dedup", "cut MB/s", "cut+BLAKE3 MB/s"}}
	for _, t := range r.Totals {
		totals.Rows = append(totals.Rows, []string{
			t.Chunker, formatSize(int64(t.Avg)), fmt.Sprint(t.Files), fmt.Sprint(t.Bytes), fmt.Sprint(t.Chunks),
			fmt.Sprint(t.DistinctBytes), fmt.Sprintf("%.3f", t.DedupRatio), fmt.Sprintf("%.0f", t.CutMBps), fmt.Sprintf("%.0f", t.CutHashMBps),
		})
	}
	rep.Sections = append(rep.Sections, Section{
		Heading: "All files",
		Text:    "The files together: throughput over all of them, and dedup across them, a chunk of one file found in another counting once.",
		Table:   totals,
	})

	if len(r.Pairs) == 0 {
		return rep
	}
	pairs := &Table{Columns: []string{"old", "new", "chunker", "avg", "lacked chunks", "lacked bytes", "list bytes", "chunks+list bytes", "delta estimate bytes", "rsync -z bytes", "chunks+list / rsync", "delta / rsync"}}
	var charts []Chart
	var chart *Chart
	for _, p := range r.Pairs {
		title := fmt.Sprintf("Re-sync %s → %s", names[p.Old], names[p.New])
		if chart == nil || chart.Title != title {
			charts = append(charts, Chart{Kind: ChartBar, Title: title, YLabel: "bytes", LogY: true, Series: []Series{{Name: "chunks + list"}, {Name: "delta estimate"}, {Name: "rsync -z"}}})
			chart = &charts[len(charts)-1]
		}
		label := p.ChunkerSetting.String()
		chart.Series[0].Points = append(chart.Series[0].Points, Point{Label: label, Y: float64(p.PlainBytes)})
		delta, deltaRatio := "-", "-"
		if p.DeltaEstimateBytes != nil {
			chart.Series[1].Points = append(chart.Series[1].Points, Point{Label: label, Y: float64(*p.DeltaEstimateBytes)})
			delta = fmt.Sprint(*p.DeltaEstimateBytes)
		}
		rsync, plainRatio := "-", "-"
		if p.RsyncBytes > 0 {
			chart.Series[2].Points = append(chart.Series[2].Points, Point{Label: label, Y: float64(p.RsyncBytes)})
			rsync, plainRatio = fmt.Sprint(p.RsyncBytes), fmt.Sprintf("%.2f", p.PlainRsyncRatio)
			if p.DeltaEstimateBytes != nil {
				deltaRatio = fmt.Sprintf("%.2f", p.DeltaRsyncRatio)
			}
		}
		pairs.Rows = append(pairs.Rows, []string{
			names[p.Old], names[p.New], p.Chunker, formatSize(int64(p.Avg)), fmt.Sprint(p.LackedChunks), fmt.Sprint(p.LackedBytes),
			fmt.Sprint(p.ListBytes), fmt.Sprint(p.PlainBytes), delta, rsync, plainRatio, deltaRatio,
		})
	}
	for i := range charts {
		// Series without points (no estimate, no rsync) draw nothing.
		charts[i].Series = slices.DeleteFunc(charts[i].Series, func(s Series) bool { return len(s.Points) == 0 })
	}
	rep.Sections = append(rep.Sections, Section{
		Heading: "Re-sync",
		Text: "Bytes a push of the new version sends to a receiver that holds the old one. " +
			"Chunks+list: the chunks the old version lacks, each compressed on its own with zstd and sent once, plus the new manifest's header, its chunk list as a delta against the old list, and the receiver's one-bit answers. " +
			"Delta estimate: the same re-sync with the lacked chunks sent as deltas against the chunks they replaced (bench.EstimateResync with this chunker), for files small enough to hold in memory. " +
			"rsync -z: every byte on the TCP connection of rsync -z --no-whole-file bringing the old version up to the new one on loopback; QUIC framing is not counted for chunksync.",
		Charts: charts,
		Table:  pairs,
	})
	if len(r.Rsync) > 0 {
		t := &Table{Columns: []string{"old", "new", "up", "down", "total", "literal", "matched", "compression", "seconds"}}
		for _, x := range r.Rsync {
			t.Rows = append(t.Rows, []string{names[x.Old], names[x.New], fmt.Sprint(x.Up), fmt.Sprint(x.Down), fmt.Sprint(x.Total),
				fmt.Sprint(x.Literal), fmt.Sprint(x.Matched), x.Compress, fmt.Sprintf("%.2f", x.Seconds)})
		}
		rep.Sections = append(rep.Sections, Section{
			Heading: "rsync -z",
			Text:    "What rsync " + strings.Join(RsyncArgs, " ") + " moved for each pair, in bytes; literal and matched are from its --stats.",
			Table:   t,
		})
	}
	return rep
}

// displayNames names the files of r for tables and charts: by their base
// names when those tell them apart, else by their paths.
func displayNames(r ChunkersResult) map[string]string {
	paths := map[string]bool{}
	for _, run := range r.Runs {
		paths[run.File] = true
	}
	for _, p := range r.Pairs {
		paths[p.Old], paths[p.New] = true, true
	}
	names := map[string]string{}
	bases := map[string]bool{}
	for p := range paths {
		b := filepath.Base(p)
		if bases[b] {
			for p := range paths {
				names[p] = p
			}
			return names
		}
		bases[b] = true
		names[p] = b
	}
	return names
}
