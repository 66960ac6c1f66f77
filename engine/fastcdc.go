package engine

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// The fastcdc defaults, chosen by measurement (bench.BenchmarkResync on
// consecutive golang.org/x/tools release tars, and BenchmarkLoopbackPush).
// With deltas against the replaced chunks a re-sync at 256 KiB costs 0.67
// to 0.73 times rsync -z's bytes pushing and 0.12 to 0.18 pulling, against
// 0.56 to 0.59 and the same at 64 KiB, and 0.45 to 0.50 at 16 KiB; but a
// first push at 64 KiB ran at half the speed of one at 256 KiB (every chunk
// is a file written durably and an index entry), and manifests and the
// index cost 0.03% of the data instead of 0.11% or 0.45%.
const (
	fastcdcDefaultMin = 64 << 10
	fastcdcDefaultAvg = 256 << 10
	fastcdcDefaultMax = 1 << 20
)

const (
	// gearWindow is how many bytes the gear hash covers (see gearTable).
	// The hash is warmed up over the window before the first position
	// that may cut, so min must be at least this.
	gearWindow = 64
	// fastcdcNormalization is the FastCDC normalization level: below the
	// normal size (Avg) a cut needs that many more zero bits than log2(Avg),
	// above it that many fewer, which narrows the spread of chunk sizes.
	fastcdcNormalization = 2
	// fastcdcMaskTop is the highest bit of every mask. The hot loop tests
	// the masks shifted left by up to 3 bits, so the top 3 bits stay clear.
	// High bits make the window wide: bit k of the hash depends on the
	// last k+1 bytes, so the default masks look at the last 44 to 61.
	fastcdcMaskTop = 60
	// fastcdcReadSize is the least the chunker reads at once once its
	// buffer has grown; with a larger Max it reads Max.
	fastcdcReadSize = 1 << 20
	// fastcdcInitialBuf is where the buffer starts; it grows to its full
	// size only for inputs that need it, so that cutting a small file
	// costs little memory.
	fastcdcInitialBuf = 64 << 10
	// gearSeed seeds the splitmix64 sequence that fills gearTable. It is
	// "fastcdc\x03": the first of "fastcdc\x01", "\x02"... for which a
	// run of 0x00 or of 0xff bytes never cuts, whatever Avg
	// (TestGearRunsNeverCut), so that such runs become identical max-size
	// chunks instead of min-size ones. Changing it moves every fastcdc
	// chunk boundary.
	gearSeed = 0x6661737463646303
)

// gearTable maps a byte to the 64-bit value that the gear hash adds for it.
// The hash is shifted left one bit per byte, so a byte has left all 64 bits
// 64 bytes after it was added: a rolling hash over a 64-byte window that
// needs no step to remove the byte that leaves.
var gearTable = func() (t [256]uint64) {
	// splitmix64 (Steele, Lea and Flood 2014): fully specified here, so
	// the table cannot change with a library.
	s := uint64(gearSeed)
	for i := range t {
		s += 0x9e3779b97f4a7c15
		z := s
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		t[i] = z ^ z>>31
	}
	return t
}()

func init() {
	registerChunker(ChunkerKind{
		Name: "fastcdc",
		Doc:  "content-defined chunks (Gear hash, FastCDC 2020 normalized chunking); like rabin, about twice as fast",
		Defaults: ChunkerParams{
			Name: "fastcdc", Min: fastcdcDefaultMin, Avg: fastcdcDefaultAvg, Max: fastcdcDefaultMax,
		},
		Validate: validateFastCDC,
		New: func(r io.Reader, p ChunkerParams) Chunker {
			return newFastCDCChunker(r, p)
		},
	})
}

func validateFastCDC(p ChunkerParams) error {
	if p.Poly != 0 {
		return fmt.Errorf("poly must be zero, got %#x", p.Poly)
	}
	if p.Min < gearWindow {
		return fmt.Errorf("min %d is below the %d-byte window", p.Min, gearWindow)
	}
	if p.Avg&(p.Avg-1) != 0 {
		return fmt.Errorf("avg %d is not a power of two", p.Avg)
	}
	return nil
}

// gearMask returns a mask of n bits, the highest of them fastcdcMaskTop. A
// position is a cut point when the hash has all of them zero, which on
// random data happens with probability 2^-n.
func gearMask(n int) uint64 {
	return (uint64(1)<<n - 1) << (fastcdcMaskTop + 1 - n)
}

