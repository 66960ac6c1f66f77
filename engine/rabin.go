package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/restic/chunker"
)

// RabinPoly is the irreducible polynomial of degree 53 over GF(2) that the
// rabin chunker uses, generated once with chunker.RandomPolynomial. Every
// manifest cut by rabin records it; the chunker refuses any other, because
// a chunk boundary is only reproducible with the same polynomial and
// checking that another one is irreducible costs most of a millisecond.
const RabinPoly = 0x3b7592b25d5c9b

const (
	// rabinWindow is the width of the rolling fingerprint, as in restic.
	rabinWindow = 64
	// rabinReadSize is how much the chunker reads and fingerprints at once.
	rabinReadSize = 2 << 20
	// rabinInitialBuf is where the buffer starts; it grows to its full
	// size only for inputs that need it, so that cutting a small file
	// costs little memory.
	rabinInitialBuf = 64 << 10
	// rabinLanes regions of at least rabinLaneMin bytes each are
	// fingerprinted in one interleaved loop; shorter ones with one lane.
	rabinLanes   = 4
	rabinLaneMin = 16 << 10
	// zeroProbe is the step at which the fingerprinting looks for runs of
	// zero bytes to skip; every run of 2*zeroProbe zeros is found.
	zeroProbe = 2 << 10
)

func init() {
	registerChunker(ChunkerKind{
		Name: "rabin",
		Doc:  "content-defined chunks (Rabin fingerprint, restic-compatible); boundaries survive insertions and deletions",
		Defaults: ChunkerParams{
			Name: "rabin", Min: 64 << 10, Avg: 256 << 10, Max: 2 << 20, Poly: RabinPoly,
		},
		Validate: validateRabin,
		New: func(r io.Reader, p ChunkerParams) Chunker {
			return newRabinChunker(r, p)
		},
	})
}

func validateRabin(p ChunkerParams) error {
	if p.Poly != RabinPoly {
		return fmt.Errorf("poly %#x is not the supported %#x", p.Poly, uint64(RabinPoly))
	}
	if p.Min < rabinWindow {
		return fmt.Errorf("min %d is below the %d-byte window", p.Min, rabinWindow)
	}
	if p.Avg&(p.Avg-1) != 0 {
		return fmt.Errorf("avg %d is not a power of two", p.Avg)
	}
	return nil
}

// rabinTables make rolling the fingerprint one table lookup per byte in and
// one per byte out; they are computed as restic computes its own.
type rabinTables struct {
	// out[b] is the fingerprint of b followed by 63 zero bytes: XOR-ing
	// it removes b from the front of the window.
	out [256]uint64
	// mod[i] reduces the 8 bits that shifting in a byte pushes above the
	// polynomial's degree; i is those 8 bits.
	mod [256]uint64
}

// rabinShift brings the top 8 bits of a fingerprint of degree < 53 down.
const rabinShift = 53 - 8

var rabinTab = sync.OnceValue(func() *rabinTables {
	pol := chunker.Pol(RabinPoly)
	t := new(rabinTables)
	for b := range 256 {
		h := chunker.Pol(b).Mod(pol)
		for range rabinWindow - 1 {
			h = (h << 8).Mod(pol)
		}
		t.out[b] = uint64(h)
	}
	k := pol.Deg()
	for b := range 256 {
		t.mod[b] = uint64((chunker.Pol(uint64(b)<<uint(k)).Mod(pol) | chunker.Pol(b)<<uint(k)))
	}
	return t
})

// rabinChunker cuts at the same places as restic's chunker with the same
// polynomial, min, max and average bits, with one exception: a window whose
// fingerprint is 0 is never a cut point. restic cuts wherever the
// fingerprint has its low bits zero, and the fingerprint of 64 zero bytes
// is 0, so it cuts a run of zeros (sparse disk images, tar padding,
// preallocated database files) into minimum-size chunks: 16 times as many
// chunks as needed with the defaults. Here a zero run runs on to the next
// real cut or to max, so long runs become identical max-size chunks. A
// non-zero window fingerprints to 0 with probability 2^-53, so elsewhere
// the cuts are restic's.
//
// It is also faster than restic's loop: it fingerprints every position of
// a large read in four independent interleaved lanes (restic's one lane is
// bound by the latency of its table lookups) and skips zero runs without
// hashing them, then picks the cuts from the candidates.
type rabinChunker struct {
	r        io.Reader
	tab      *rabinTables
	mask     uint64
	min, max int
	// buf[start:end] is read and not yet returned; every window ending at
	// a position ≤ scanned (an index into buf, exclusive end of a window)
	// has been fingerprinted, and cands[next:] lists those that end a
	// candidate cut after start, in order.
	buf                 []byte
	start, scanned, end int
	cands               []int
	next                int
	lane                [rabinLanes][]int
	eof                 bool
	err                 error
}

