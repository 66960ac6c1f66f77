package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"testing"
	"time"
)

// link is a simulated stream: a chunk of n bytes takes latency + n/rate.
type link struct {
	rate    float64 // bytes per second
	latency time.Duration
}

func (l link) send(n int) time.Duration {
	return l.latency + time.Duration(float64(n)/l.rate*float64(time.Second))
}

// checkStep fails unless next is a size ctrl may move to from prev.
func checkStep(t *testing.T, p ChunkerParams, prev, next int) {
	t.Helper()
	if next < int(p.Min) || next > int(p.Max) || next%int(p.Min) != 0 {
		t.Fatalf("size %d is outside %d..%d or not a multiple of %d", next, p.Min, p.Max, p.Min)
	}
	if next > 2*prev || 2*next < prev {
		t.Fatalf("size moved from %d to %d, more than a factor of two", prev, next)
	}
}

// TestSizeControllerFollowsRate sends chunks over a link whose rate halves
// midway: the size settles at rate × chunk time in steps of at most a
// factor of two, and after the drop it only shrinks.
func TestSizeControllerFollowsRate(t *testing.T) {
	p := defaultParams(t, "adaptive")
	for _, target := range []time.Duration{DefaultChunkTime, 200 * time.Millisecond} {
		t.Run(target.String(), func(t *testing.T) {
			ctrl := NewSizeController(p, WithChunkTime(target))
			if got := ctrl.ChunkSize(); got != int(p.Avg) {
				t.Fatalf("starts at %d, want avg %d", got, p.Avg)
			}
			size := ctrl.ChunkSize()
			for _, phase := range []struct {
				rate   float64
				shrink bool
			}{
				{16 << 20, false},
				{8 << 20, true},
			} {
				l := link{rate: phase.rate}
				for range 40 {
					ctrl.Observe(int64(size), l.send(size))
					next := ctrl.ChunkSize()
					checkStep(t, p, size, next)
					if phase.shrink && next > size {
						t.Fatalf("rate dropped to %.0f B/s, size grew from %d to %d", phase.rate, size, next)
					}
					size = next
				}
				want := phase.rate * target.Seconds()
				if math.Abs(float64(size)-want) > float64(p.Min) {
					t.Errorf("at %.0f B/s size settled at %d, want %.0f within %d", phase.rate, size, want, p.Min)
				}
				if g := ctrl.Goodput(); math.Abs(g-phase.rate) > 0.01*phase.rate {
					t.Errorf("goodput %.0f B/s, link %.0f B/s", g, phase.rate)
				}
			}
		})
	}
}

// TestSizeControllerStepsAndClamps checks the bounds on a single step and
// the clamps at both ends.
func TestSizeControllerStepsAndClamps(t *testing.T) {
	p := defaultParams(t, "adaptive")
	t.Run("one fast chunk doubles at most", func(t *testing.T) {
		ctrl := NewSizeController(p)
		ctrl.Observe(int64(p.Avg), DefaultChunkTime/4) // 8 MiB/s: 4 MiB chunks
		if got := ctrl.ChunkSize(); got != 2*int(p.Avg) {
			t.Errorf("size %d, want %d", got, 2*p.Avg)
		}
	})
	t.Run("short observations are taken together", func(t *testing.T) {
		ctrl := NewSizeController(p)
		// Acknowledgements that arrive in pairs: the first of each took
		// all the time, the second none, and together they are 2 MiB/s.
		for range 40 {
			ctrl.Observe(int64(p.Avg), time.Second)
			ctrl.Observe(int64(p.Avg), time.Microsecond)
		}
		if got := ctrl.ChunkSize(); got != int(p.Avg) {
			t.Errorf("size %d, want %d", got, p.Avg)
		}
		ctrl.Observe(int64(p.Avg), time.Microsecond)
		if got := ctrl.ChunkSize(); got != int(p.Avg) {
			t.Errorf("one instant acknowledgement moved the size to %d", got)
		}
	})
	t.Run("fast samples double at most", func(t *testing.T) {
		ctrl := NewSizeController(p)
		ctrl.Observe(int64(p.Avg), DefaultChunkTime/4)
		if got := ctrl.ChunkSize(); got != 2*int(p.Avg) {
			t.Errorf("size %d, want %d", got, 2*p.Avg)
		}
	})
	t.Run("one slow chunk halves at most", func(t *testing.T) {
		ctrl := NewSizeController(p)
		ctrl.Observe(int64(p.Avg), time.Hour)
		if got := ctrl.ChunkSize(); got != int(p.Avg)/2 {
			t.Errorf("size %d, want %d", got, p.Avg/2)
		}
	})
	for _, tt := range []struct {
		name string
		l    link
		want int
	}{
		{"fast link reaches max", link{rate: 1 << 30}, int(p.Max)},
		{"slow link reaches min", link{rate: 10 << 10}, int(p.Min)},
		{"4 MiB/s", link{rate: 4 << 20}, 2 << 20},
		{"3 MB/s", link{rate: 3e6}, 1472 << 10}, // 1.5 MB is 22.9 steps of 64 KiB
		// Latency counts as time the chunk takes: the size settles
		// where latency + size/rate is the chunk time, here at 800 KiB
		// or the 64 KiB step nearest to where the rounding stops it.
		{"latency", link{rate: 4 << 20, latency: 300 * time.Millisecond}, 832 << 10},
		{"latency over the chunk time", link{rate: 4 << 20, latency: time.Second}, int(p.Min)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctrl := NewSizeController(p)
			size := ctrl.ChunkSize()
			for range 1000 {
				ctrl.Observe(int64(size), tt.l.send(size))
				next := ctrl.ChunkSize()
				checkStep(t, p, size, next)
				size = next
			}
			if size != tt.want {
				t.Errorf("size %d, want %d", size, tt.want)
			}
		})
	}
	t.Run("short chunks barely count", func(t *testing.T) {
		ctrl := NewSizeController(p)
		l := link{rate: 4 << 20}
		for range 10 {
			ctrl.Observe(int64(p.Avg), l.send(int(p.Avg)))
		}
		settled := ctrl.ChunkSize()
		// A file's last chunk: 100 bytes that took a round trip.
		ctrl.Observe(100, 50*time.Millisecond)
		if got := ctrl.ChunkSize(); got != settled {
			t.Errorf("a 100-byte chunk moved the size from %d to %d", settled, got)
		}
	})
	t.Run("nonsense is ignored", func(t *testing.T) {
		ctrl := NewSizeController(p)
		ctrl.Observe(0, time.Second)
		ctrl.Observe(-1, time.Second)
		ctrl.Observe(1<<20, 0)
		ctrl.Observe(1<<20, -time.Second)
		if ctrl.ChunkSize() != int(p.Avg) || ctrl.Goodput() != 0 {
			t.Errorf("size %d, goodput %f after ignored observations", ctrl.ChunkSize(), ctrl.Goodput())
		}
	})
	t.Run("min not a power of two", func(t *testing.T) {
		p := ChunkerParams{Name: "adaptive", Min: 3000, Avg: 30000, Max: 300000}
		ctrl := NewSizeController(p)
		size := ctrl.ChunkSize()
		for _, rate := range []float64{1e5, 1e6, 2e4, 3e5} {
			for range 10 {
				ctrl.Observe(int64(size), link{rate: rate}.send(size))
				next := ctrl.ChunkSize()
				checkStep(t, p, size, next)
				size = next
			}
		}
	})
}

