package engine

import (
	"bytes"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// fastcdcReference cuts data one byte at a time, the way the FastCDC paper
// states the algorithm (with the window warmed up before min, as
// fastcdcChunker does): the chunker's four-bytes-per-step loop and its
// buffering must give the same cuts.
func fastcdcReference(data []byte, p ChunkerParams) []int {
	avgBits := bits.TrailingZeros32(p.Avg)
	maskS, maskL := gearMask(avgBits+fastcdcNormalization), gearMask(avgBits-fastcdcNormalization)
	lo, normal := int(p.Min), int(p.Avg)
	var sizes []int
	for len(data) > 0 {
		n := min(len(data), int(p.Max))
		cut := n
		if n > lo {
			var fp uint64
			for i := lo - gearWindow; i < n; i++ {
				fp = fp<<1 + gearTable[data[i]]
				mask := maskL
				if i < normal {
					mask = maskS
				}
				if i >= lo && fp&mask == 0 {
					cut = i + 1
					break
				}
			}
		}
		sizes = append(sizes, cut)
		data = data[cut:]
	}
	return sizes
}

// gearCutBytewise is gearCut one byte per step, as the paper states it:
// BenchmarkGearCut measures what the four-byte steps gain.
func gearCutBytewise(b []byte, i int, fp, mask uint64) (int, uint64, bool) {
	for ; i < len(b); i++ {
		fp = fp<<1 + gearTable[b[i]]
		if fp&mask == 0 {
			return i + 1, 0, true
		}
	}
	return len(b), fp, false
}

func smallFastCDC() ChunkerParams {
	return ChunkerParams{Name: "fastcdc", Min: 2 << 10, Avg: 8 << 10, Max: 32 << 10}
}

func TestFastCDCMatchesReference(t *testing.T) {
	def := defaultParams(t, "fastcdc")
	tests := []struct {
		name string
		data []byte
		p    ChunkerParams
	}{
		{"random default", randomData(1, 12<<20), def},
		{"text default", textData(2, 6<<20), def},
		{"tarlike default", tarLikeData(3, 12<<20), def},
		{"random small", randomData(4, 4<<20), smallFastCDC()},
		{"text small", textData(5, 2<<20), smallFastCDC()},
		// An odd min and a normal size the four-byte steps do not divide
		// exercise the byte-at-a-time tails of both regions.
		{"odd min", randomData(6, 2<<20), ChunkerParams{Name: "fastcdc", Min: 1001, Avg: 4 << 10, Max: 9999}},
		{"min is window", randomData(7, 1<<20), ChunkerParams{Name: "fastcdc", Min: 64, Avg: 64, Max: 1 << 10}},
		{"avg is max", randomData(8, 1<<20), ChunkerParams{Name: "fastcdc", Min: 100, Avg: 1 << 10, Max: 1 << 10}},
		{"largest", randomData(9, 40<<20), ChunkerParams{Name: "fastcdc", Min: 1 << 20, Avg: 4 << 20, Max: MaxChunkSize}},
		{"tiny", randomData(10, 100), def},
		{"just over min", randomData(11, fastcdcDefaultMin+3), def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateParams(tt.p); err != nil {
				t.Fatal(err)
			}
			want := fastcdcReference(tt.data, tt.p)
			for _, rd := range []struct {
				name string
				r    io.Reader
			}{
				{"whole reads", bytes.NewReader(tt.data)},
				{"short reads", &shortReader{bytes.NewReader(tt.data), rand.New(rand.NewPCG(7, 7)), 100 << 10}},
			} {
				got := cutSizes(t, rd.r, tt.p, tt.data)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: %d chunks, reference %d; first difference at chunk %d", rd.name, len(got), len(want), firstDiff(got, want))
				}
			}
		})
	}
}

