package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// mixedData returns n seeded bytes: word salad that compresses, with a
// stretch of random bytes in every 64 KiB, and no long repeats, so that no
// chunk of it repeats by chance.
func mixedData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x6d6978))
	words := []string{"chunk", "sync", "the", "of", "manifest", "server", "file", "a", "zstd", "rabin", "block", "data\n"}
	b := make([]byte, 0, n+64<<10)
	for len(b) < n {
		for end := len(b) + 48<<10; len(b) < end; {
			b = append(b, words[rng.IntN(len(words))]...)
			b = append(b, ' ')
		}
		noise := make([]byte, 16<<10)
		for i := range noise {
			noise[i] = byte(rng.Uint32())
		}
		b = append(b, noise...)
	}
	return b[:n]
}

// writeFile writes b to a new file name in dir and returns its path.
func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// directCut cuts b with p in memory, the reference the measurement is
// checked against.
func directCut(t *testing.T, b []byte, p engine.ChunkerParams) []uint32 {
	t.Helper()
	c, err := engine.NewChunker(bytes.NewReader(b), p)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []uint32
	for {
		data, err := c.Next()
		if errors.Is(err, io.EOF) {
			return sizes
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, uint32(len(data)))
	}
}

// measure runs MeasureChunkers, with one timing pass unless cfg says
// otherwise.
func measure(t *testing.T, cfg ChunkersConfig) ChunkersResult {
	t.Helper()
	if cfg.MinPassTime == 0 {
		cfg.MinPassTime = -1
	}
	res, err := MeasureChunkers(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestMeasureChunkersMatchesADirectRun(t *testing.T) {
	data := mixedData(1, 3<<20/2)
	path := writeFile(t, t.TempDir(), "mixed.bin", data)
	sizes := []uint32{16 << 10, 64 << 10}
	var reports []StepProgress
	res := measure(t, ChunkersConfig{
		Files: []string{path}, Sizes: sizes, MinPassTime: 20 * time.Millisecond,
		Progress: func(p StepProgress) { reports = append(reports, p) },
	})
	repeated := false

	if !slices.Equal(res.Chunkers, DefaultMeasuredChunkers()) || slices.Contains(res.Chunkers, engine.AdaptiveChunker) {
		t.Fatalf("measured chunkers %v, want %v without adaptive", res.Chunkers, DefaultMeasuredChunkers())
	}
	if len(res.Runs) != len(res.Chunkers)*len(sizes) || len(res.Totals) != len(res.Runs) {
		t.Fatalf("%d runs and %d totals for %d chunkers and %d sizes", len(res.Runs), len(res.Totals), len(res.Chunkers), len(sizes))
	}
	for i, run := range res.Runs {
		t.Run(run.ChunkerSetting.String(), func(t *testing.T) {
			p, err := ChunkerFor(run.Chunker, run.Avg)
			if err != nil {
				t.Fatal(err)
			}
			if run.ChunkerSetting != settingOf(p) {
				t.Errorf("setting %+v, ChunkerFor gives %s", run.ChunkerSetting, p)
			}
			want := directCut(t, data, p)
			var sum int64
			for _, s := range want {
				sum += int64(s)
			}
			if run.Bytes != int64(len(data)) || run.Chunks != int64(len(want)) || run.MinSize != slices.Min(want) || run.MaxSize != slices.Max(want) {
				t.Errorf("%d bytes in %d chunks of %d..%d, a direct run gives %d in %d of %d..%d",
					run.Bytes, run.Chunks, run.MinSize, run.MaxSize, len(data), len(want), slices.Min(want), slices.Max(want))
			}
			if math.Abs(run.Mean-float64(sum)/float64(len(want))) > 1e-9 {
				t.Errorf("mean %f, a direct run gives %f", run.Mean, float64(sum)/float64(len(want)))
			}
			sorted := slices.Sorted(slices.Values(want))
			for _, q := range []struct {
				share float64
				got   uint32
			}{{0.1, run.P10}, {0.5, run.P50}, {0.9, run.P90}} {
				exact := sorted[int(math.Ceil(q.share*float64(len(sorted))))-1]
				if math.Abs(float64(q.got)-float64(exact)) > float64(exact)/histSub+1 || q.got < run.MinSize || q.got > run.MaxSize {
					t.Errorf("p%.0f %d, exact %d, min %d, max %d", 100*q.share, q.got, exact, run.MinSize, run.MaxSize)
				}
			}
			if run.CutMBps <= 0 || run.CutHashMBps <= 0 || run.CutHashMBps > run.CutMBps || run.CutSeconds > run.CutHashSeconds {
				t.Errorf("cut %.0f MB/s in %g s, cut+BLAKE3 %.0f MB/s in %g s", run.CutMBps, run.CutSeconds, run.CutHashMBps, run.CutHashSeconds)
			}
			if run.Passes < 1 || run.Passes > maxTimingPasses {
				t.Errorf("%d passes", run.Passes)
			}
			repeated = repeated || run.Passes > 1
			if run.DedupRatio != 1 || res.Totals[i].DedupRatio != 1 {
				t.Errorf("dedup %f of a file without repeats, %f over all files", run.DedupRatio, res.Totals[i].DedupRatio)
			}
		})
	}

	if !repeated {
		t.Error("no file was cut more than once in 20 ms")
	}
	if len(res.Histograms) != len(res.Chunkers) {
		t.Fatalf("%d histograms for %d chunkers", len(res.Histograms), len(res.Chunkers))
	}
	for _, h := range res.Histograms {
		// Every chunker's default is at least 256 KiB: the nearest size
		// of the grid is the largest.
		if h.Avg != sizes[len(sizes)-1] {
			t.Errorf("histogram of %s at %d, want the grid size nearest its default", h.Chunker, h.Avg)
		}
		var n int64
		for i, b := range h.Bins {
			n += b.Count
			if b.Lower >= b.Upper || i > 0 && b.Lower != h.Bins[i-1].Upper {
				t.Errorf("%s: bin %d is %d..%d after %+v", h.Chunker, i, b.Lower, b.Upper, h.Bins[max(i-1, 0)])
			}
		}
		for _, run := range res.Runs {
			if run.ChunkerSetting == h.ChunkerSetting && run.Chunks != n {
				t.Errorf("%s histogram counts %d chunks, the run %d", h.ChunkerSetting, n, run.Chunks)
			}
		}
	}

	if len(reports) == 0 {
		t.Fatal("no progress reported")
	}
	last := reports[len(reports)-1]
	if want := int64(len(data)) * int64(len(res.Runs)); last.Done != last.Total || last.Total != want {
		t.Errorf("progress ends at %d of %d, want %d", last.Done, last.Total, want)
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Done < reports[i-1].Done {
			t.Fatalf("progress went back from %d to %d", reports[i-1].Done, reports[i].Done)
		}
	}
}

func TestMeasureChunkersDedup(t *testing.T) {
	dir := t.TempDir()
	once := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{2}).Read(once)
	a := writeFile(t, dir, "a.bin", once)
	aa := writeFile(t, dir, "aa.bin", append(bytes.Clone(once), once...))
	res := measure(t, ChunkersConfig{Files: []string{a, aa}, Sizes: []uint32{8 << 10, 32 << 10}})
	for _, run := range res.Runs {
		// The second copy cuts as the first once past the chunk that
		// spans the join, at most Max bytes of chunks not seen before.
		lo, hi := 0.5, 0.5+float64(run.Max)/float64(run.Bytes)
		if run.File == a {
			lo, hi = 1, 1
		}
		if run.Chunker == "fixed" {
			hi = lo
		}
		if run.DedupRatio < lo || run.DedupRatio > hi {
			t.Errorf("%s %s: dedup %f, want %f..%f", filepath.Base(run.File), run.ChunkerSetting, run.DedupRatio, lo, hi)
		}
	}
	for _, total := range res.Totals {
		lo, hi := 1.0/3, 1.0/3+float64(total.Max)/float64(total.Bytes)
		if total.Chunker == "fixed" {
			hi = lo
		}
		if total.Files != 2 || total.Bytes != 3<<20 || total.DedupRatio < lo-1e-12 || total.DedupRatio > hi+1e-12 {
			t.Errorf("%s over %d files of %d bytes: dedup %f, want %f..%f", total.ChunkerSetting, total.Files, total.Bytes, total.DedupRatio, lo, hi)
		}
	}
}

// editedPair writes an old version and a new one with an insertion and an
// overwrite, and returns their paths and contents.
func editedPair(t *testing.T, dir string, size int) (oldPath, newPath string, old, new []byte) {
	t.Helper()
	old = mixedData(3, size)
	new = slices.Concat(old[:size/3], []byte("inserted by the test"), old[size/3:])
	copy(new[2*size/3:], "overwritten by the test")
	return writeFile(t, dir, "old.bin", old), writeFile(t, dir, "new.bin", new), old, new
}

func TestMeasureChunkersPairs(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, old, new := editedPair(t, dir, 512<<10)
	sizes := []uint32{16 << 10}
	res := measure(t, ChunkersConfig{Pairs: []FilePair{{oldPath, newPath}, {oldPath, oldPath}}, Sizes: sizes})
	if len(res.Runs) != 2*len(res.Chunkers) {
		t.Errorf("%d runs for the 2 files of the pairs and %d chunkers", len(res.Runs), len(res.Chunkers))
	}
	if len(res.Pairs) != 2*len(res.Chunkers) || len(res.Rsync) != 0 {
		t.Fatalf("%d pair runs and %d rsync runs for 2 pairs, %d chunkers, no rsync", len(res.Pairs), len(res.Rsync), len(res.Chunkers))
	}
	strategy, err := DefaultResync()
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range res.Pairs {
		t.Run(filepath.Base(run.New)+"/"+run.ChunkerSetting.String(), func(t *testing.T) {
			p, err := ChunkerFor(run.Chunker, run.Avg)
			if err != nil {
				t.Fatal(err)
			}
			if run.PlainBytes != run.ListBytes+run.ChunkBytes || run.DeltaEstimateBytes == nil || run.RsyncBytes != 0 || run.PlainRsyncRatio != 0 {
				t.Fatalf("run %+v", run)
			}
			newData := new
			if run.New == oldPath {
				newData = old
			}
			if want := directCut(t, newData, p); run.Chunks != int64(len(want)) {
				t.Errorf("%d chunks, a direct run gives %d", run.Chunks, len(want))
			}
			s := strategy
			s.Chunker = p
			est, err := EstimateResync(old, newData, s)
			if err != nil {
				t.Fatal(err)
			}
			if *run.DeltaEstimateBytes != int64(est.Push()) {
				t.Errorf("delta estimate %d, EstimateResync %d", *run.DeltaEstimateBytes, est.Push())
			}
			// The data repeats no chunk, so the stream counts what
			// EstimateResync counts from memory; the manifest headers
			// differ in the path, mode and time only.
			if run.LackedChunks != int64(est.Lacked) || run.LackedBytes != est.LackedBytes || run.ChunkBytes != int64(est.Plain) {
				t.Errorf("%d lacked chunks of %d bytes, %d compressed; EstimateResync %d of %d, %d",
					run.LackedChunks, run.LackedBytes, run.ChunkBytes, est.Lacked, est.LackedBytes, est.Plain)
			}
			if d := run.ListBytes - int64(est.Manifest+est.Answer); d < -32 || d > 32 {
				t.Errorf("list %d bytes, EstimateResync's manifest and answer %d", run.ListBytes, est.Manifest+est.Answer)
			}
			if run.New == oldPath {
				// Unchanged: one copy op for the whole list, nothing else.
				if run.LackedChunks != 0 || run.ChunkBytes != 0 || run.ListBytes > 100 {
					t.Errorf("identical pair: %d lacked, %d chunk bytes, %d list bytes", run.LackedChunks, run.ChunkBytes, run.ListBytes)
				}
			} else if run.LackedChunks == 0 || run.Chunker != "fixed" && run.LackedBytes >= run.NewBytes/2 {
				// Content-defined boundaries survive the insertion;
				// fixed ones move from there on.
				t.Errorf("edited pair: %d lacked chunks, %d of %d bytes", run.LackedChunks, run.LackedBytes, run.NewBytes)
			}
		})
	}
}

func TestMeasureChunkersRsync(t *testing.T) {
	newRsyncServer(t) // fails the test without rsync
	dir := t.TempDir()
	oldPath, newPath, _, _ := editedPair(t, dir, 256<<10)
	res := measure(t, ChunkersConfig{
		Pairs: []FilePair{{oldPath, newPath}}, Chunkers: []string{"fastcdc"}, Sizes: []uint32{8 << 10, 32 << 10},
		Rsync: true, WorkDir: t.TempDir(), DeltaMaxFile: -1,
	})
	if len(res.Rsync) != 1 {
		t.Fatalf("%d rsync runs for one pair", len(res.Rsync))
	}
	r := res.Rsync[0]
	t.Logf("rsync: %+v", r)
	if r.Total != r.Up+r.Down || r.Up <= 0 || r.Down <= 0 || r.Matched <= 0 || r.Literal <= 0 || r.Total >= 256<<10 {
		t.Errorf("rsync of an edited 256 KiB file: %+v", r)
	}
	for _, run := range res.Pairs {
		t.Logf("%s: %d bytes, rsync %d", run.ChunkerSetting, run.PlainBytes, run.RsyncBytes)
		if run.RsyncBytes != r.Total || run.PlainRsyncRatio != float64(run.PlainBytes)/float64(r.Total) ||
			run.DeltaEstimateBytes != nil || run.DeltaRsyncRatio != 0 {
			t.Errorf("%s: %+v with rsync %d and no delta estimates", run.ChunkerSetting, run, r.Total)
		}
	}
}

func TestMeasureChunkersRefuses(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "f.bin", mixedData(4, 1<<10))
	missing := filepath.Join(dir, "missing.bin")
	for _, tc := range []struct {
		name string
		cfg  ChunkersConfig
		want string
	}{
		{"nothing", ChunkersConfig{}, "no files"},
		{"missing file", ChunkersConfig{Files: []string{missing}}, missing},
		{"missing new", ChunkersConfig{Pairs: []FilePair{{path, missing}}}, missing},
		{"half a pair", ChunkersConfig{Pairs: []FilePair{{Old: path}}}, "lacks a file"},
		{"directory", ChunkersConfig{Files: []string{dir}}, "not a regular file"},
		{"unknown chunker", ChunkersConfig{Files: []string{path}, Chunkers: []string{"gear"}}, `unknown chunker "gear"`},
		{"size not a power of two", ChunkersConfig{Files: []string{path}, Chunkers: []string{"rabin"}, Sizes: []uint32{12 << 10}}, "rabin at 12 KiB"},
		{"size too large", ChunkersConfig{Files: []string{path}, Chunkers: []string{"fastcdc"}, Sizes: []uint32{8 << 20}}, "fastcdc at 8 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := MeasureChunkers(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
			if strings.Contains(tc.name, "missing") && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v does not wrap fs.ErrNotExist", err)
			}
		})
	}
}

