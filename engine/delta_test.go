package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// editData returns a copy of b with n seeded edits: short overwrites,
// insertions and deletions, as an edited source tree has them.
func editData(seed uint64, b []byte, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x65646974))
	out := bytes.Clone(b)
	for range n {
		at := rng.IntN(len(out) + 1)
		edit := textData(rng.Uint64(), 1+rng.IntN(40))
		switch rng.IntN(3) {
		case 0:
			out = append(out[:at:at], append(edit, out[at:]...)...)
		case 1:
			end := min(len(out), at+1+rng.IntN(40))
			out = append(out[:at:at], out[end:]...)
		default:
			copy(out[at:], edit)
		}
	}
	return out
}

// swapHalves returns b with its two halves exchanged.
func swapHalves(b []byte) []byte {
	h := len(b) / 2
	return append(bytes.Clone(b[h:]), b[:h]...)
}

func TestDeltaRoundTrip(t *testing.T) {
	random := randomData(1, 300<<10)
	text := textData(2, 300<<10)
	tar := tarLikeData(3, 1<<20)
	tests := []struct {
		name         string
		base, target []byte
		// small: the delta must be below a tenth of the target
		// compressed alone.
		small bool
	}{
		{"random edited", random, editData(4, random, 10), true},
		// Word salad of a dozen words defeats zstd's match finder,
		// which tries only so many of the places a word recurs.
		{"text edited", text, editData(5, text, 10), false},
		{"tar edited", tar, editData(6, tar, 20), true},
		{"halves swapped", random, swapHalves(random), true},
		{"unchanged", text, text, true},
		{"unrelated", random, randomData(7, 100<<10), false},
		{"empty base", nil, text[:5000], false},
		{"empty target", text, nil, false},
		{"both empty", nil, nil, false},
		{"tiny", []byte("abc"), []byte("abd"), false},
	}
	options := []struct {
		name string
		opts []DeltaOption
	}{
		{"defaults", nil},
		{"1K sub-chunks, 8-byte hashes, fastest", []DeltaOption{WithSubChunkSize(1 << 10), WithSignatureHashLen(8), WithDeltaLevel(1)}},
		{"64K sub-chunks, 3-byte hashes, better", []DeltaOption{WithSubChunkSize(MaxSubChunkSize), WithSignatureHashLen(3), WithDeltaLevel(7)}},
	}
	for _, tt := range tests {
		for _, o := range options {
			t.Run(tt.name+"/"+o.name, func(t *testing.T) {
				sig, err := AppendSignature(nil, tt.base, o.opts...)
				if err != nil {
					t.Fatal(err)
				}
				delta, err := EncodeDelta(nil, tt.target, sig, o.opts...)
				if err != nil {
					t.Fatal(err)
				}
				got, err := DecodeDelta(make([]byte, 7), tt.base, delta, uint32(len(tt.target)))
				if err != nil || !bytes.Equal(got, tt.target) {
					t.Fatalf("delta against a signature: %v", err)
				}
				_, plain := Compress(nil, tt.target)
				t.Logf("target %d, compressed alone %d, signature %d, delta %d", len(tt.target), len(plain), len(sig), len(delta))
				if len(delta) > len(tt.target)+1 {
					t.Errorf("a delta is larger than the target and a byte")
				}
				if tt.small && o.opts == nil && len(delta) > len(plain)/10 {
					t.Errorf("delta of %d bytes for a target that compresses to %d alone", len(delta), len(plain))
				}
			})
		}
	}
}

