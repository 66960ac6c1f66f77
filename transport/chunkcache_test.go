package transport

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

func TestRawChunksCacheWhatIsReadAgainWithinBudget(t *testing.T) {
	ctx := context.Background()
	store, err := index.OpenDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := func(n int) (engine.ChunkID, []byte) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return engine.SumChunk(b), b
	}
	put := func(id engine.ChunkID, data []byte) {
		codec, payload := engine.Compress(nil, data)
		if err := store.Put(ctx, id, codec, uint32(len(data)), payload); err != nil {
			t.Fatal(err)
		}
	}
	c := newRawChunks(store, 3000)

	// A chunk only in the cache (the store never had it) proves a hit.
	onlyCached, onlyCachedData := chunk(1000)
	c.add(onlyCached, onlyCachedData)
	onlyCachedData[0] ^= 0xff // the cache holds a copy
	got, err := c.Get(ctx, onlyCached, nil)
	if err != nil || engine.SumChunk(got) != onlyCached {
		t.Fatalf("cached chunk: %v, hash matches %v", err, err == nil && engine.SumChunk(got) == onlyCached)
	}
	got[0] ^= 0xff // and hands out copies
	if again, _ := c.Get(ctx, onlyCached, nil); engine.SumChunk(again) != onlyCached {
		t.Fatal("a reader's change to what Get returned reached the cache")
	}

	// Get reads a miss from the store and leaves it out; read enters it.
	stored, storedData := chunk(1000)
	put(stored, storedData)
	if got, err := c.Get(ctx, stored, nil); err != nil || !bytes.Equal(got, storedData) {
		t.Fatalf("Get of a stored chunk: %v", err)
	}
	if _, ok := c.cached(stored, nil); ok {
		t.Fatal("Get entered a miss into the cache")
	}
	if got, err := c.read(ctx, stored, nil); err != nil || !bytes.Equal(got, storedData) {
		t.Fatalf("read of a stored chunk: %v", err)
	}
	if _, ok := c.cached(stored, nil); !ok {
		t.Fatal("read did not enter a miss into the cache")
	}

	// Over budget, the least recently used goes: onlyCached was used
	// before stored, so it goes first, and then the store has no copy.
	c.Get(ctx, stored, nil)
	third, thirdData := chunk(1500)
	c.add(third, thirdData)
	if c.size > c.budget {
		t.Fatalf("cache holds %d bytes, budget %d", c.size, c.budget)
	}
	if _, err := c.Get(ctx, onlyCached, nil); !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("least recently used chunk still served: %v", err)
	}
	for _, id := range []engine.ChunkID{stored, third} {
		if _, ok := c.cached(id, nil); !ok {
			t.Fatalf("chunk %s evicted out of order", id)
		}
	}

	// A chunk larger than the budget never enters, and a cache without
	// a budget holds nothing.
	big, bigData := chunk(4000)
	c.add(big, bigData)
	if _, ok := c.cached(big, nil); ok {
		t.Fatal("a chunk above the budget entered")
	}
	off := newRawChunks(store, -1)
	off.add(third, thirdData)
	if off.size != 0 || off.lru.Len() != 0 {
		t.Fatal("a cache without a budget holds a chunk")
	}
}
