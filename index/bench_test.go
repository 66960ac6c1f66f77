package index

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// benchKeys is the size of the chunk index the benchmarks run against.
const benchKeys = 1_000_000

// seededIDs returns n chunk IDs drawn from seed.
func seededIDs(seed uint64, n int) []engine.ChunkID {
	r := rand.New(rand.NewPCG(seed, 0xbe))
	ids := make([]engine.ChunkID, n)
	for i := range ids {
		for j := 0; j < len(ids[i]); j += 8 {
			binary.LittleEndian.PutUint64(ids[i][j:], r.Uint64())
		}
	}
	return ids
}

// loadedDB opens a new DB holding benchKeys chunks, loaded in large
// transactions rather than through AddChunk, and returns it with their IDs.
func loadedDB(b *testing.B) (*DB, []engine.ChunkID) {
	b.Helper()
	db, err := OpenDB(filepath.Join(b.TempDir(), "index.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	ids := seededIDs(1, benchKeys)
	val := encodeChunkRecord(nil, ChunkInfo{Size: 1 << 20, Stored: 700 << 10, Codec: engine.CodecZstd})
	for start := 0; start < len(ids); start += 50_000 {
		if err := db.bolt.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketChunks)
			for i := start; i < min(start+50_000, len(ids)); i++ {
				if err := bk.Put(ids[i][:], val); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	return db, ids
}

// BenchmarkHasChunks asks about batches of IDs, half of them recorded, in
// an index of a million chunks. One op is one batch.
func BenchmarkHasChunks(b *testing.B) {
	db, stored := loadedDB(b)
	absent := seededIDs(2, benchKeys)
	r := rand.New(rand.NewPCG(3, 3))
	for _, batch := range []int{100, 1000, 10000} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			query := make([]engine.ChunkID, 64*batch)
			for i := range query {
				if r.IntN(2) == 0 {
					query[i] = stored[r.IntN(len(stored))]
				} else {
					query[i] = absent[r.IntN(len(absent))]
				}
			}
			b.SetBytes(int64(batch * len(engine.ChunkID{})))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				off := (i % 64) * batch
				if _, err := db.HasChunks(b.Context(), query[off:off+batch]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/id")
		})
	}
}

// BenchmarkAddChunk records new chunks, each durable before AddChunk
// returns, in an index of a million chunks: from one goroutine, and from
// eight as the upload streams of a server would. A last case adds chunks
// already recorded.
func BenchmarkAddChunk(b *testing.B) {
	db, stored := loadedDB(b)
	info := ChunkInfo{Size: 1 << 20, Stored: 700 << 10, Codec: engine.CodecZstd}
	var next atomic.Uint64
	fresh := func() engine.ChunkID {
		// Chunk IDs are uniformly spread, so new ones land all over the tree.
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], next.Add(1))
		return engine.SumChunk(n[:])
	}
	b.Run("goroutines=1", func(b *testing.B) {
		b.SetBytes(int64(len(engine.ChunkID{})))
		b.ReportAllocs()
		for b.Loop() {
			if err := db.AddChunk(b.Context(), fresh(), info); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("goroutines=8", func(b *testing.B) {
		b.SetBytes(int64(len(engine.ChunkID{})))
		b.ReportAllocs()
		procs := runtime.GOMAXPROCS(0)
		b.SetParallelism((8 + procs - 1) / procs)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := db.AddChunk(b.Context(), fresh(), info); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("recorded", func(b *testing.B) {
		b.SetBytes(int64(len(engine.ChunkID{})))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := db.AddChunk(b.Context(), stored[i%len(stored)], info); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// benchChunks returns n chunks of size bytes, compressible to about half.
func benchChunks(n, size int) (ids []engine.ChunkID, raws [][]byte) {
	r := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	for range n {
		raw := make([]byte, size)
		for i := 0; i < size; i += 8 {
			if i%16 == 0 {
				binary.LittleEndian.PutUint64(raw[i:], r.Uint64())
			}
		}
		ids = append(ids, engine.SumChunk(raw))
		raws = append(raws, raw)
	}
	return ids, raws
}

// BenchmarkDirStorePut stores new chunks, each durable before Put returns
// (two fsyncs: the file and its directory), from one goroutine and from
// eight.
func BenchmarkDirStorePut(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		ids, raws := benchChunks(64, size)
		payloads := make([][]byte, len(raws))
		codecs := make([]engine.Codec, len(raws))
		for i, raw := range raws {
			codecs[i], payloads[i] = engine.Compress(nil, raw)
		}
		for _, goroutines := range []int{1, 8} {
			b.Run("size="+strconv.Itoa(size>>10)+"KiB/goroutines="+strconv.Itoa(goroutines), func(b *testing.B) {
				s, err := OpenDirStore(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				put := func() error {
					i := int(next.Add(1) - 1)
					j := i % len(ids)
					// Change the ID per call so that every Put writes a
					// file: the store trusts the caller's ID.
					id := ids[j]
					binary.LittleEndian.PutUint64(id[8:], uint64(i))
					return s.Put(b.Context(), id, codecs[j], uint32(size), payloads[j])
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				if goroutines == 1 {
					for range b.N {
						if err := put(); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				procs := runtime.GOMAXPROCS(0)
				b.SetParallelism((goroutines + procs - 1) / procs)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := put(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkDirStoreGet reads, decodes and verifies stored chunks kept raw
// and kept zstd-compressed.
func BenchmarkDirStoreGet(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		ids, raws := benchChunks(16, size)
		for _, codec := range []engine.Codec{engine.CodecRaw, engine.CodecZstd} {
			s, err := OpenDirStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			for i, raw := range raws {
				c, payload := engine.Compress(nil, raw)
				if codec == engine.CodecRaw {
					c, payload = engine.CodecRaw, raw
				}
				if err := s.Put(b.Context(), ids[i], c, uint32(size), payload); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("size="+strconv.Itoa(size>>10)+"KiB/"+codec.String(), func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				var buf []byte
				i := 0
				for b.Loop() {
					if buf, err = s.Get(b.Context(), ids[i%len(ids)], buf); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// BenchmarkOpenDirStore opens a store of 100,000 chunk files: the sweep for
// stale temporary files reads every directory.
func BenchmarkOpenDirStore(b *testing.B) {
	const files = 100_000
	s, err := OpenDirStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var hdr [chunkHeaderSize]byte
	content := appendChunkHeader(hdr[:0], chunkHeader{codec: engine.CodecRaw, rawSize: 1})
	content = append(content, 'x')
	for _, id := range seededIDs(9, files) {
		// Written without fsync: only the directory tree matters here.
		dir, name := s.chunkPath(id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(name, content, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("chunks=100000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := OpenDirStore(s.Dir()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStats counts an index of a million chunks, as a status command
// does.
func BenchmarkStats(b *testing.B) {
	db, _ := loadedDB(b)
	b.ReportAllocs()
	for b.Loop() {
		st, err := db.Stats(b.Context())
		if err != nil || st.Chunks != benchKeys {
			b.Fatalf("Stats = %+v, %v", st, err)
		}
	}
}