// TestDeltaMatchesNeedANeighbour: a target sub-chunk whose hash is in the
// signature counts only beside a match of the neighbouring base sub-chunk,
// so that a false match of a short hash needs two in a row.
func TestDeltaMatchesNeedANeighbour(t *testing.T) {
	target := textData(8, 64<<10)
	var cuts [][2]int
	for s, e := range subChunks(target, defaultSubChunkLog2) {
		cuts = append(cuts, [2]int{s, e})
	}
	if len(cuts) < 10 {
		t.Fatalf("%d sub-chunks", len(cuts))
	}
	one := target[cuts[5][0]:cuts[5][1]]
	two := target[cuts[5][0]:cuts[6][1]]
	for _, tt := range []struct {
		name string
		base []byte
		runs uint64
	}{
		{"one sub-chunk", one, 0},
		{"two neighbours", two, 1},
		{"the same one twice", append(bytes.Clone(one), one...), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sig, err := AppendSignature(nil, tt.base)
			if err != nil {
				t.Fatal(err)
			}
			delta, err := EncodeDelta(nil, target, sig)
			if err != nil {
				t.Fatal(err)
			}
			if delta[0] != deltaKindSubChunks {
				t.Fatalf("delta of kind %d", delta[0])
			}
			if runs := copyOps(t, delta); runs != tt.runs {
				t.Fatalf("delta uses %d runs of base sub-chunks, want %d", runs, tt.runs)
			}
			if got, err := DecodeDelta(nil, tt.base, delta, uint32(len(target))); err != nil || !bytes.Equal(got, target) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

// copyOps counts the copy ops of a sub-chunk delta.
func copyOps(t *testing.T, delta []byte) uint64 {
	t.Helper()
	n, k := binary.Uvarint(delta[2:])
	ops := delta[2+k : 2+k+int(n)]
	var copies uint64
	for len(ops) > 0 {
		tag, k := binary.Uvarint(ops)
		ops = ops[k:]
		if tag&1 == 0 {
			copies++
			_, k = binary.Varint(ops)
			ops = ops[k:]
		}
	}
	return copies
}

// deltaFixture is a base, an edited target and both kinds of compressed
// delta between them.
func deltaFixture(t testing.TB) (base, target, delta, pulled []byte) {
	base = textData(9, 100<<10)
	target = editData(10, base, 5)
	sig, err := AppendSignature(nil, base)
	if err != nil {
		t.Fatal(err)
	}
	if delta, err = EncodeDelta(nil, target, sig); err != nil {
		t.Fatal(err)
	}
	// A pull's: the server makes the signature itself, with long hashes.
	long, err := AppendSignature(nil, base, WithSignatureHashLen(MaxSignatureHashLen))
	if err != nil {
		t.Fatal(err)
	}
	if pulled, err = EncodeDelta(nil, target, long); err != nil {
		t.Fatal(err)
	}
	if delta[0] != deltaKindSubChunks || pulled[0] != deltaKindSubChunks {
		t.Fatalf("fixture deltas of kinds %d and %d", delta[0], pulled[0])
	}
	return base, target, delta, pulled
}

// TestDeltaRefusesDamage: a damaged delta or a wrong size is refused with
// ErrMalformed; the zstd frame's checksum catches what decodes anyway. The
// one exception, a bit that the format ignores (the zstd frame header has
// one), decodes to the target all the same.
func TestDeltaRefusesDamage(t *testing.T) {
	base, target, delta, pulled := deltaFixture(t)
	size := uint32(len(target))
	for name, payload := range map[string][]byte{"a push's": delta, "a pull's": pulled} {
		t.Run(name, func(t *testing.T) {
			refused := func(what string, p []byte, size uint32) {
				t.Helper()
				got, err := DecodeDelta(nil, base, p, size)
				if err == nil && bytes.Equal(got, target) {
					return
				}
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("%s: %d bytes, %v; want an error wrapping ErrMalformed", what, len(got), err)
				}
			}
			refused("size one less", payload, size-1)
			refused("size one more", payload, size+1)
			refused("size beyond MaxDeltaSize", payload, MaxDeltaSize+1)
			refused("trailing byte", append(bytes.Clone(payload), 0), size)
			// Every byte of the headers, then a sample of the rest:
			// each decode reads the whole delta.
			step := max(1, len(payload)/256)
			for i := 0; i < len(payload); i += step {
				if i >= 32 {
					i += int(uint(i*2654435761) % uint(step))
					if i >= len(payload) {
						break
					}
				}
				refused(fmt.Sprintf("cut to %d bytes", i), payload[:i], size)
				for bit := range 8 {
					p := bytes.Clone(payload)
					p[i] ^= 1 << bit
					refused(fmt.Sprintf("bit %d of byte %d flipped", bit, i), p, size)
				}
			}
		})
	}
	refused := func(what string, p []byte) {
		t.Helper()
		if _, err := DecodeDelta(nil, base, p, 3); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%s: %v; want an error wrapping ErrMalformed", what, err)
		}
	}
	refused("empty", nil)
	refused("unknown kind", []byte{7, 'a', 'b', 'c'})
	refused("raw of the wrong size", []byte{deltaKindRaw, 'a'})
	refused("sub-chunk size 2^7", []byte{deltaKindSubChunks, 7, 0})
	refused("sub-chunk size 2^17", []byte{deltaKindSubChunks, 17, 0})
	refused("a literal of zero bytes", []byte{deltaKindSubChunks, 8, 1, 0<<1 | 1})
	refused("a copy of zero sub-chunks", []byte{deltaKindSubChunks, 8, 2, 0, 0})
	refused("a copy past the base", []byte{deltaKindSubChunks, 8, 4, 1 << 1, 0x80, 0x80, 0x04})
	refused("ops longer than the payload", []byte{deltaKindSubChunks, 8, 0xff, 0xff, 0xff, 0x7f, 1, 1})
	refused("no checksum", []byte{deltaKindSubChunks, 8, 1, 1<<1 | 1})
	refused("literals where the ops have none", []byte{deltaKindSubChunks, 8, 0, 0, 0, 0, 0, 'x'})
	refused("a frame without checksum", append(append([]byte{deltaKindSubChunks, defaultSubChunkLog2}, subChunkHeader(3)...), zstdFrame(t, []byte("abc"), false)...))
}

// subChunkHeader is what follows the kind and sub-chunk size of a delta
// whose ops make the whole target of size bytes one literal: the ops'
// length, the op and a checksum (of zeros, which the decoder checks last).
func subChunkHeader(size uint32) []byte {
	op := binary.AppendUvarint(nil, uint64(size)<<1|1)
	b := binary.AppendUvarint(nil, uint64(len(op)))
	return append(append(b, op...), 0, 0, 0, 0)
}

// zstdFrame compresses b into one frame, with a checksum or without.
func zstdFrame(t testing.TB, b []byte, checksum bool) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(checksum))
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(b, nil)
}

