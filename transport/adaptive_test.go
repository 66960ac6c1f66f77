//go:build !race

// The race detector slows the client and server many times over, and then
// the pipeline cannot keep the rate-limited stream busy: the limiter's
// bucket fills between chunks and the link looks faster than it is. What
// the adaptive chunker measures means something only without it, so
// .ci/test runs this test in a run of its own.

package transport

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// dropAt lowers the client's rate limit to slow once the server has stored
// at bytes: the rate changes at a point of the file, however fast the
// machine running the test is.
type dropAt struct {
	c        *Client
	at, slow int64
	stored   atomic.Int64
	once     sync.Once
}

func (d *dropAt) Add(stage engine.Stage, n int64) {
	if stage == engine.StageStored && d.stored.Add(n) >= d.at {
		d.once.Do(func() { d.c.SetBWLimit(d.slow) })
	}
}

// TestAdaptiveChunksFollowTheLink pushes with the adaptive chunker over a
// link whose rate drops to a quarter once 6 MiB of the file are stored: the
// chunks cut after the drop are about a quarter the size of those cut
// before it, and the result is a valid version.
func TestAdaptiveChunksFollowTheLink(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	const chunkTime = 20 * time.Millisecond
	const fast, slow = 8 << 20, 2 << 20
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = fast; cfg.Streams = 1 })
	if err != nil {
		t.Fatal(err)
	}
	src := writeFile(t, 16<<20, 7)
	drop := &dropAt{c: c, at: 6 << 20, slow: slow}
	p := engine.ChunkerParams{Name: engine.AdaptiveChunker, Min: 16 << 10, Avg: 64 << 10, Max: 16 << 20}
	res, err := engine.Push(t.Context(), c, src, "adaptive.bin", engine.PushOptions{Chunker: p, ChunkTime: chunkTime, Progress: drop})
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, ts, src, "adaptive.bin")
	// Mean chunk size over 2..6 MiB (sent at the fast rate, past the ramp
	// from Avg) and over the last 4 MiB (sent at the slow one, well past
	// the few chunks cut ahead of the drop).
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
