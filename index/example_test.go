package index_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// A server stores a chunk that arrived, records it in the index, and
// answers a later "which of these do you have?".
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "chunksync-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := index.OpenDirStore(filepath.Join(dir, "chunks"))
	if err != nil {
		log.Fatal(err)
	}
	db, err := index.OpenDB(filepath.Join(dir, "index.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// Every chunk store and lookup goes through the Collector, so that
	// garbage collection can run beside them.
	gc := index.NewCollector(db, store)

	raw := []byte("the same bytes, over and over: the same bytes, over and over")
	id := engine.SumChunk(raw)
	codec, payload := engine.Compress(nil, raw)
	// Put stores first, then indexes: the index never names a chunk the
	// store lacks.
	if err := gc.Put(ctx, id, codec, uint32(len(raw)), payload); err != nil {
		log.Fatal(err)
	}

	other := engine.SumChunk([]byte("never sent"))
	have, err := gc.Has(ctx, []engine.ChunkID{id, other})
	if err != nil {
		log.Fatal(err)
	}
	got, err := store.Get(ctx, id, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(have, string(got) == string(raw))
	// Output: [true false] true
}

// An interrupted push opens the same session again and learns what has
// arrived of it.
func ExampleDB_OpenSession() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "chunksync-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := index.OpenDB(filepath.Join(dir, "index.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	spec := engine.UploadSpec{
		Path: "images/vm.qcow2", Size: 3 << 20, Mode: 0o644, ModTime: time.Unix(1700000000, 0),
		Chunker: engine.ChunkerParams{Name: "fixed", Min: 1 << 20, Avg: 1 << 20, Max: 1 << 20},
	}
	now := time.Unix(1800000000, 0)
	first, _, err := db.OpenSession(ctx, "alice", spec, now)
	if err != nil {
		log.Fatal(err)
	}
	refs := []engine.ChunkRef{
		{ID: engine.SumChunk([]byte{1}), Size: 1 << 20},
		{ID: engine.SumChunk([]byte{2}), Size: 1 << 20},
		{ID: engine.SumChunk([]byte{3}), Size: 1 << 20},
	}
	if err := db.AddSessionChunks(ctx, first.ID, 0, refs, now); err != nil {
		log.Fatal(err)
	}
	// One chunk reached the store before the connection dropped.
	if err := db.AddChunk(ctx, refs[0].ID, index.ChunkInfo{Size: 1 << 20, Stored: 1 << 20}); err != nil {
		log.Fatal(err)
	}

	again, reattached, err := db.OpenSession(ctx, "alice", spec, now.Add(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	p, err := db.SessionProgress(ctx, again.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(reattached, again.ID == first.ID, p.Chunks, p.Missing())
	// Output: true true 3 2
}

// A server stores chunks and commits versions through a Collector, prunes
// the catalogue to the latest version of each file, and collects the
// chunks only the pruned versions named.
func ExampleCollector() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "chunksync-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := index.OpenDirStore(filepath.Join(dir, "chunks"))
	if err != nil {
		log.Fatal(err)
	}
	db, err := index.OpenDB(filepath.Join(dir, "index.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	gc := index.NewCollector(db, store)

	// Two versions of a file of one chunk each.
	for _, content := range []string{"first version", "second version"} {
		raw := []byte(content)
		id := engine.SumChunk(raw)
		codec, payload := engine.Compress(nil, raw)
		if err := gc.Put(ctx, id, codec, uint32(len(raw)), payload); err != nil {
			log.Fatal(err)
		}
		m := &engine.Manifest{
			Path: "notes.txt", Size: int64(len(raw)), Mode: 0o644,
			Chunker: engine.ChunkerParams{Name: "fixed", Min: 1 << 20, Avg: 1 << 20, Max: 1 << 20},
			Chunks:  []engine.ChunkRef{{ID: id, Size: uint32(len(raw))}},
			Digests: engine.Digests{BLAKE3: id},
		}
		if _, err := gc.AddVersion(ctx, m, "", time.Now()); err != nil {
			log.Fatal(err)
		}
	}
	pruned, err := db.PruneAll(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	st, err := gc.Collect(ctx, index.CollectOptions{})
	if err != nil {
		log.Fatal(err)
	}
	list, err := db.List(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(pruned, st.ChunksDeleted, st.RawBytesFreed, list[0].Path, list[0].Number)
	// Output: 1 1 13 notes.txt 2
}
