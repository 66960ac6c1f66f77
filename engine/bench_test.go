package engine

import (
	"bytes"
	"context"
	"crypto/md5"
	"io"
	"math/bits"
	"strconv"
	"sync"
	"testing"

	"github.com/restic/chunker"
)

// benchSize is the size of the benchmark inputs: large enough that the
// pipelines reach their steady state.
const benchSize = 256 << 20

var benchInputs = sync.OnceValue(func() map[string][]byte {
	return map[string][]byte{
		"random":  randomData(100, benchSize),
		"tarlike": tarLikeData(101, benchSize),
	}
})

// BenchmarkChunker cuts each input with every registered chunker, at its
// defaults, and with restic's chunker used directly (rabin's defaults) as
// the baseline.
func BenchmarkChunker(b *testing.B) {
	inputs := benchInputs()
	for _, k := range ChunkerKinds() {
		for _, name := range []string{"random", "tarlike"} {
			b.Run(k.Name+"/"+name, func(b *testing.B) {
				data := inputs[name]
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				var chunks int
				for b.Loop() {
					c, err := NewChunker(bytes.NewReader(data), k.Defaults)
					if err != nil {
						b.Fatal(err)
					}
					for chunks = 0; ; chunks++ {
						if _, err := c.Next(); err == io.EOF {
							break
						} else if err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(len(data))/float64(chunks), "B/chunk")
			})
		}
	}
	p := defaultParams(b, "rabin")
	for _, name := range []string{"random", "tarlike"} {
		b.Run("restic-raw/"+name, func(b *testing.B) {
			data := inputs[name]
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			buf := make([]byte, p.Max)
			var chunks int
			for b.Loop() {
				c := chunker.NewWithBoundaries(bytes.NewReader(data), chunker.Pol(p.Poly), uint(p.Min), uint(p.Max))
				c.SetAverageBits(bits.TrailingZeros32(p.Avg))
				for chunks = 0; ; chunks++ {
					if _, err := c.Next(buf); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(len(data))/float64(chunks), "B/chunk")
		})
	}
}

// BenchmarkScan runs the whole client-side stage (cut, chunk IDs, BLAKE3
// and MD5 of the stream) with every registered chunker; compare it with
// BenchmarkMD5 on the same data.
func BenchmarkScan(b *testing.B) {
	data := benchInputs()["random"]
	for _, k := range ChunkerKinds() {
		b.Run(k.Name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				_, err := Scan(context.Background(), bytes.NewReader(data), k.Defaults, func(c ScannedChunk) error {
					ReleaseChunkData(c.Data)
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMD5 is crypto/md5 alone on one core: the bound Scan aims for.
func BenchmarkMD5(b *testing.B) {
	data := benchInputs()["random"]
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		md5.Sum(data)
	}
}

// BenchmarkCompress compresses 256 KiB chunks of each input with the
// process's shared encoder, reporting the compressed fraction.
func BenchmarkCompress(b *testing.B) {
	inputs := benchInputs()
	for _, name := range []string{"random", "tarlike"} {
		b.Run(name, func(b *testing.B) {
			data := inputs[name][:64<<20]
			const chunk = 256 << 10
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			dst := make([]byte, 0, chunk+chunk/8)
			var out int
			for b.Loop() {
				out = 0
				for off := 0; off < len(data); off += chunk {
					var enc []byte
					_, enc = Compress(dst[:0], data[off:off+chunk])
					out += len(enc)
				}
			}
			b.ReportMetric(float64(out)/float64(len(data)), "ratio")
		})
	}
}

// BenchmarkDecompress decodes what BenchmarkCompress makes of 256 KiB
// chunks of the tar-like input (its random parts stay raw), as a server
// does for every chunk it reads back.
func BenchmarkDecompress(b *testing.B) {
	data := benchInputs()["tarlike"][:64<<20]
	const chunk = 256 << 10
	type payload struct {
		codec Codec
		b     []byte
	}
	var payloads []payload
	for off := 0; off < len(data); off += chunk {
		codec, enc := Compress(nil, data[off:off+chunk])
		payloads = append(payloads, payload{codec, enc})
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	out := make([]byte, 0, chunk)
	for b.Loop() {
		for _, p := range payloads {
			var err error
			if out, err = Decompress(out, p.codec, p.b, chunk); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSumChunk is the chunk ID alone, BLAKE3-256 of one chunk, at
// the sizes chunks come in: the hash's speed grows with the input, as it
// hashes more of the input's 1 KiB blocks side by side.
func BenchmarkSumChunk(b *testing.B) {
	data := benchInputs()["random"][:64<<20]
	for _, size := range []int{16 << 10, 256 << 10, 4 << 20} {
		b.Run(formatKiB(size), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				for off := 0; off+size <= len(data); off += size {
					SumChunk(data[off : off+size])
				}
			}
		})
	}
}

// formatKiB names a size in a benchmark: "256KiB".
func formatKiB(n int) string { return strconv.Itoa(n>>10) + "KiB" }

// BenchmarkGearCut finds gear cut points in memory, without the chunker's
// reads and copies: gearCut against the byte-at-a-time loop it replaces,
// with the default fastcdc's harder mask.
func BenchmarkGearCut(b *testing.B) {
	data := benchInputs()["random"][:64<<20]
	mask := gearMask(bits.TrailingZeros32(fastcdcDefaultAvg) + fastcdcNormalization)
	for _, f := range []struct {
		name string
		cut  func(b []byte, i int, fp, mask uint64) (int, uint64, bool)
	}{
		{"4-bytes", gearCut},
		{"bytewise", gearCutBytewise},
	} {
		b.Run(f.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				for rest := data; len(rest) > 0; {
					n, _, _ := f.cut(rest, 0, 0, mask)
					rest = rest[n:]
				}
			}
		})
	}
}
