package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestCompressChoosesCodec(t *testing.T) {
	tests := []struct {
		name string
		src  []byte
		want Codec
	}{
		{"empty", nil, CodecRaw},
		{"random", randomData(1, 256<<10), CodecRaw},
		{"text", textData(2, 256<<10), CodecZstd},
		{"zeros", make([]byte, 1<<20), CodecZstd},
		{"one byte", []byte{42}, CodecRaw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep me")
			codec, out := Compress(append([]byte(nil), prefix...), tt.src)
			if codec != tt.want {
				t.Errorf("codec %v, want %v", codec, tt.want)
			}
			if !bytes.HasPrefix(out, prefix) {
				t.Fatal("Compress did not append to dst")
			}
			payload := out[len(prefix):]
			if codec == CodecRaw && !bytes.Equal(payload, tt.src) {
				t.Error("raw payload differs from the source")
			}
			if codec == CodecZstd && len(payload) >= len(tt.src) {
				t.Errorf("zstd payload of %d bytes for %d bytes of source", len(payload), len(tt.src))
			}
			// Round trip, into a nil, a short and a large enough dst.
			for _, dst := range [][]byte{nil, make([]byte, 10), make([]byte, 0, len(tt.src)+100)} {
				got, err := Decompress(dst, codec, payload, len(tt.src))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tt.src) {
					t.Fatal("round trip differs")
				}
			}
		})
	}
}

// TestMaxEncodedSize checks the zstd bound against what encoders produce
// for data that does not compress: the process encoder, and encoders with
// the smallest window, whose blocks are smallest, with and without a
// checksum.
func TestMaxEncodedSize(t *testing.T) {
	if got := MaxEncodedSize(CodecRaw, 1000); got != 1000 {
		t.Errorf("MaxEncodedSize(raw, 1000) = %d", got)
	}
	if got := MaxEncodedSize(Codec(9), 1000); got >= 0 {
		t.Errorf("MaxEncodedSize(codec 9, 1000) = %d, want negative", got)
	}
	process, _ := zstdCodec()
	small := func(crc bool) *zstd.Encoder {
		e, err := zstd.NewWriter(nil, zstd.WithWindowSize(zstd.MinWindowSize), zstd.WithEncoderCRC(crc), zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	encoders := map[string]*zstd.Encoder{"process": process, "1 KiB window": small(false), "1 KiB window, CRC": small(true)}
	for _, n := range []int{0, 1, 255, 256, 1023, 1024, 1025, 65791, 65792, 128 << 10, 128<<10 + 1, 1 << 20, MaxChunkSize} {
		src := randomData(uint64(n), n)
		bound := MaxEncodedSize(CodecZstd, uint32(n))
		for name, e := range encoders {
			if got := len(e.EncodeAll(src, nil)); int64(got) > bound {
				t.Errorf("%s encoder: %d random bytes encode to %d, above the bound %d", name, n, got, bound)
			}
			if got := e.MaxEncodedSize(n); int64(got) > bound {
				t.Errorf("%s encoder: MaxEncodedSize(%d) = %d, above the bound %d", name, n, got, bound)
			}
		}
		// libzstd's ZSTD_COMPRESSBOUND.
		lib := n + n>>8
		if n < 128<<10 {
			lib += (128<<10 - n) >> 11
		}
		if int64(lib) > bound {
			t.Errorf("ZSTD_compressBound(%d) = %d, above the bound %d", n, lib, bound)
		}
	}
}

func TestDecompressRefuses(t *testing.T) {
	text := textData(3, 64<<10)
	_, zpayload := Compress(nil, text)
	tests := []struct {
		name    string
		codec   Codec
		payload []byte
		rawSize int
	}{
		{"raw too short", CodecRaw, text, len(text) + 1},
		{"raw too long", CodecRaw, text, len(text) - 1},
		{"zstd claims more", CodecZstd, zpayload, len(text) + 1},
		{"zstd claims less", CodecZstd, zpayload, len(text) - 1},
		{"zstd claims zero", CodecZstd, zpayload, 0},
		{"zstd truncated", CodecZstd, zpayload[:len(zpayload)/2], len(text)},
		{"zstd garbage", CodecZstd, []byte("not a zstd frame at all"), 23},
		{"zstd trailing garbage", CodecZstd, append(append([]byte(nil), zpayload...), 1, 2, 3), len(text)},
		{"negative size", CodecRaw, nil, -1},
		{"size over limit", CodecRaw, make([]byte, MaxChunkSize+1), MaxChunkSize + 1},
		{"unknown codec", Codec(7), text, len(text)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Decompress(nil, tt.codec, tt.payload, tt.rawSize)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decompress = %d bytes, %v; want an error wrapping ErrMalformed", len(out), err)
			}
		})
	}
}

