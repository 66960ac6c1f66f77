package transport

import (
	"container/list"
	"context"
	"sync"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// defaultChunkCache is the default ServerConfig.ChunkCache.
const defaultChunkCache = 64 << 20

// rawChunks reads chunks from the store through a cache of the raw bytes
// of the chunks the server has just received, rebuilt or read for a delta.
// A re-sync reads the same chunks several times within a second: the base
// a signature is made of again for every part of the delta that follows
// it, and the chunks the delta rebuilt when the commit assembles the file.
// Each read from the store decompresses and hashes the chunk again; on a
// push of a changed x/tools release that was a third of the server's CPU
// time. A cached chunk was verified when it entered, and its bytes cannot
// change, so a hit is as good as a read; the cache only ever costs memory,
// at most its budget, least recently used out first.
type rawChunks struct {
	store *index.DirStore

	mu     sync.Mutex
	budget int64
	size   int64
	lru    list.List // of *rawChunk, most recently used at the front
	byID   map[engine.ChunkID]*list.Element
}

type rawChunk struct {
	id   engine.ChunkID
	data []byte
}

func newRawChunks(store *index.DirStore, budget int64) *rawChunks {
	return &rawChunks{store: store, budget: budget, byID: make(map[engine.ChunkID]*list.Element)}
}

// Get implements engine.ChunkSource: the cached bytes of id appended to
// dst[:0], else the store's. A miss does not enter the cache: the reader
// that takes every chunk of a file once, a commit, would only push out
// what others will read again.
func (c *rawChunks) Get(ctx context.Context, id engine.ChunkID, dst []byte) ([]byte, error) {
	if data, ok := c.cached(id, dst); ok {
		return data, nil
	}
	return c.store.Get(ctx, id, dst)
}

// read is Get for a reader that expects to read id again soon: a miss
// enters the cache.
func (c *rawChunks) read(ctx context.Context, id engine.ChunkID, dst []byte) ([]byte, error) {
	if data, ok := c.cached(id, dst); ok {
		return data, nil
	}
	data, err := c.store.Get(ctx, id, dst)
	if err == nil {
		c.add(id, data)
	}
	return data, err
}

func (c *rawChunks) cached(id engine.ChunkID, dst []byte) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return append(dst[:0], e.Value.(*rawChunk).data...), true
}

// add enters a copy of data, the verified raw bytes of chunk id.
func (c *rawChunks) add(id engine.ChunkID, data []byte) {
	n := int64(len(data))
	if n > c.budget {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		c.lru.MoveToFront(e)
		return
	}
	for c.size+n > c.budget {
		old := c.lru.Remove(c.lru.Back()).(*rawChunk)
		delete(c.byID, old.id)
		c.size -= int64(len(old.data))
	}
	c.byID[id] = c.lru.PushFront(&rawChunk{id: id, data: append([]byte(nil), data...)})
	c.size += n
}
