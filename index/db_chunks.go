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