// rleBomb returns a zstd frame of a few KiB that expands to size zero bytes:
// RLE blocks of 128 KiB, 4 bytes each, with no content size declared, so
// that only the output limit can stop it.
func rleBomb(size int) []byte {
	const block = 128 << 10
	b := binary.LittleEndian.AppendUint32(nil, 0xFD2FB528)
	b = append(b, 0x00)  // no content size, not single segment, no checksum
	b = append(b, 10<<3) // window 1 MiB
	for left := size; left > 0; left -= block {
		n := min(left, block)
		hdr := uint32(1<<1 | n<<3) // RLE block of n bytes
		if left <= block {
			hdr |= 1 // last block
		}
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return b
}

// TestDecompressBomb feeds frames that expand far beyond the size they claim:
// Decompress must refuse them without holding more than the claimed size.
func TestDecompressBomb(t *testing.T) {
	const claimed = 1 << 20
	if got, err := Decompress(nil, CodecZstd, rleBomb(claimed), claimed); err != nil || len(got) != claimed {
		t.Fatalf("honest RLE frame: %d bytes, %v", len(got), err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	declared := enc.EncodeAll(make([]byte, 64<<20), nil)
	tests := []struct {
		name    string
		payload []byte
	}{
		{"1 GiB in RLE blocks, size not declared", rleBomb(1 << 30)},
		{"64 MiB of zeros, size declared", declared},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			out, err := Decompress(nil, CodecZstd, tt.payload, claimed)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%d-byte frame: Decompress = %d bytes, %v; want an error wrapping ErrMalformed", len(tt.payload), len(out), err)
			}
			t.Logf("%d-byte frame refused: %v; allocated %d KiB", len(tt.payload), err, (after.TotalAlloc-before.TotalAlloc)>>10)
			// The output buffer plus the decoder's own state.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 3*claimed {
				t.Errorf("allocated %d KiB for a chunk of %d KiB", alloc>>10, claimed>>10)
			}
		})
	}
}

func FuzzDecompress(f *testing.F) {
	text := textData(4, 32<<10)
	_, z := Compress(nil, text)
	f.Add(uint8(CodecZstd), z, uint32(len(text)))
	f.Add(uint8(CodecZstd), z[:len(z)-3], uint32(len(text)))
	f.Add(uint8(CodecRaw), text[:100], uint32(100))
	f.Add(uint8(CodecZstd), rleBomb(4<<20), uint32(64<<10))
	f.Add(uint8(CodecZstd), []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}, uint32(0))
	f.Add(uint8(9), []byte("x"), uint32(1))
	f.Fuzz(func(t *testing.T, codec uint8, payload []byte, rawSize uint32) {
		// Keep sizes small enough for many runs a second.
		size := int(rawSize % (1 << 20))
		out, err := Decompress(nil, Codec(codec), payload, size)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(out) != size {
			t.Fatalf("decoded %d bytes, claimed %d", len(out), size)
		}
		if Codec(codec) == CodecRaw && !bytes.Equal(out, payload) {
			t.Fatal("raw payload changed")
		}
		// What decodes must survive its own round trip.
		c, enc := Compress(nil, out)
		back, err := Decompress(make([]byte, 3), c, enc, len(out))
		if err != nil || !bytes.Equal(back, out) {
			t.Fatalf("re-compressed round trip: %v", err)
		}
	})
}
