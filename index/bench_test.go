package index

import (
	"encoding/binary"
	"math/rand/v2"
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
