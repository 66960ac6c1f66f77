package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/restic/chunker"
)

// cutSizes cuts r with p, checks that the chunks put back together are
// want, and returns their sizes.
func cutSizes(t testing.TB, r io.Reader, p ChunkerParams, want []byte) []int {
	t.Helper()
	c, err := NewChunker(r, p)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	off := 0
	for {
		b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d chunks: %v", len(sizes), err)
		}
		if len(b) == 0 {
			t.Fatalf("chunk %d is empty", len(sizes))
		}
		if off+len(b) > len(want) || !bytes.Equal(b, want[off:off+len(b)]) {
			t.Fatalf("chunk %d (offset %d, %d bytes) does not match the input", len(sizes), off, len(b))
		}
		off += len(b)
		sizes = append(sizes, len(b))
	}
	if off != len(want) {
		t.Fatalf("chunks cover %d of %d bytes", off, len(want))
	}
	if _, err := c.Next(); err != io.EOF {
		t.Fatalf("Next after the end = %v, want io.EOF", err)
	}
	return sizes
}

// resticSizes cuts data with restic's own chunker.
func resticSizes(t testing.TB, data []byte, p ChunkerParams) []int {
	t.Helper()
	c := chunker.NewWithBoundaries(bytes.NewReader(data), chunker.Pol(p.Poly), uint(p.Min), uint(p.Max))
	c.SetAverageBits(bits.TrailingZeros32(p.Avg))
	var sizes []int
	buf := make([]byte, p.Max)
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			return sizes
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, int(ch.Length))
	}
}

// shortReader returns reads of seeded random lengths up to max.
type shortReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (s *shortReader) Read(p []byte) (int, error) {
	if n := 1 + s.rng.IntN(s.max); n < len(p) {
		p = p[:n]
	}
	return s.r.Read(p)
}

func smallRabin() ChunkerParams {
	return ChunkerParams{Name: "rabin", Min: 2 << 10, Avg: 8 << 10, Max: 32 << 10, Poly: RabinPoly}
}

func TestRabinPolyIrreducible(t *testing.T) {
	p := chunker.Pol(RabinPoly)
	if p.Deg() != 53 || !p.Irreducible() {
		t.Fatalf("RabinPoly %#x: degree %d, irreducible %v", uint64(RabinPoly), p.Deg(), p.Irreducible())
	}
}

// TestRabinMatchesRestic checks that, on data without zero runs, rabin
// cuts exactly where restic's chunker cuts.
func TestRabinMatchesRestic(t *testing.T) {
	def := defaultParams(t, "rabin")
	tests := []struct {
		name string
		data []byte
		p    ChunkerParams
	}{
		{"random default", randomData(1, 12<<20), def},
		{"text default", textData(2, 6<<20), def},
		{"random small", randomData(3, 4<<20), smallRabin()},
		{"text small", textData(4, 2<<20), smallRabin()},
		{"min is window", randomData(5, 1<<20), ChunkerParams{Name: "rabin", Min: 64, Avg: 64, Max: 1 << 10, Poly: RabinPoly}},
		{"tiny", randomData(6, 100), def},
		{"empty", nil, def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := resticSizes(t, tt.data, tt.p)
			for _, rd := range []struct {
				name string
				r    io.Reader
			}{
				{"whole reads", bytes.NewReader(tt.data)},
				{"short reads", &shortReader{bytes.NewReader(tt.data), rand.New(rand.NewPCG(7, 7)), 100 << 10}},
			} {
				got := cutSizes(t, rd.r, tt.p, tt.data)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: %d chunks, restic %d; first difference at chunk %d", rd.name, len(got), len(want), firstDiff(got, want))
				}
			}
		})
	}
}