func TestChunkersResultJSONAndReport(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, _, _ := editedPair(t, dir, 256<<10)
	cfg := ChunkersConfig{Pairs: []FilePair{{oldPath, newPath}}, Chunkers: []string{"fastcdc", "fixed"}, Sizes: []uint32{8 << 10, 16 << 10}}
	res := measure(t, cfg)

	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if k != strings.ToLower(k) || strings.ContainsAny(k, " -") {
					t.Errorf("JSON key %q is not snake_case", k)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(generic)
	var back ChunkersResult
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, res) {
		t.Errorf("JSON round trip changed the result:\n%s", b)
	}

	// Apart from the timing, a second run gives the same figures.
	again := measure(t, cfg)
	for _, r := range []*ChunkersResult{&res, &again} {
		for i := range r.Runs {
			r.Runs[i].Passes, r.Runs[i].CutSeconds, r.Runs[i].CutHashSeconds, r.Runs[i].CutMBps, r.Runs[i].CutHashMBps = 0, 0, 0, 0, 0
		}
		for i := range r.Totals {
			r.Totals[i].CutMBps, r.Totals[i].CutHashMBps = 0, 0
		}
	}
	if !reflect.DeepEqual(again, res) {
		t.Errorf("a second run differs:\n%+v\n%+v", res, again)
	}

	rep := back.Report()
	var headings []string
	charts := map[ChartKind][]Chart{}
	for _, s := range rep.Sections {
		headings = append(headings, s.Heading)
		for _, c := range s.Charts {
			charts[c.Kind] = append(charts[c.Kind], c)
		}
		if s.Table == nil {
			t.Errorf("section %q has no table", s.Heading)
			continue
		}
		for _, row := range s.Table.Rows {
			if len(row) != len(s.Table.Columns) {
				t.Errorf("section %q: row %q under %d columns", s.Heading, row, len(s.Table.Columns))
			}
		}
	}
	if !slices.Equal(headings, []string{"Chunking", "All files", "Re-sync"}) {
		t.Errorf("sections %q", headings)
	}
	if h := charts[ChartHistogram]; len(h) != 1 || len(h[0].Series) != 2 || !h[0].LogX {
		t.Errorf("histogram charts %+v, want one with a series per chunker", h)
	}
	if l := charts[ChartLine]; len(l) != 1 || len(l[0].Series) != 4 || !l[0].LogX || len(l[0].Series[0].Points) != 2 {
		t.Errorf("throughput charts %+v, want one with two series per chunker, a point per size", l)
	}
	if bars := charts[ChartBar]; len(bars) != 1 || len(bars[0].Series) != 2 || len(bars[0].Series[0].Points) != 4 {
		t.Errorf("re-sync charts %+v, want one for the pair with plain and delta bars per chunker and size", bars)
	}
}

func TestChunkersSizeHistogram(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for range 100000 {
		n := uint32(rng.Int64N(engine.MaxChunkSize) + 1)
		b := histBucket(n)
		lo, hi := histLower(b), histLower(b+1)
		if uint64(n) < lo || uint64(n) >= hi || hi-lo > max(uint64(n)/histSub, 1) {
			t.Fatalf("size %d in bucket %d of %d..%d", n, b, lo, hi)
		}
	}
	var s sizeStats
	for range 1000 {
		s.add(64 << 10)
	}
	s.add(100)
	if st := s.summary(); st.P10 != 64<<10 || st.P50 != 64<<10 || st.P90 != 64<<10 || st.MinSize != 100 || st.MaxSize != 64<<10 {
		t.Errorf("fixed-size chunks and a short last one: %+v", st)
	}
}
