package transport

import (
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// TestAdaptiveChunksFollowTheLink pushes with the adaptive chunker over a
// link whose rate drops to a quarter halfway: the chunks cut after the drop
// are about a quarter the size of those cut before it, and the result is a
// valid version.
func TestAdaptiveChunksFollowTheLink(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	const chunkTime = 20 * time.Millisecond
	const fast, slow = 8 << 20, 2 << 20
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = fast; cfg.Streams = 1 })
	if err != nil {
		t.Fatal(err)
	}
	src := writeFile(t, 16<<20, 7)
	drop := time.AfterFunc(time.Second, func() { c.SetBWLimit(slow) })
	defer drop.Stop()
	p := engine.ChunkerParams{Name: engine.AdaptiveChunker, Min: 16 << 10, Avg: 64 << 10, Max: 16 << 20}
	res, err := engine.Push(t.Context(), c, src, "adaptive.bin", engine.PushOptions{Chunker: p, ChunkTime: chunkTime})
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, ts, src, "adaptive.bin")
	// Mean chunk size over 2..6 MiB (sent at the fast rate, past the ramp
	// from Avg) and over the last 4 MiB (sent at the slow one).
	mean := func(from, to int64) float64 {
		var off, n, bytes int64
		for _, r := range res.Manifest.Chunks {
			if off >= from && off < to {
				n++
				bytes += int64(r.Size)
			}
			off += int64(r.Size)
		}
		return float64(bytes) / float64(max(n, 1))
	}
	before, after := mean(2<<20, 6<<20), mean(12<<20, 16<<20)
	t.Logf("mean chunk %.0f KiB at %d MiB/s, %.0f KiB at %d MiB/s (target %.0f and %.0f KiB)",
		before/1024, fast>>20, after/1024, slow>>20, chunkTime.Seconds()*fast/1024, chunkTime.Seconds()*slow/1024)
	if before < 2*after || after > 2*chunkTime.Seconds()*slow {
		t.Errorf("chunk sizes did not follow the rate drop: %.0f KiB before, %.0f KiB after", before/1024, after/1024)
	}
}