func firstDiff(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestChunkerSizes checks every registered chunker, with its defaults and
// with small parameters, on several kinds of data: every chunk but the last
// is within min and max, and the chunks put back together are the input.
func TestChunkerSizes(t *testing.T) {
	data := map[string][]byte{
		"random":  randomData(10, 5<<20),
		"tarlike": tarLikeData(11, 12<<20),
		"zeros":   make([]byte, 5<<20+17),
		"short":   randomData(12, 1000),
	}
	for _, k := range ChunkerKinds() {
		small := ChunkerParams{Name: k.Name, Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10, Poly: k.Defaults.Poly}
		if k.Name == "fixed" {
			small.Min, small.Max = small.Avg, small.Avg
		}
		for _, p := range []ChunkerParams{k.Defaults, small} {
			for name, d := range data {
				t.Run(fmt.Sprintf("%s/%d/%s", k.Name, p.Avg, name), func(t *testing.T) {
					sizes := cutSizes(t, &shortReader{bytes.NewReader(d), rand.New(rand.NewPCG(1, 2)), 300 << 10}, p, d)
					for i, s := range sizes {
						if s > int(p.Max) || s < int(p.Min) && i != len(sizes)-1 {
							t.Fatalf("chunk %d of %d: %d bytes outside %d..%d", i, len(sizes), s, p.Min, p.Max)
						}
					}
				})
			}
		}
	}
}

// TestChunkerGolden pins the boundaries of every chunker on seeded inputs:
// a change moves every chunk ID a server holds, so it must be deliberate.
func TestChunkerGolden(t *testing.T) {
	inputs := []struct {
		name string
		data []byte
	}{
		{"random", randomData(20, 8<<20)},
		{"tarlike", tarLikeData(21, 16<<20)},
	}
	var out strings.Builder
	for _, k := range ChunkerKinds() {
		for _, in := range inputs {
			fmt.Fprintf(&out, "%s %s %s:", k.Name, k.Defaults, in.name)
			off := 0
			for _, s := range cutSizes(t, bytes.NewReader(in.data), k.Defaults, in.data) {
				off += s
				out.WriteString(" " + strconv.Itoa(off))
			}
			out.WriteString("\n")
		}
	}
	golden(t, "chunker_boundaries.golden", []byte(out.String()))
}

// TestRabinBoundaryStability inserts and deletes bytes in the middle of the
// input: only the chunks around the edit may change.
func TestRabinBoundaryStability(t *testing.T) {
	p := defaultParams(t, "rabin")
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"random", randomData(30, 16<<20)},
		{"tarlike", tarLikeData(31, 16<<20)},
	} {
		for _, edit := range []struct {
			name string
			do   func([]byte) []byte
		}{
			{"insert 1 byte", func(b []byte) []byte { return splice(b, len(b)/2, 0, []byte{1}) }},
			{"insert 10 KiB", func(b []byte) []byte { return splice(b, len(b)/3, 0, randomData(32, 10<<10)) }},
			{"delete 100 bytes", func(b []byte) []byte { return splice(b, len(b)/2, 100, nil) }},
			{"prepend 7 bytes", func(b []byte) []byte { return splice(b, 0, 0, []byte("prepend")) }},
		} {
			t.Run(tt.name+"/"+edit.name, func(t *testing.T) {
				before := chunkIDs(t, tt.data, p)
				after := chunkIDs(t, edit.do(tt.data), p)
				kept := 0
				for id := range after {
					if _, ok := before[id]; ok {
						kept++
					}
				}
				// An edit changes the chunk it falls in and at most one
				// more when it creates or removes a cut near a boundary.
				if lost := len(after) - kept; lost > 3 {
					t.Errorf("%d of %d chunks changed", lost, len(after))
				}
			})
		}
	}
}

func splice(b []byte, at, del int, ins []byte) []byte {
	out := append([]byte(nil), b[:at]...)
	out = append(out, ins...)
	return append(out, b[at+del:]...)
}

