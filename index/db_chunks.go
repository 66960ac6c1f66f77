package index

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// HasChunks reports, for each id, whether the index records it. All ids are
// looked up in one read transaction.
func (db *DB) HasChunks(ctx context.Context, ids []engine.ChunkID) ([]bool, error) {
	have := make([]bool, len(ids))
	err := db.view(ctx, func(tx *bolt.Tx) error {
		// One cursor for the batch: Bucket.Get makes a cursor per call,
		// which costs three allocations per ID.
		c := tx.Bucket(bucketChunks).Cursor()
		for i := range ids {
			if i&0xfff == 0xfff {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			k, _ := c.Seek(ids[i][:])
			have[i] = bytes.Equal(k, ids[i][:])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up %d chunks: %w", len(ids), err)
	}
	return have, nil
}

// AddChunk records a chunk the store holds. Concurrent calls share one
// transaction; a chunk already recorded costs a lookup and no write.
func (db *DB) AddChunk(ctx context.Context, id engine.ChunkID, info ChunkInfo) error {
	if err := checkChunkInfo(info); err != nil {
		return fmt.Errorf("add chunk %s: %w", id, err)
	}
	var known bool
	if err := db.view(ctx, func(tx *bolt.Tx) error {
		known = tx.Bucket(bucketChunks).Get(id[:]) != nil
		return nil
	}); err != nil {
		return fmt.Errorf("add chunk %s: %w", id, err)
	}
	if known {
		return nil
	}
	key := id
	val := encodeChunkRecord(make([]byte, 0, chunkRecordLen), info)
	if err := db.update(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).Put(key[:], val)
	}); err != nil {
		return fmt.Errorf("add chunk %s: %w", id, err)
	}
	return nil
}

// Chunk returns what the index records of id, or ErrChunkMissing.
func (db *DB) Chunk(ctx context.Context, id engine.ChunkID) (ChunkInfo, error) {
	var info ChunkInfo
	err := db.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketChunks).Get(id[:])
		if v == nil {
			return ErrChunkMissing
		}
		var err error
		info, err = decodeChunkRecord(id[:], v)
		return err
	})
	if err != nil {
		return ChunkInfo{}, fmt.Errorf("chunk %s: %w", id, err)
	}
	return info, nil
}

// unmarkedChunks returns, in order, up to n recorded chunks that follow
// after (all recorded chunks when after is nil) and that marked lacks. It
// reads at most scanLimit records in its read transaction, so that no scan
// of a large index holds one transaction open; next is the last chunk it
// read, to pass as after, or nil once it reached the end of the index.
func (db *DB) unmarkedChunks(ctx context.Context, after *engine.ChunkID, marked map[engine.ChunkID]struct{}, n int) (ids []engine.ChunkID, next *engine.ChunkID, err error) {
	const scanLimit = 1 << 16
	err = db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketChunks).Cursor()
		var k []byte
		if after == nil {
			k, _ = c.First()
		} else if k, _ = c.Seek(after[:]); bytes.Equal(k, after[:]) {
			k, _ = c.Next()
		}
		var last engine.ChunkID
		for scanned := 0; k != nil; k, _ = c.Next() {
			if len(ids) == n || scanned == scanLimit {
				next = &last
				return nil
			}
			if len(k) != len(last) {
				return corruptRecord("chunk", k, fmt.Errorf("key of %d bytes, want %d", len(k), len(last)))
			}
			last = engine.ChunkID(k)
			scanned++
			if _, ok := marked[last]; !ok {
				ids = append(ids, last)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("find unreferenced chunks: %w", err)
	}
	return ids, next, nil
}

// removeChunks deletes the records of ids in one transaction and returns
// how many it deleted and the raw and stored sizes they recorded; ids not
// recorded are skipped. A record that fails to decode is deleted without
// counting its sizes. Only a Collector's sweep may call it, while it keeps
// Has and Put out: anyone else could remove a chunk that Has has just
// reported present.
func (db *DB) removeChunks(ctx context.Context, ids []engine.ChunkID) (n int, raw, stored int64, err error) {
	err = db.update(ctx, func(tx *bolt.Tx) error {
		n, raw, stored = 0, 0, 0
		b := tx.Bucket(bucketChunks)
		for _, id := range ids {
			v := b.Get(id[:])
			if v == nil {
				continue
			}
			if info, err := decodeChunkRecord(id[:], v); err == nil {
				raw += int64(info.Size)
				stored += int64(info.Stored)
			}
			if err := b.Delete(id[:]); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("remove %d chunks: %w", len(ids), err)
	}
	return n, raw, stored, nil
}