// fastcdcChunker cuts as FastCDC (Xia et al., "The Design of Fast
// Content-Defined Chunking for Data Deduplication Based Storage Systems",
// IEEE TPDS 2020) describes: it skips the first min bytes of a chunk, rolls
// the gear hash from there, cuts where the hash has the bits of maskS zero
// until the chunk reaches avg bytes and where it has the fewer bits of maskL
// zero after that, and cuts at max when neither happens. A cut falls after
// the byte that completed the hash, so a chunk is at least min+1 bytes long
// unless it is the last.
//
// One departure from the paper: the hash starts over the 64 bytes before
// min rather than from zero at min, so every position tested hashes a full
// window. Whether a position cuts then depends only on the 64 bytes that
// end there (and on its distance from the chunk's start), and a chunk that
// starts inside a long run of zeros runs on to max instead of cutting
// wherever a half-filled hash happens to have the mask bits zero.
type fastcdcChunker struct {
	r             io.Reader
	min, avg, max int
	maskS, maskL  uint64
	// buf[start:end] is read and not yet returned; full is the size the
	// buffer grows to.
	buf        []byte
	start, end int
	full       int
	eof        bool
	err        error
}

func newFastCDCChunker(r io.Reader, p ChunkerParams) *fastcdcChunker {
	avgBits := bits.TrailingZeros32(p.Avg)
	full := int(p.Max) + max(int(p.Max), fastcdcReadSize)
	return &fastcdcChunker{
		r:     r,
		min:   int(p.Min),
		avg:   int(p.Avg),
		max:   int(p.Max),
		maskS: gearMask(avgBits + fastcdcNormalization),
		maskL: gearMask(avgBits - fastcdcNormalization),
		buf:   make([]byte, min(fastcdcInitialBuf, full)),
		full:  full,
	}
}

func (c *fastcdcChunker) Next() ([]byte, error) {
	for c.err == nil {
		n := c.end - c.start
		switch {
		case n >= c.max || c.eof && n > 0:
			at := c.start + c.cutPoint(c.buf[c.start:c.end])
			b := c.buf[c.start:at:at]
			c.start = at
			return b, nil
		case c.eof:
			c.err = io.EOF
		default:
			c.fill()
		}
	}
	return nil, c.err
}

// fill reads more input. It is called only when less than max bytes are
// held, so a buffer of full bytes always has room for a read.
func (c *fastcdcChunker) fill() {
	if c.end == len(c.buf) {
		n := c.end - c.start
		size := len(c.buf)
		for size < c.full && n > size/2 {
			size = min(2*size, c.full)
		}
		if size != len(c.buf) {
			grown := make([]byte, size)
			copy(grown, c.buf[c.start:c.end])
			c.buf = grown
		} else {
			copy(c.buf, c.buf[c.start:c.end])
		}
		c.start, c.end = 0, n
	}
	n, err := io.ReadFull(c.r, c.buf[c.end:])
	c.end += n
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		c.eof = true
	case err != nil:
		c.err = fmt.Errorf("fastcdc chunker: %w", err)
	}
}

// cutPoint returns the length of the chunk at the start of b, which holds
// at least max bytes or the rest of the input.
func (c *fastcdcChunker) cutPoint(b []byte) int {
	n := min(len(b), c.max)
	if n <= c.min {
		return n
	}
	var fp uint64
	for _, x := range b[c.min-gearWindow : c.min] {
		fp = fp<<1 + gearTable[x]
	}
	normal := min(c.avg, n)
	at, fp, ok := gearCut(b[:normal], c.min, fp, c.maskS)
	if ok {
		return at
	}
	at, _, _ = gearCut(b[:n], normal, fp, c.maskL)
	return at
}

// gearCut rolls the gear hash fp over b[i:] and returns the length of the
// chunk that ends with the first byte after which the hash has the bits of
// mask zero, with ok set; or len(b), the hash after the last byte and false.
//
// It is the hot loop, and takes four bytes per step (the "rolling two bytes
// each time" of FastCDC 2020, taken further). With F the hash after each
// byte, F' = F<<1 + g(b), four steps give F4 = F<<4 + (g0<<3 + g1<<2 +
// g2<<1 + g3): one shift and one add on the chain that each step waits
// for. The hashes in between are tested shifted instead of computed: F1<<3
// = F<<4 + g0<<3 has the bits of mask<<3 zero exactly when F1 has those of
// mask zero, because the masks leave the top 3 bits clear. Four bytes per
// step run about 1.5 times as fast as one (BenchmarkGearCut); eight gain nothing
// more.
func gearCut(b []byte, i int, fp, mask uint64) (int, uint64, bool) {
	m1, m2, m3 := mask<<1, mask<<2, mask<<3
	for ; i+4 <= len(b); i += 4 {
		w := b[i : i+4 : i+4]
		t := fp << 4
		s0 := gearTable[w[0]] << 3
		s1 := s0 + gearTable[w[1]]<<2
		s2 := s1 + gearTable[w[2]]<<1
		fp = t + (s2 + gearTable[w[3]])
		if (t+s0)&m3 == 0 {
			return i + 1, 0, true
		}
		if (t+s1)&m2 == 0 {
			return i + 2, 0, true
		}
		if (t+s2)&m1 == 0 {
			return i + 3, 0, true
		}
		if fp&mask == 0 {
			return i + 4, 0, true
		}
	}
	for ; i < len(b); i++ {
		fp = fp<<1 + gearTable[b[i]]
		if fp&mask == 0 {
			return i + 1, 0, true
		}
	}
	return len(b), fp, false
}