func chunkIDs(t *testing.T, data []byte, p ChunkerParams) map[ChunkID]struct{} {
	t.Helper()
	c, err := NewChunker(bytes.NewReader(data), p)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[ChunkID]struct{}{}
	for {
		b, err := c.Next()
		if err == io.EOF {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids[SumChunk(b)] = struct{}{}
	}
}

// TestRabinZeroRuns checks the one place rabin departs from restic: a run
// of zeros is not cut into minimum-size chunks but into max-size ones that
// are all the same.
func TestRabinZeroRuns(t *testing.T) {
	p := defaultParams(t, "rabin")
	data := sparseImageData(40, 64<<20)
	restic := resticSizes(t, data, p)
	got := cutSizes(t, bytes.NewReader(data), p, data)
	ids := chunkIDs(t, data, p)
	t.Logf("64 MiB sparse image: restic %d chunks, rabin %d chunks (%d distinct)", len(restic), len(got), len(ids))
	if len(got)*5 > len(restic) {
		t.Errorf("rabin cut %d chunks, restic %d: zero runs are not collapsing", len(got), len(restic))
	}
	// Each 16 MiB period holds 15 MiB of zeros: at least six whole
	// max-size zero chunks, all the same.
	zero := SumChunk(make([]byte, p.Max))
	n := 0
	off := 0
	for _, s := range got {
		if s == int(p.Max) && SumChunk(data[off:off+s]) == zero {
			n++
		}
		off += s
	}
	if n < 4*6 {
		t.Errorf("%d max-size zero chunks, want at least 24", n)
	}
	// All zeros: max-size chunks and one tail.
	zeros := make([]byte, 5*int(p.Max)+3)
	if sizes := cutSizes(t, bytes.NewReader(zeros), p, zeros); fmt.Sprint(sizes) != fmt.Sprint([]int{int(p.Max), int(p.Max), int(p.Max), int(p.Max), int(p.Max), 3}) {
		t.Errorf("all zeros cut into %v", sizes)
	}
}

func TestChunkerParamsValidation(t *testing.T) {
	rabin := defaultParams(t, "rabin")
	fixed := defaultParams(t, "fixed")
	with := func(p ChunkerParams, change func(*ChunkerParams)) ChunkerParams {
		change(&p)
		return p
	}
	tests := []struct {
		name string
		p    ChunkerParams
		ok   bool
	}{
		{"rabin defaults", rabin, true},
		{"fixed defaults", fixed, true},
		{"rabin small", smallRabin(), true},
		{"unknown", ChunkerParams{Name: "gear", Min: 1, Avg: 1, Max: 1}, false},
		{"rabin other poly", with(rabin, func(p *ChunkerParams) { p.Poly = 0x3DA3358B4DC173 }), false},
		{"rabin no poly", with(rabin, func(p *ChunkerParams) { p.Poly = 0 }), false},
		{"rabin avg not power of two", with(rabin, func(p *ChunkerParams) { p.Avg = 300 << 10 }), false},
		{"rabin min below window", with(rabin, func(p *ChunkerParams) { p.Min, p.Avg = 32, 64 }), false},
		{"rabin min zero", with(rabin, func(p *ChunkerParams) { p.Min = 0 }), false},
		{"rabin min over avg", with(rabin, func(p *ChunkerParams) { p.Min = p.Avg * 2 }), false},
		{"rabin max over limit", with(rabin, func(p *ChunkerParams) { p.Max = MaxChunkSize * 2 }), false},
		{"fixed unequal", with(fixed, func(p *ChunkerParams) { p.Max *= 2 }), false},
		{"fixed with poly", with(fixed, func(p *ChunkerParams) { p.Poly = RabinPoly }), false},
		{"fixed 1 byte", ChunkerParams{Name: "fixed", Min: 1, Avg: 1, Max: 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateParams(tt.p)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateParams(%s) = %v, want ok=%v", tt.p, err, tt.ok)
			}
			if _, err := NewChunker(bytes.NewReader(nil), tt.p); (err == nil) != tt.ok {
				t.Fatalf("NewChunker(%s) = %v, want ok=%v", tt.p, err, tt.ok)
			}
		})
	}
}

func TestChunkerReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	for _, k := range ChunkerKinds() {
		t.Run(k.Name, func(t *testing.T) {
			r := io.MultiReader(bytes.NewReader(randomData(50, 3<<20)), iotest.ErrReader(boom))
			c, err := NewChunker(r, k.Defaults)
			if err != nil {
				t.Fatal(err)
			}
			for {
				_, err = c.Next()
				if err != nil {
					break
				}
			}
			if !errors.Is(err, boom) {
				t.Fatalf("got %v, want an error wrapping %v", err, boom)
			}
			if _, again := c.Next(); !errors.Is(again, boom) {
				t.Fatalf("error is not sticky: then %v", again)
			}
		})
	}
}

// TestChunkerAllocs checks that cutting allocates only while buffers grow,
// never per chunk.
func TestChunkerAllocs(t *testing.T) {
	data := tarLikeData(60, 48<<20)
	for _, k := range ChunkerKinds() {
		t.Run(k.Name, func(t *testing.T) {
			r := bytes.NewReader(data)
			chunks := 0
			allocs := testing.AllocsPerRun(1, func() {
				r.Reset(data)
				c, _ := NewChunker(r, k.Defaults)
				for chunks = 0; ; chunks++ {
					if _, err := c.Next(); err != nil {
						break
					}
				}
			})
			if allocs > 20 || chunks < 40 {
				t.Errorf("%v allocations for %d chunks", allocs, chunks)
			}
		})
	}
}