// TestDeltaWrongBase: a delta applied to another base than its own fails
// on the frame's checksum (or, one time in 2^32, gives bytes whose chunk
// IDs the caller refuses), unless the bytes it uses are the same in both.
func TestDeltaWrongBase(t *testing.T) {
	base, target, delta, pulled := deltaFixture(t)
	mid := bytes.Clone(base)
	mid[len(mid)/2] ^= 1
	others := []struct {
		name string
		base []byte
		// fails: the delta cannot decode to the target.
		fails bool
	}{
		{"another edit", editData(11, base, 5), false},
		{"a byte changed", mid, false},
		{"shorter", base[:len(base)/2], true},
		{"random", randomData(12, len(base)), true},
		{"empty", nil, true},
	}
	for _, other := range others {
		for kind, payload := range map[string][]byte{"push": delta, "pull": pulled} {
			t.Run(other.name+"/"+kind, func(t *testing.T) {
				got, err := DecodeDelta(nil, other.base, payload, uint32(len(target)))
				if err == nil && bytes.Equal(got, target) && !other.fails {
					t.Log("the delta uses none of the bytes that differ")
					return
				}
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("decoded %d bytes (equal to the target: %v), err %v; want an error wrapping ErrMalformed", len(got), bytes.Equal(got, target), err)
				}
			})
		}
	}
}

