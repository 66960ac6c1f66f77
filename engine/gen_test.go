package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// randomData returns n seeded pseudo-random bytes.
func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x636873))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// textData returns n seeded bytes of word salad: compressible, and without
// the zero runs that textData's callers want to avoid.
func textData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x74787420))
	words := []string{"chunk", "sync", "the", "of", "manifest", "server", "file", "a", "zstd", "rabin", "block", "data\n"}
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[rng.IntN(len(words))]...)
		b = append(b, ' ')
	}
	return b[:n]
}

// tarLikeData returns n seeded bytes shaped like a tar archive of a build
// tree: 512-byte headers that are mostly zeros, file bodies of text or
// random bytes padded with zeros to 512, and now and then a sparse file
// whose holes are long zero runs.
func tarLikeData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x746172))
	b := make([]byte, 0, n+1<<20)
	for i := 0; len(b) < n; i++ {
		hdr := make([]byte, 512)
		copy(hdr, fmt.Sprintf("dir/file-%d.o\x000000644\x00%011o", i, rng.IntN(1<<20)))
		b = append(b, hdr...)
		size := 1 + rng.IntN(256<<10)
		switch rng.IntN(32) {
		case 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11:
			b = append(b, textData(rng.Uint64(), size)...)
		case 12:
			// A sparse file: data, a hole of up to 4 MiB, data.
			b = append(b, randomData(rng.Uint64(), size/2)...)
			b = append(b, make([]byte, rng.IntN(4<<20))...)
			b = append(b, randomData(rng.Uint64(), size/2)...)
		default:
			b = append(b, randomData(rng.Uint64(), size)...)
		}
		b = append(b, make([]byte, (512-len(b)%512)%512)...)
	}
	return b[:n]
}

// sparseImageData returns n bytes like a mostly empty disk image: 1 MiB of
// random data at the start of every 16 MiB, zeros elsewhere.
func sparseImageData(seed uint64, n int) []byte {
	b := make([]byte, n)
	for off := 0; off < n; off += 16 << 20 {
		copy(b[off:min(off+1<<20, n)], randomData(seed+uint64(off), 1<<20))
	}
	return b
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x72)) }