// TestFastCDCOneByteReads checks that a reader handing out one byte per
// Read gives the cuts of whole reads.
func TestFastCDCOneByteReads(t *testing.T) {
	data := randomData(12, 3<<20)
	for _, p := range []ChunkerParams{defaultParams(t, "fastcdc"), smallFastCDC()} {
		t.Run(p.String(), func(t *testing.T) {
			want := cutSizes(t, bytes.NewReader(data), p, data)
			got := cutSizes(t, iotest.OneByteReader(bytes.NewReader(data)), p, data)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("one-byte reads: %d chunks, whole reads %d; first difference at chunk %d", len(got), len(want), firstDiff(got, want))
			}
		})
	}
}

func TestFastCDCEmpty(t *testing.T) {
	c, err := NewChunker(bytes.NewReader(nil), defaultParams(t, "fastcdc"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if b, err := c.Next(); err != io.EOF || b != nil {
			t.Fatalf("Next on empty input = %d bytes, %v; want nothing and io.EOF", len(b), err)
		}
	}
}

// TestFastCDCSizes checks the bounds and that normalized chunking keeps
// the mean chunk near Avg on random data.
func TestFastCDCSizes(t *testing.T) {
	data := randomData(13, 64<<20)
	for _, p := range []ChunkerParams{defaultParams(t, "fastcdc"), smallFastCDC()} {
		t.Run(p.String(), func(t *testing.T) {
			sizes := cutSizes(t, bytes.NewReader(data), p, data)
			for i, s := range sizes[:len(sizes)-1] {
				if s <= int(p.Min) || s > int(p.Max) {
					t.Fatalf("chunk %d of %d: %d bytes outside %d..%d", i, len(sizes), s, p.Min+1, p.Max)
				}
			}
			mean := float64(len(data)) / float64(len(sizes))
			t.Logf("%d chunks, mean %.0f bytes (avg %d)", len(sizes), mean, p.Avg)
			if mean < 0.75*float64(p.Avg) || mean > 1.25*float64(p.Avg) {
				t.Errorf("mean chunk %.0f bytes, want within 25%% of %d", mean, p.Avg)
			}
		})
	}
}

// TestFastCDCBoundaryStability edits the input, near its start and
// elsewhere: the cuts fall back in step within a few chunks, so nearly
// every chunk is shared. Normalization makes whether a position cuts depend
// on its distance from the chunk's start, so an edit can move a cut or two
// after the chunk it falls in before the cuts agree again; plain CDC
// (rabin) realigns at the next cut.
func TestFastCDCBoundaryStability(t *testing.T) {
	p := defaultParams(t, "fastcdc")
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
			{"insert 1 byte at 100", func(b []byte) []byte { return splice(b, 100, 0, []byte{1}) }},
			{"insert 10 KiB at 40 KiB", func(b []byte) []byte { return splice(b, 40<<10, 0, randomData(32, 10<<10)) }},
			{"delete 100 bytes at 70 KiB", func(b []byte) []byte { return splice(b, 70<<10, 100, nil) }},
			{"prepend 7 bytes", func(b []byte) []byte { return splice(b, 0, 0, []byte("prepend")) }},
			{"insert 1 byte in the middle", func(b []byte) []byte { return splice(b, len(b)/2, 0, []byte{1}) }},
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
				if lost := len(after) - kept; lost > 5 {
					t.Errorf("%d of %d chunks changed", lost, len(after))
				}
			})
		}
	}
	t.Run("random edits", func(t *testing.T) {
		data := randomData(33, 8<<20)
		before := chunkIDs(t, data, p)
		rng := newRand(34)
		const edits = 20
		lost := 0
		for range edits {
			at, del := rng.IntN(len(data)-100), rng.IntN(100)
			after := chunkIDs(t, splice(data, at, del, randomData(rng.Uint64(), rng.IntN(100))), p)
			for id := range after {
				if _, ok := before[id]; !ok {
					lost++
				}
			}
		}
		if mean := float64(lost) / edits; mean > 1.5 {
			t.Errorf("an edit of up to 100 bytes changes %.2f chunks on average, want at most 1.5", mean)
		}
	})
}

