package engine

import (
	"fmt"
	"io"
	"math"
	"sync"
	"time"
)

// DefaultChunkTime is how long a SizeController aims for one chunk to take
// on one stream. Long enough that what every chunk costs besides its bytes
// (a lookup, a stream's request and acknowledgement, a file in the store)
// stays a small share even over round trips of tens of milliseconds; short
// enough that a chunk lost with a failing stream costs little to resend and
// that progress moves often.
const DefaultChunkTime = 500 * time.Millisecond

const (
	adaptiveDefaultMin = 64 << 10
	adaptiveDefaultAvg = 1 << 20
	adaptiveDefaultMax = MaxChunkSize
	// adaptiveSmoothing is the weight of a full-size chunk's goodput in
	// the moving average; a smaller chunk counts for its share of the
	// current size, so that a file's short last chunk, whose time is
	// mostly latency, barely moves it.
	adaptiveSmoothing = 0.25
)

// AdaptiveChunker is the name of the speed-adaptive fixed-size chunker.
const AdaptiveChunker = "adaptive"

func init() {
	registerChunker(ChunkerKind{
		Name: AdaptiveChunker,
		Doc:  "fixed-size chunks whose size follows the measured speed of the link; for fresh uploads of data that will not be re-synced",
		Defaults: ChunkerParams{
			Name: AdaptiveChunker, Min: adaptiveDefaultMin, Avg: adaptiveDefaultAvg, Max: adaptiveDefaultMax,
		},
		Validate: func(p ChunkerParams) error {
			if p.Poly != 0 {
				return fmt.Errorf("poly must be zero, got %#x", p.Poly)
			}
			if p.Avg%p.Min != 0 || p.Max%p.Min != 0 {
				return fmt.Errorf("avg and max must be multiples of min, got %s", p)
			}
			return nil
		},
		New: func(r io.Reader, p ChunkerParams) Chunker {
			return NewAdaptiveChunker(r, p, nil)
		},
	})
}

// SizeController holds the chunk size of an adaptive upload: the size at
// which one chunk takes about the target time (DefaultChunkTime unless set
// with WithChunkTime) on one stream, given the goodput that the senders of
// chunks observe. It starts at Avg; every observation moves the size
// towards goodput × target time, rounded to a multiple of Min, by at most a
// factor of two up or down, and clamps it to [Min, Max]: with valid
// adaptive parameters every size is a multiple of Min. The goodput is a
// moving average, so one slow or fast chunk moves the size only part of
// the way.
//
// A SizeController is safe for concurrent use: every stream of an upload
// reports to the same one, and the chunker reads it at every cut.
type SizeController struct {
	min, max int64
	target   time.Duration

	mu      sync.Mutex
	size    int64
	goodput float64 // bytes per second on one stream; 0 until observed
	// sampleN and sampleD add up the observations not yet folded into
	// goodput: short ones are taken together, so that two chunks
	// acknowledged in one burst do not look like an infinitely fast link.
	sampleN int64
	sampleD time.Duration
}

// SizeControllerOption changes a setting of NewSizeController.
type SizeControllerOption func(*SizeController)

// WithChunkTime sets how long one chunk should take on one stream; d ≤ 0
// keeps DefaultChunkTime.
func WithChunkTime(d time.Duration) SizeControllerOption {
	return func(c *SizeController) {
		if d > 0 {
			c.target = d
		}
	}
}

// NewSizeController returns a controller for the adaptive parameters p:
// p.Min and p.Max clamp the size, which starts at p.Avg.
func NewSizeController(p ChunkerParams, opts ...SizeControllerOption) *SizeController {
	lo := max(int64(p.Min), 1)
	hi := max(int64(p.Max), lo)
	c := &SizeController{min: lo, max: hi, target: DefaultChunkTime}
	c.size = min(max(int64(p.Avg)/lo*lo, lo), hi)
	for _, o := range opts {
		o(c)
	}
	return c
}

// Observe records that a chunk of n bytes took d on one stream: the time
// the stream was busy with it, from its first byte sent until the stream
// could take the next chunk. Observations with n or d not positive are
// ignored.
//
// Whatever part of d does not depend on n, such as a round trip spent
// waiting for an acknowledgement, counts as time the chunk takes: sizes
// settle where that latency plus size/rate is the target time, and at Min
// when the latency alone exceeds it. Senders that keep a stream busy while
// acknowledgements are in flight leave it out.
func (c *SizeController) Observe(n int64, d time.Duration) {
	if n <= 0 || d <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sampleN += n
	c.sampleD += d
	if c.sampleD < c.target/4 {
		return
	}
	n, d = c.sampleN, c.sampleD
	c.sampleN, c.sampleD = 0, 0
	rate := float64(n) / d.Seconds()
	if c.goodput == 0 {
		c.goodput = rate
	} else {
		w := adaptiveSmoothing * min(1, float64(n)/float64(c.size))
		c.goodput += w * (rate - c.goodput)
	}
	c.size = c.next(c.goodput * c.target.Seconds())
}

// next returns the size after the current one when want bytes would take
// the target time: want rounded to the nearest multiple of min, within a
// factor of two of the current size and within the clamps.
func (c *SizeController) next(want float64) int64 {
	s, g := c.size, c.min
	n := int64(math.Round(min(want, float64(c.max))/float64(g))) * g
	n = min(max(n, (s/2+g-1)/g*g), 2*s)
	return min(max(n, c.min), c.max)
}

// ChunkSize returns the size the next chunk should have.
func (c *SizeController) ChunkSize() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.size)
}

// Goodput returns the moving average of the goodput of one stream in bytes
// per second, or 0 before the first observation.
func (c *SizeController) Goodput() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goodput
}

// NewAdaptiveChunker returns a chunker that cuts r into fixed-size chunks
// whose size it asks ctrl for at every cut, clamped to [p.Min, p.Max]; with
// a nil ctrl every chunk but the last has p.Avg bytes. p must be valid
// adaptive parameters (see ValidateParams), and ctrl should come from
// NewSizeController with the same p.
//
// The chunks depend on when ctrl changed, so cutting the same file again
// gives other chunks: a manifest records the size of every chunk, which is
// all a pull or the server needs, but a later push of the file shares only
// the chunks that happen to have the same size at the same offset. The
// chunker's buffer grows to the largest size asked for; it allocates
// nothing per chunk.
func NewAdaptiveChunker(r io.Reader, p ChunkerParams, ctrl *SizeController) Chunker {
	return &adaptiveChunker{r: r, ctrl: ctrl, min: int(p.Min), avg: int(p.Avg), max: int(p.Max)}
}

type adaptiveChunker struct {
	r             io.Reader
	ctrl          *SizeController
	min, avg, max int
	buf           []byte
	err           error
}

func (c *adaptiveChunker) Next() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	size := c.avg
	if c.ctrl != nil {
		size = min(max(c.ctrl.ChunkSize(), c.min), c.max)
	}
	if size > len(c.buf) {
		// Grow by at least double, so that a size creeping up one
		// step at a time costs a few allocations, not one per step.
		c.buf = make([]byte, min(max(size, 2*len(c.buf)), c.max))
	}
	n, err := io.ReadFull(c.r, c.buf[:size])
	switch err {
	case nil:
		return c.buf[:n:n], nil
	case io.ErrUnexpectedEOF:
		c.err = io.EOF
		return c.buf[:n:n], nil
	case io.EOF:
		c.err = io.EOF
		return nil, io.EOF
	}
	c.err = fmt.Errorf("adaptive chunker: %w", err)
	return nil, c.err
}