// checkedRLEBomb is rleBomb with the checksum flag set, so that it passes
// DecodeDelta's first look at the frame: its RLE blocks expand to size
// bytes, and the frame declares no content size.
func checkedRLEBomb(size int) []byte {
	b := rleBomb(size)
	b[4] |= zstdChecksumFlag
	return append(b, 0, 0, 0, 0)
}

// TestDeltaBomb: payloads that expand far beyond the size they claim are
// refused without holding more than that size.
func TestDeltaBomb(t *testing.T) {
	const claimed = 1 << 20
	base := textData(13, 64<<10)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	declared := enc.EncodeAll(make([]byte, 64<<20), nil)
	tests := []struct {
		name    string
		payload []byte
	}{
		{"1 GiB in RLE blocks as the literals", append(append([]byte{deltaKindSubChunks, defaultSubChunkLog2}, subChunkHeader(claimed)...), checkedRLEBomb(1<<30)...)},
		{"64 MiB of zeros, size declared, as the literals", append(append([]byte{deltaKindSubChunks, defaultSubChunkLog2}, subChunkHeader(claimed)...), declared...)},
		{"2^60 bytes of ops", append([]byte{deltaKindSubChunks, defaultSubChunkLog2}, binary.AppendUvarint(nil, 1<<60)...)},
		{"a copy of 2^60 sub-chunks", append([]byte{deltaKindSubChunks, defaultSubChunkLog2, 11}, binary.AppendUvarint(binary.AppendUvarint(nil, 1<<61), 0)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			out, err := DecodeDelta(nil, base, tt.payload, claimed)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeDelta = %d bytes, %v; want an error wrapping ErrMalformed", len(out), err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("refused: %v; allocated %d KiB", err, alloc>>10)
			// The output buffer, the literals before they move into
			// place, a dictionary of at most the base and the decoder's
			// own state.
			if alloc > 4*claimed+uint64(len(base)) {
				t.Errorf("allocated %d KiB for a target of %d KiB", alloc>>10, claimed>>10)
			}
		})
	}
}

func TestDeltaOptionsRefused(t *testing.T) {
	base := textData(14, 10<<10)
	sig, err := AppendSignature(nil, base)
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []DeltaOption{
		WithSubChunkSize(128), WithSubChunkSize(1000), WithSubChunkSize(MaxSubChunkSize * 2),
		WithSignatureHashLen(2), WithSignatureHashLen(9),
		WithDeltaLevel(0), WithDeltaLevel(23),
	} {
		if _, err := AppendSignature(nil, base, opt); err == nil {
			t.Error("AppendSignature took an invalid option")
		}
		if _, err := EncodeDelta(nil, base, sig, opt); err == nil {
			t.Error("EncodeDelta took an invalid option")
		}
	}
	if _, err := AppendSignature(nil, make([]byte, MaxDeltaBase+1)); err == nil {
		t.Error("AppendSignature took a base beyond MaxDeltaBase")
	}
	for _, sig := range [][]byte{nil, {1, 8, 4}, {2, 7, 4}, {2, 8, 2}, {2, 8, 4, 1, 2, 3}} {
		if _, err := EncodeDelta(nil, base, sig); !errors.Is(err, ErrMalformed) {
			t.Errorf("EncodeDelta with signature %x: %v; want an error wrapping ErrMalformed", sig, err)
		}
	}
}

// TestSubChunkSizes: sub-chunks are between a quarter and four times the
// nominal size and 1.25 times it on average, on data without structure.
func TestSubChunkSizes(t *testing.T) {
	data := randomData(15, 4<<20)
	for _, log2 := range []uint8{8, 10, 12} {
		nominal := 1 << log2
		var n, total int
		for s, e := range subChunks(data, log2) {
			size := e - s
			if e != len(data) && (size < nominal/4 || size > 4*nominal) {
				t.Fatalf("2^%d: sub-chunk of %d bytes", log2, size)
			}
			n++
			total += size
		}
		if total != len(data) {
			t.Fatalf("2^%d: sub-chunks cover %d of %d bytes", log2, total, len(data))
		}
		avg := float64(total) / float64(n) / float64(nominal)
		t.Logf("2^%d: %d sub-chunks, %.2f times nominal on average", log2, n, avg)
		if avg < 1.1 || avg > 1.4 {
			t.Errorf("2^%d: average %.2f times nominal, want about 1.25", log2, avg)
		}
	}
}