func newRabinChunker(r io.Reader, p ChunkerParams) *rabinChunker {
	c := &rabinChunker{
		r:       r,
		tab:     rabinTab(),
		mask:    uint64(p.Avg) - 1,
		min:     int(p.Min),
		max:     int(p.Max),
		buf:     make([]byte, min(rabinInitialBuf, int(p.Max)+rabinWindow+rabinReadSize)),
		scanned: rabinWindow - 1, // shorter windows are never cut points: min ≥ the window
	}
	// A read holds about rabinReadSize/avg candidates; room for a few
	// times that means the lists rarely grow.
	n := min(4*rabinReadSize/int(p.Avg), 1024)
	c.cands = make([]int, 0, n)
	for j := range c.lane {
		c.lane[j] = make([]int, 0, n/rabinLanes)
	}
	return c
}

func (c *rabinChunker) Next() ([]byte, error) {
	for c.err == nil {
		for c.next < len(c.cands) && c.cands[c.next] < c.start+c.min {
			c.next++
		}
		limit := c.start + c.max
		switch {
		case c.next < len(c.cands) && c.cands[c.next] <= limit:
			c.next++
			return c.cut(c.cands[c.next-1]), nil
		case c.scanned >= limit:
			return c.cut(limit), nil
		case c.eof && c.end > c.start:
			return c.cut(c.end), nil
		case c.eof:
			c.err = io.EOF
		default:
			c.fill()
		}
	}
	return nil, c.err
}

func (c *rabinChunker) cut(at int) []byte {
	b := c.buf[c.start:at:at]
	c.start = at
	return b
}

// fill reads more input and fingerprints it. It is called only when no cut
// can be chosen yet, so less than max bytes of the current chunk are held.
func (c *rabinChunker) fill() {
	full := c.max + rabinWindow + rabinReadSize
	if c.end == len(c.buf) || len(c.buf) == full && len(c.buf)-c.end < rabinReadSize/2 {
		// Keep the current chunk and the window before the first
		// position not fingerprinted yet. That is less than
		// max+rabinWindow bytes, so a full buffer has room for a read.
		keep := min(c.start, c.scanned+1-rabinWindow)
		size := len(c.buf)
		for size < full && c.end-keep > size/2 {
			size = min(2*size, full)
		}
		if size != len(c.buf) {
			grown := make([]byte, size)
			copy(grown, c.buf[keep:c.end])
			c.buf = grown
		} else {
			copy(c.buf, c.buf[keep:c.end])
		}
		c.start -= keep
		c.scanned -= keep
		c.end -= keep
		n := copy(c.cands, c.cands[c.next:])
		c.cands, c.next = c.cands[:n], 0
		for i := range c.cands {
			c.cands[i] -= keep
		}
	}
	if c.next == len(c.cands) {
		c.cands, c.next = c.cands[:0], 0
	}
	n, err := io.ReadFull(c.r, c.buf[c.end:])
	c.end += n
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		c.eof = true
	case err != nil:
		c.err = fmt.Errorf("rabin chunker: %w", err)
		return
	}
	if c.end > c.scanned {
		c.findCandidates(c.scanned+1, c.end)
		c.scanned = c.end
	}
}

// findCandidates appends to c.cands every window end in [from, to] whose
// fingerprint has the low bits of the mask zero and is not 0. Windows
// inside a zero run fingerprint to 0, so long runs are skipped unhashed.
func (c *rabinChunker) findCandidates(from, to int) {
	for from <= to {
		zs, ze, ok := findZeroRun(c.buf[from-rabinWindow : to])
		if !ok {
			c.findInSegment(from, to)
			return
		}
		zs += from - rabinWindow
		ze += from - rabinWindow
		// Windows ending in [zs+rabinWindow, ze] hold only zeros.
		if last := zs + rabinWindow - 1; last >= from {
			c.findInSegment(from, last)
		}
		from = ze + 1
	}
}

