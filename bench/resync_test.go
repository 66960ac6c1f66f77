package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// resyncPair is a pair of consecutive x/tools releases and what rsync -z
// moved to bring one to the other, both ways.
type resyncPair struct {
	name       string
	old, new   []byte
	push, pull RsyncTransfer
}

// resyncPairs builds the tars of XToolsVersions and measures rsync on each
// consecutive pair with srv.
func resyncPairs(tb testing.TB, srv *RsyncServer) []resyncPair {
	tb.Helper()
	paths := xtoolsTars(tb, tb.TempDir())
	var pairs []resyncPair
	for i := 0; i+1 < len(paths); i++ {
		old, err := os.ReadFile(paths[i])
		if err != nil {
			tb.Fatal(err)
		}
		new, err := os.ReadFile(paths[i+1])
		if err != nil {
			tb.Fatal(err)
		}
		p := resyncPair{name: XToolsVersions[i] + "-" + XToolsVersions[i+1], old: old, new: new}
		p.push, p.pull = measureRsync(tb, srv, p.old, p.new)
		pairs = append(pairs, p)
	}
	return pairs
}

// measureRsync pushes new onto old in the daemon's module, then pulls it
// onto a local old copy, and checks both results.
func measureRsync(tb testing.TB, srv *RsyncServer, old, new []byte) (push, pull RsyncTransfer) {
	tb.Helper()
	ctx := context.Background()
	local := tb.TempDir()
	remote := filepath.Join(srv.Dir(), "x.tar")
	newPath, oldPath := filepath.Join(local, "new.tar"), filepath.Join(local, "old.tar")
	for path, b := range map[string][]byte{remote: old, newPath: new, oldPath: old} {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	check := func(path string) {
		tb.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		if !bytes.Equal(got, new) {
			tb.Fatalf("rsync left %s different from the new version", path)
		}
	}
	push, err := srv.Push(ctx, newPath, "x.tar")
	if err != nil {
		tb.Fatal(err)
	}
	check(remote)
	if pull, err = srv.Pull(ctx, "x.tar", oldPath); err != nil {
		tb.Fatal(err)
	}
	check(oldPath)
	return push, pull
}

// TestResyncBeatsRsync is issue 3's check: with the recommended strategy, a
// re-sync of one x/tools release onto the previous costs fewer bytes than
// rsync -z, both when the sender has the old version and when it has not,
// and the stored overhead stays within half a percent.
func TestResyncBeatsRsync(t *testing.T) {
	s, err := DefaultResync()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resyncPairs(t, newRsyncServer(t)) {
		c, err := EstimateResync(p.old, p.new, s)
		if err != nil {
			t.Fatal(err)
		}
		rsync := p.push.Total()
		t.Logf("%s %s: push %d, pull %d, rsync -z push %d pull %d (%s); %d of %d chunks lacked, store overhead %.2f%%",
			p.name, s, c.Push(), c.Pull(), rsync, p.pull.Total(), p.push.Compress, c.Lacked, c.Chunks, c.StoreOverhead)
		if int64(c.Push()) >= rsync || int64(c.Pull()) >= p.pull.Total() {
			t.Errorf("%s: push %d and pull %d bytes, rsync -z %d and %d", p.name, c.Push(), c.Pull(), rsync, p.pull.Total())
		}
		if c.StoreOverhead > 0.5 {
			t.Errorf("%s: store overhead %.2f%%, want at most 0.5%%", p.name, c.StoreOverhead)
		}
	}
}

// resyncGrid is the strategies BenchmarkResync compares: every chunk size
// from 16 to 64 KiB and sub-chunk size with 3-, 4- and 6-byte hashes at
// zstd's best level for large targets (level "auto"), larger chunks and
// rabin's chunks, then chunksync's default (DefaultResync), the default
// at zstd's best level, and the default with one delta per run of changed
// chunks.
func resyncGrid(tb testing.TB) []ResyncStrategy {
	rec, err := DefaultResync()
	if err != nil {
		tb.Fatal(err)
	}
	var grid []ResyncStrategy
	for _, avg := range []uint32{16 << 10, 32 << 10, 64 << 10} {
		p, err := ChunkerFor(rec.Chunker.Name, avg)
		if err != nil {
			tb.Fatal(err)
		}
		for _, sub := range []int{256, 512, 1 << 10, 2 << 10} {
			for _, hash := range []int{3, 4, 6} {
				grid = append(grid, ResyncStrategy{Chunker: p, SubChunkSize: sub, HashLen: hash, Batch: true})
			}
		}
	}
	// Larger chunks for both, and rabin at every size, to choose the
	// default content-defined chunker and its size by re-sync bytes.
	for _, name := range []string{rec.Chunker.Name, "rabin"} {
		for _, avg := range []uint32{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10} {
			if name == rec.Chunker.Name && avg <= 64<<10 {
				continue // in the grid above
			}
			p, err := ChunkerFor(name, avg)
			if err != nil {
				tb.Fatal(err)
			}
			grid = append(grid, ResyncStrategy{Chunker: p, SubChunkSize: rec.SubChunkSize, HashLen: rec.HashLen, Batch: true})
		}
	}
	best, perRun := rec, rec
	best.Level = 19
	perRun.Batch = false
	return append(grid, rec, best, perRun)
}

// BenchmarkResync estimates the bytes of re-syncing each x/tools release
// onto the previous one for every strategy of resyncGrid, next to rsync -z
// measured in the same run (the rsync-z benchmarks), and logs the table
// (shown with -v).
//
//	go test -run '^$' -bench Resync -benchtime 1x -v ./bench/
//
// push-B is a re-sync whose sender lacks the old version (signatures and
// deltas), pull-B one whose sender has it (deltas against the old bytes);
// the ratios divide by the bytes of rsync -z pushing and pulling the same
// versions over a loopback daemon connection.
func BenchmarkResync(b *testing.B) {
	srv := newRsyncServer(b)
	pairs := resyncPairs(b, srv)
	for i := range pairs {
		p := &pairs[i]
		b.Run(p.name+"/rsync-z", func(b *testing.B) {
			b.SetBytes(int64(len(p.new)))
			for b.Loop() {
				p.push, p.pull = measureRsync(b, srv, p.old, p.new)
			}
			b.ReportMetric(float64(p.push.Total()), "push-B")
			b.ReportMetric(float64(p.pull.Total()), "pull-B")
		})
	}
	grid := resyncGrid(b)
	costs := make([][]ResyncCost, len(grid))
	for i, s := range grid {
		costs[i] = make([]ResyncCost, len(pairs))
		for j, p := range pairs {
			b.Run(p.name+"/"+s.String(), func(b *testing.B) {
				b.SetBytes(int64(len(p.new)))
				b.ReportAllocs()
				var c ResyncCost
				var err error
				for b.Loop() {
					if c, err = EstimateResync(p.old, p.new, s); err != nil {
						b.Fatal(err)
					}
				}
				costs[i][j] = c
				b.ReportMetric(float64(c.Push()), "push-B")
				b.ReportMetric(float64(c.Pull()), "pull-B")
				b.ReportMetric(float64(c.Push())/float64(p.push.Total()), "push/rsync")
				b.ReportMetric(float64(c.Pull())/float64(p.pull.Total()), "pull/rsync")
				b.ReportMetric(c.StoreOverhead, "store-%")
			})
		}
	}
	b.Log("\n" + resyncTable(pairs, grid, costs))
}

// resyncTable formats the costs of every strategy and pair.
func resyncTable(pairs []resyncPair, grid []ResyncStrategy, costs [][]ResyncCost) string {
	var out strings.Builder
	w := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(w, "strategy\tstore %\t")
	for _, p := range pairs {
		fmt.Fprintf(w, "%s push\tsig\tdelta\t/rsync\tpull\t/rsync\tplain\tencode\t", p.name)
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, "rsync -z (measured)\t\t")
	for _, p := range pairs {
		fmt.Fprintf(w, "%d\t\t\t\t%d\t\t\t%v\t", p.push.Total(), p.pull.Total(), p.push.Wall.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	for i, s := range grid {
		if len(costs[i]) == 0 || costs[i][0].Chunks == 0 {
			continue
		}
		fmt.Fprintf(w, "%s\t%.2f\t", s, costs[i][0].StoreOverhead)
		for j, p := range pairs {
			c := costs[i][j]
			fmt.Fprintf(w, "%d\t%d\t%d\t%.2f\t%d\t%.2f\t%d\t%v\t", c.Push(), c.Signatures, c.Deltas, float64(c.Push())/float64(p.push.Total()),
				c.Pull(), float64(c.Pull())/float64(p.pull.Total()), c.PlainTotal(), c.Encode.Round(time.Millisecond))
		}
		fmt.Fprintln(w)
	}
	w.Flush()
	return out.String()
}