// TestFastCDCGolden pins fastcdc's cuts of a seeded input: a change moves
// every chunk ID a server holds, so it must be deliberate. TestChunkerGolden
// pins the defaults' cut lists of every chunker; this digest of a cut list
// also covers other parameters.
func TestFastCDCGolden(t *testing.T) {
	data := randomData(20, 8<<20)
	for _, tt := range []struct {
		p    ChunkerParams
		want string
	}{
		{ChunkerParams{Name: "fastcdc", Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}, "c5ec4cd34d12f20a4faadf4ab057af99fd456a2965897225ab8506ab2dfc92d2"},
		{smallFastCDC(), "2952eb0038f397ece60e741b59a1e6ff3f9779e7d6023b99ae32d200dfef97ed"},
	} {
		t.Run(tt.p.String(), func(t *testing.T) {
			var cuts strings.Builder
			off := 0
			for _, s := range cutSizes(t, bytes.NewReader(data), tt.p, data) {
				off += s
				cuts.WriteString(strconv.Itoa(off) + "\n")
			}
			if got := SumChunk([]byte(cuts.String())).String(); got != tt.want {
				t.Errorf("cut list digest %s, want %s", got, tt.want)
			}
		})
	}
}

// TestGearRunsNeverCut checks the property gearSeed was picked for, for
// every mask a valid Avg gives, and that runs of zeros become max-size
// chunks.
func TestGearRunsNeverCut(t *testing.T) {
	for avgBits := 6; avgBits <= 24; avgBits++ {
		for _, n := range []int{avgBits - fastcdcNormalization, avgBits + fastcdcNormalization} {
			for _, v := range []byte{0x00, 0xff} {
				var fp uint64
				for i := range 4 * gearWindow {
					fp = fp<<1 + gearTable[v]
					if i >= gearWindow && fp&gearMask(n) == 0 {
						t.Fatalf("a run of %#x cuts with a %d-bit mask", v, n)
					}
				}
			}
		}
	}
	for _, p := range []ChunkerParams{defaultParams(t, "fastcdc"), smallFastCDC()} {
		for _, v := range []byte{0x00, 0xff} {
			run := bytes.Repeat([]byte{v}, 5*int(p.Max)+3)
			want := fmt.Sprint([]int{int(p.Max), int(p.Max), int(p.Max), int(p.Max), int(p.Max), 3})
			if sizes := cutSizes(t, bytes.NewReader(run), p, run); fmt.Sprint(sizes) != want {
				t.Errorf("%s: a run of %#x cut into %v", p, v, sizes)
			}
		}
	}
}

func TestFastCDCValidation(t *testing.T) {
	def := defaultParams(t, "fastcdc")
	with := func(change func(*ChunkerParams)) ChunkerParams {
		p := def
		change(&p)
		return p
	}
	tests := []struct {
		name string
		p    ChunkerParams
		ok   bool
	}{
		{"defaults", def, true},
		{"small", smallFastCDC(), true},
		{"min is window", ChunkerParams{Name: "fastcdc", Min: 64, Avg: 64, Max: 64}, true},
		{"max is the limit", with(func(p *ChunkerParams) { p.Max = MaxChunkSize }), true},
		{"min below window", ChunkerParams{Name: "fastcdc", Min: 63, Avg: 64, Max: 128}, false},
		{"avg not power of two", with(func(p *ChunkerParams) { p.Avg = 96 << 10 }), false},
		{"max over limit", with(func(p *ChunkerParams) { p.Max = MaxChunkSize + 1 }), false},
		{"poly", with(func(p *ChunkerParams) { p.Poly = RabinPoly }), false},
		{"min over avg", with(func(p *ChunkerParams) { p.Min = p.Avg + 1 }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateParams(tt.p); (err == nil) != tt.ok {
				t.Fatalf("ValidateParams(%s) = %v, want ok=%v", tt.p, err, tt.ok)
			}
		})
	}
}