// TestSizeControllerConcurrent has many streams report at once while the
// chunker reads the size; run with -race.
func TestSizeControllerConcurrent(t *testing.T) {
	p := defaultParams(t, "adaptive")
	ctrl := NewSizeController(p)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			l := link{rate: float64(1+i) * (1 << 20)}
			for range 500 {
				size := ctrl.ChunkSize()
				ctrl.Observe(int64(size), l.send(size))
			}
		})
	}
	wg.Wait()
	if s := ctrl.ChunkSize(); s < int(p.Min) || s > int(p.Max) || s%int(p.Min) != 0 {
		t.Errorf("size %d", s)
	}
}

// TestAdaptiveChunkerFollowsController checks that every chunk has the size
// the controller held when it was cut, and that the chunks are the input,
// while the link slows to a quarter of its rate.
func TestAdaptiveChunkerFollowsController(t *testing.T) {
	p := ChunkerParams{Name: "adaptive", Min: 4 << 10, Avg: 64 << 10, Max: 1 << 20}
	if err := ValidateParams(p); err != nil {
		t.Fatal(err)
	}
	data := randomData(80, 48<<20+123)
	const target = 100 * time.Millisecond
	ctrl := NewSizeController(p, WithChunkTime(target))
	c := NewAdaptiveChunker(bytes.NewReader(data), p, ctrl)
	l := link{rate: 8 << 20}
	var sizes []int
	for off := 0; ; {
		want := ctrl.ChunkSize()
		b, err := c.Next()
		if err == io.EOF {
			if off != len(data) {
				t.Fatalf("chunks cover %d of %d bytes", off, len(data))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != want && off+len(b) != len(data) {
			t.Fatalf("chunk %d: %d bytes, controller said %d", len(sizes), len(b), want)
		}
		if !bytes.Equal(b, data[off:off+len(b)]) {
			t.Fatalf("chunk %d at %d does not match the input", len(sizes), off)
		}
		off += len(b)
		sizes = append(sizes, len(b))
		if len(sizes) == 40 {
			l.rate /= 4
		}
		ctrl.Observe(int64(len(b)), l.send(len(b)))
	}
	settled := func(s int, rate float64) bool {
		return math.Abs(float64(s)-rate*target.Seconds()) <= float64(p.Min)
	}
	if len(sizes) < 100 || sizes[0] != int(p.Avg) || !settled(sizes[39], 8<<20) || !settled(sizes[len(sizes)-2], 2<<20) {
		t.Errorf("sizes %v: want %d first, then about %d, then %d", sizes, p.Avg, 8<<20/10, 2<<20/10)
	}
}

// TestAdaptiveChunkerClampsController checks that a controller made for
// other parameters cannot push the chunker outside its own.
func TestAdaptiveChunkerClampsController(t *testing.T) {
	p := ChunkerParams{Name: "adaptive", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	data := randomData(81, 1<<20)
	for _, tt := range []struct {
		name string
		ctrl ChunkerParams
		want int
	}{
		{"above max", ChunkerParams{Min: 1 << 20, Avg: 1 << 20, Max: 1 << 20}, 64 << 10},
		{"below min", ChunkerParams{Min: 1, Avg: 1, Max: 1}, 4 << 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := NewAdaptiveChunker(bytes.NewReader(data), p, NewSizeController(tt.ctrl))
			b, err := c.Next()
			if err != nil || len(b) != tt.want {
				t.Fatalf("first chunk %d bytes, %v; want %d", len(b), err, tt.want)
			}
		})
	}
}

// TestAdaptiveRegistryCutsLikeFixed checks that the registry's adaptive
// chunker, which has no controller, cuts at Avg exactly as fixed does, so
// that any adaptive manifest's parameters give a deterministic cut.
func TestAdaptiveRegistryCutsLikeFixed(t *testing.T) {
	data := tarLikeData(82, 9<<20+5)
	for _, p := range []ChunkerParams{
		defaultParams(t, "adaptive"),
		{Name: "adaptive", Min: 4 << 10, Avg: 12 << 10, Max: 64 << 10},
	} {
		t.Run(p.String(), func(t *testing.T) {
			got := cutSizes(t, bytes.NewReader(data), p, data)
			fixed := ChunkerParams{Name: "fixed", Min: p.Avg, Avg: p.Avg, Max: p.Avg}
			if want := cutSizes(t, bytes.NewReader(data), fixed, data); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("adaptive cut %v, fixed %v", got, want)
			}
			again := cutSizes(t, &shortReader{bytes.NewReader(data), newRand(83), 50 << 10}, p, data)
			if fmt.Sprint(again) != fmt.Sprint(got) {
				t.Errorf("short reads cut %v, whole reads %v", again, got)
			}
		})
	}
}

func TestAdaptiveChunkerEdges(t *testing.T) {
	p := defaultParams(t, "adaptive")
	c := NewAdaptiveChunker(bytes.NewReader(nil), p, NewSizeController(p))
	if b, err := c.Next(); err != io.EOF || b != nil {
		t.Fatalf("Next on empty input = %d bytes, %v", len(b), err)
	}
	boom := errors.New("disk on fire")
	c = NewAdaptiveChunker(io.MultiReader(bytes.NewReader(make([]byte, 3<<20)), &failingReader{boom}), p, NewSizeController(p))
	var err error
	for err == nil {
		_, err = c.Next()
	}
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want %v", err, boom)
	}
	if _, again := c.Next(); !errors.Is(again, boom) {
		t.Fatalf("error is not sticky: then %v", again)
	}
}