// findInSegment fingerprints the windows ending in [from, to] in lanes.
func (c *rabinChunker) findInSegment(from, to int) {
	count := to - from + 1
	if count < rabinLanes*rabinLaneMin {
		c.cands = c.findInLane(c.cands, from, to)
		return
	}
	n := count / rabinLanes
	var a [rabinLanes]int
	var w [rabinLanes][]byte
	var h [rabinLanes]uint64
	for j := range rabinLanes {
		a[j] = from + j*n
		c.lane[j] = c.lane[j][:0]
		h[j] = c.warmUp(a[j])
		if c.isCandidate(h[j]) {
			c.lane[j] = append(c.lane[j], a[j])
		}
		// Step k removes w[j][k] and adds w[j][k+64], which gives the
		// window ending at a[j]+k+1.
		w[j] = c.buf[a[j]-rabinWindow : a[j]+n-1]
	}
	for k := 0; k < n-1; {
		k = rabinLanes4(c.tab, c.mask, &w, k, n-1, &h)
		for j := range rabinLanes {
			if c.isCandidate(h[j]) {
				c.lane[j] = append(c.lane[j], a[j]+k)
			}
		}
	}
	for j := range rabinLanes {
		c.cands = append(c.cands, c.lane[j]...)
	}
	if rest := from + rabinLanes*n; rest <= to {
		c.cands = c.findInLane(c.cands, rest, to)
	}
}

func (c *rabinChunker) isCandidate(h uint64) bool { return h&c.mask == 0 && h != 0 }

// warmUp returns the fingerprint of the window ending at end.
func (c *rabinChunker) warmUp(end int) uint64 {
	var h uint64
	for _, b := range c.buf[end-rabinWindow : end] {
		h = (h<<8 | uint64(b)) ^ c.tab.mod[byte(h>>rabinShift)]
	}
	return h
}

// findInLane appends the candidates among windows ending in [from, to].
func (c *rabinChunker) findInLane(cands []int, from, to int) []int {
	h := c.warmUp(from)
	if c.isCandidate(h) {
		cands = append(cands, from)
	}
	w := c.buf[from-rabinWindow : to]
	tab, mask := c.tab, c.mask
	for k := 0; k+rabinWindow < len(w); k++ {
		h ^= tab.out[w[k]]
		h = (h<<8 | uint64(w[k+rabinWindow])) ^ tab.mod[byte(h>>rabinShift)]
		if h&mask == 0 && h != 0 {
			cands = append(cands, from+k+1)
		}
	}
	return cands
}

// rabinLanes4 rolls four fingerprints in step from step k until one of them
// has the mask bits zero or k reaches n, and returns the steps taken so far.
// It is the hot loop: the four lanes hide each other's lookup latency, and
// keeping appends out of it keeps everything in registers.
func rabinLanes4(t *rabinTables, mask uint64, w *[rabinLanes][]byte, k, n int, h *[rabinLanes]uint64) int {
	w0, w1, w2, w3 := w[0][:n+rabinWindow], w[1][:n+rabinWindow], w[2][:n+rabinWindow], w[3][:n+rabinWindow]
	h0, h1, h2, h3 := h[0], h[1], h[2], h[3]
	for ; k < n; k++ {
		h0 ^= t.out[w0[k]]
		h1 ^= t.out[w1[k]]
		h2 ^= t.out[w2[k]]
		h3 ^= t.out[w3[k]]
		h0 = (h0<<8 | uint64(w0[k+rabinWindow])) ^ t.mod[byte(h0>>rabinShift)]
		h1 = (h1<<8 | uint64(w1[k+rabinWindow])) ^ t.mod[byte(h1>>rabinShift)]
		h2 = (h2<<8 | uint64(w2[k+rabinWindow])) ^ t.mod[byte(h2>>rabinShift)]
		h3 = (h3<<8 | uint64(w3[k+rabinWindow])) ^ t.mod[byte(h3>>rabinShift)]
		if h0&mask == 0 || h1&mask == 0 || h2&mask == 0 || h3&mask == 0 {
			k++
			break
		}
	}
	h[0], h[1], h[2], h[3] = h0, h1, h2, h3
	return k
}

var zeroBlock [zeroProbe]byte

// findZeroRun returns the first run b[start:end] of zero bytes that covers
// a whole zeroProbe-aligned block of b, extended as far as it goes; it
// finds every run of at least 2*zeroProbe bytes. Probing one word per
// block keeps the cost on data without zeros negligible.
func findZeroRun(b []byte) (start, end int, ok bool) {
	for p := 0; p+zeroProbe <= len(b); p += zeroProbe {
		if binary.LittleEndian.Uint64(b[p:]) != 0 || !bytes.Equal(b[p:p+zeroProbe], zeroBlock[:]) {
			continue
		}
		start, end = p, p+zeroProbe
		for start > 0 && b[start-1] == 0 {
			start--
		}
		for end+zeroProbe <= len(b) && bytes.Equal(b[end:end+zeroProbe], zeroBlock[:]) {
			end += zeroProbe
		}
		for end+8 <= len(b) && binary.LittleEndian.Uint64(b[end:]) == 0 {
			end += 8
		}
		for end < len(b) && b[end] == 0 {
			end++
		}
		return start, end, true
	}
	return 0, 0, false
}
