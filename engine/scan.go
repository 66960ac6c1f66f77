package engine

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"
)

// ScannedChunk is one chunk of a scanned stream.
type ScannedChunk struct {
	// Index numbers the chunks of the stream from 0.
	Index int
	// Offset is where the chunk starts in the stream.
	Offset int64
	// Ref is the chunk's ID and size.
	Ref ChunkRef
	// Data holds the chunk's bytes; it belongs to the package's chunk pool
	// and goes back with ReleaseChunkData.
	Data []byte
}

var chunkDataPool sync.Pool

// ReleaseChunkData hands the Data of a ScannedChunk back to the chunk pool.
// It may be called from any goroutine, once per chunk; b must not be used
// afterwards.
func ReleaseChunkData(b []byte) {
	if cap(b) == 0 {
		return
	}
	b = b[:0]
	chunkDataPool.Put(&b)
}

func getChunkData(n int) []byte {
	if p, ok := chunkDataPool.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n)
}

// Scan cuts r with p and calls emit for every chunk in order from one
// goroutine. Data is a buffer from the package's chunk pool owned by emit,
// which must hand it back with ReleaseChunkData when done (possibly from
// another goroutine). Scan returns the whole-stream digests.
func Scan(ctx context.Context, r io.Reader, p ChunkerParams, emit func(ScannedChunk) error) (Digests, error) {
	c, err := NewChunker(r, p)
	if err != nil {
		return Digests{}, fmt.Errorf("scan: %w", err)
	}
	b3 := blake3.New()
	sum := md5.New()
	var off int64
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return Digests{}, err
		}
		data, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Digests{}, fmt.Errorf("scan: %w", err)
		}
		b3.Write(data)
		sum.Write(data)
		buf := getChunkData(len(data))
		copy(buf, data)
		ref := ChunkRef{ID: SumChunk(buf), Size: uint32(len(buf))}
		if err := emit(ScannedChunk{Index: i, Offset: off, Ref: ref, Data: buf}); err != nil {
			return Digests{}, err
		}
		off += int64(len(data))
	}
	var d Digests
	b3.Sum(d.BLAKE3[:0])
	sum.Sum(d.MD5[:0])
	return d, nil
}