type failingReader struct{ err error }

func (r *failingReader) Read([]byte) (int, error) { return 0, r.err }

// TestAdaptiveChunkerAllocs checks that the buffer grows in few steps
// however the size creeps up, and that cutting allocates nothing else.
func TestAdaptiveChunkerAllocs(t *testing.T) {
	p := defaultParams(t, "adaptive")
	data := make([]byte, 256<<20)
	r := bytes.NewReader(data)
	allocs := testing.AllocsPerRun(1, func() {
		r.Reset(data)
		ctrl := NewSizeController(p)
		c := NewAdaptiveChunker(r, p, ctrl)
		// A link that speeds up a little with every chunk.
		rate := float64(1 << 20)
		for {
			b, err := c.Next()
			if err != nil {
				break
			}
			rate *= 1.05
			ctrl.Observe(int64(len(b)), link{rate: rate}.send(len(b)))
		}
	})
	if allocs > 10 {
		t.Errorf("%v allocations", allocs)
	}
}

func TestAdaptiveValidation(t *testing.T) {
	tests := []struct {
		name string
		p    ChunkerParams
		ok   bool
	}{
		{"defaults", defaultParams(t, "adaptive"), true},
		{"all equal", ChunkerParams{Name: "adaptive", Min: 1000, Avg: 1000, Max: 1000}, true},
		{"avg not a multiple of min", ChunkerParams{Name: "adaptive", Min: 64 << 10, Avg: 100 << 10, Max: 1 << 20}, false},
		{"max not a multiple of min", ChunkerParams{Name: "adaptive", Min: 64 << 10, Avg: 128 << 10, Max: 1<<20 + 1}, false},
		{"poly", ChunkerParams{Name: "adaptive", Min: 64 << 10, Avg: 1 << 20, Max: 1 << 20, Poly: RabinPoly}, false},
		{"max over limit", ChunkerParams{Name: "adaptive", Min: 64 << 10, Avg: 1 << 20, Max: 2 * MaxChunkSize}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateParams(tt.p); (err == nil) != tt.ok {
				t.Fatalf("ValidateParams(%s) = %v, want ok=%v", tt.p, err, tt.ok)
			}
		})
	}
}