// TestSignatureGolden pins the signature format: sub-chunk boundaries and
// hashes that both ends must agree on across versions.
func TestSignatureGolden(t *testing.T) {
	var out strings.Builder
	for _, data := range []struct {
		name string
		b    []byte
	}{{"random", randomData(16, 1<<20)}, {"text", textData(17, 1<<20)}, {"tarlike", tarLikeData(18, 1<<20)}} {
		for _, size := range []int{MinSubChunkSize, 1 << 10, MaxSubChunkSize} {
			for _, hashLen := range []int{MinSignatureHashLen, MaxSignatureHashLen} {
				sig, err := AppendSignature(nil, data.b, WithSubChunkSize(size), WithSignatureHashLen(hashLen))
				if err != nil {
					t.Fatal(err)
				}
				sum := blake3.Sum256(sig)
				fmt.Fprintf(&out, "%s sub=%d hash=%d: %d bytes, blake3 %x\n", data.name, size, hashLen, len(sig), sum[:16])
			}
		}
	}
	golden(t, "delta_signature.golden", []byte(out.String()))
}

func TestReplacedBase(t *testing.T) {
	// refs makes a chunk list from letters: equal letters, equal chunks,
	// each of 10 bytes unless the size map says otherwise.
	refs := func(s string, sizes map[byte]uint32) []ChunkRef {
		out := make([]ChunkRef, len(s))
		for i := range len(s) {
			out[i].ID[0] = s[i]
			out[i].Size = 10
			if n, ok := sizes[s[i]]; ok {
				out[i].Size = n
			}
		}
		return out
	}
	rep := func(ns, ne, os, oe int) Replacement {
		return Replacement{New: ChunkSpan{ns, ne}, Old: ChunkSpan{os, oe}}
	}
	tests := []struct {
		name     string
		old, new string
		sizes    map[byte]uint32
		want     []Replacement
	}{
		{"unchanged", "abcde", "abcde", nil, nil},
		{"one changed", "abcde", "abXde", nil, []Replacement{rep(2, 3, 2, 3)}},
		{"two changed into three", "abcdef", "abXYZef", nil, []Replacement{rep(2, 5, 2, 4)}},
		{"changed at both ends", "abcde", "XbcdY", nil, []Replacement{rep(0, 1, 0, 1), rep(4, 5, 4, 5)}},
		{"deleted and changed", "abcdef", "abXf", nil, []Replacement{rep(2, 3, 2, 5)}},
		// An insertion replaced nothing: the old chunks at the same
		// bytes stand in.
		{"inserted", "abcd", "abXcd", nil, []Replacement{rep(2, 3, 2, 3)}},
		{"inserted at the end", "abcd", "abcdX", nil, []Replacement{rep(4, 5, 4, 4)}},
		{"nothing shared", "abc", "XYZW", nil, []Replacement{rep(0, 4, 0, 3)}},
		{"new file", "", "XY", nil, []Replacement{rep(0, 2, 0, 0)}},
		// c moved ahead of a: it is held, so in no run; the anchors are
		// a, b and d, so X replaced c.
		{"moved", "abcd", "cabXd", nil, []Replacement{rep(3, 4, 2, 3)}},
		// The base of 4×10 bytes is cut to the chunks nearest X's place
		// that fit 4×5.
		{"base capped", "abcdefg", "aXg", map[byte]uint32{'X': 5}, []Replacement{rep(1, 2, 1, 3)}},
		{"base capped to nothing", "abg", "aXg", map[byte]uint32{'X': 2}, []Replacement{rep(1, 2, 1, 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ReplacedBase(refs(tt.old, tt.sizes), refs(tt.new, tt.sizes))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("ReplacedBase(%q, %q) = %v, want %v", tt.old, tt.new, got, tt.want)
			}
		})
	}
}

func FuzzDecodeDelta(f *testing.F) {
	base, target, delta, pulled := deltaFixture(f)
	f.Add(base, delta, uint32(len(target)))
	f.Add(base, pulled, uint32(len(target)))
	f.Add(base, delta[:len(delta)/2], uint32(len(target)))
	f.Add(base[:1000], delta, uint32(len(target)))
	f.Add([]byte(nil), []byte{deltaKindRaw, 'a', 'b'}, uint32(2))
	f.Add(base, append(append([]byte{deltaKindSubChunks, defaultSubChunkLog2}, subChunkHeader(64<<10)...), checkedRLEBomb(4<<20)...), uint32(64<<10))
	f.Add(base, []byte{deltaKindSubChunks, 8, 1, 3, 2}, uint32(10))
	f.Fuzz(func(t *testing.T, base, payload []byte, rawSize uint32) {
		// Keep sizes small enough for many runs a second.
		size := rawSize % (1 << 20)
		out, err := DecodeDelta(nil, base, payload, size)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(out) != int(size) {
			t.Fatalf("decoded %d bytes, claimed %d", len(out), size)
		}
		if len(base) > MaxDeltaBase {
			return
		}
		// What decodes must survive its own round trip.
		sig, err := AppendSignature(nil, base)
		if err != nil {
			t.Fatal(err)
		}
		// The fastest level: the round trip is what matters here.
		again, err := EncodeDelta(nil, out, sig, WithDeltaLevel(1))
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeDelta(nil, base, again, size)
		if err != nil || !bytes.Equal(back, out) {
			t.Fatalf("re-encoded round trip: %v", err)
		}
	})
}

func BenchmarkDelta(b *testing.B) {
	base := tarLikeData(19, 4<<20)
	target := editData(20, base, 200)
	sig, err := AppendSignature(nil, base)
	if err != nil {
		b.Fatal(err)
	}
	delta, err := EncodeDelta(nil, target, sig)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Signature", func(b *testing.B) {
		b.SetBytes(int64(len(base)))
		b.ReportAllocs()
		var out []byte
		for b.Loop() {
			out, _ = AppendSignature(out[:0], base)
		}
	})
	for _, level := range []int{3, 7, 11} {
		b.Run(fmt.Sprintf("Encode/zstd=%d", level), func(b *testing.B) {
			b.SetBytes(int64(len(target)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				out, _ = EncodeDelta(out[:0], target, sig, WithDeltaLevel(level))
			}
			b.ReportMetric(float64(len(out)), "delta-bytes")
		})
	}
	b.Run("Decode", func(b *testing.B) {
		b.SetBytes(int64(len(target)))
		b.ReportAllocs()
		out := make([]byte, 0, len(target))
		for b.Loop() {
			if _, err := DecodeDelta(out, base, delta, uint32(len(target))); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func ExampleEncodeDelta() {
	old := []byte(strings.Repeat("The receiver has the old version of this text. ", 200))
	edited := bytes.Replace(old, []byte("old version"), []byte("new version"), 1)

	// The receiver describes what it has; the sender, which lacks it,
	// makes a delta against the description; the receiver applies it.
	sig, err := AppendSignature(nil, old)
	if err != nil {
		fmt.Println(err)
		return
	}
	delta, err := EncodeDelta(nil, edited, sig)
	if err != nil {
		fmt.Println(err)
		return
	}
	got, err := DecodeDelta(nil, old, delta, uint32(len(edited)))
	fmt.Println(bytes.Equal(got, edited), err, len(delta) < len(edited)/50)
	// Output: true <nil> true
}
