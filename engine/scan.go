package engine

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// ScannedChunk is one chunk of a scanned stream.
type ScannedChunk struct {
	// Index numbers the chunks of the stream from 0.
	Index int
	// Offset is where the chunk starts in the stream.
	Offset int64
	// Ref is the chunk's ID and size.
	Ref ChunkRef
	// Data holds the chunk's bytes. It comes from the package's chunk
	// pool and goes back there with ReleaseChunkData.
	Data []byte
}

const (
	// scanBlockSize is the unit in which Scan reads and hands data to its
	// hashing and cutting goroutines.
	scanBlockSize = 1 << 20
	// scanBlocks bounds the blocks in flight: the read-ahead that lets the
	// slowest stage (MD5 or cutting) run without waiting for the others.
	scanBlocks = 8
	// scanQueue bounds the chunks cut but not yet handed to emit.
	scanQueue = 8
)

// scanBlock is one block of input, shared by the MD5, BLAKE3 and cutting
// goroutines; the last of them to finish with it hands it back.
type scanBlock struct {
	buf  []byte
	n    int
	refs atomic.Int32
}

var scanBlockPool = sync.Pool{New: func() any { return &scanBlock{buf: make([]byte, scanBlockSize)} }}

// Scan cuts r with p and calls emit for every chunk in order from one
// goroutine. Data is a buffer from the package's chunk pool owned by emit,
// which must hand it back with ReleaseChunkData when done (possibly from
// another goroutine). Scan returns the whole-stream digests.
//
// Reading, MD5, BLAKE3, cutting and chunk hashing run on goroutines of
// their own, so that MD5, which cannot be split, sets the pace rather than
// the sum of the stages. Memory does not depend on the stream's size: 8 MiB
// of read-ahead, the chunker's buffer and up to 10 chunks between the
// chunker and emit, plus whatever emit holds on to.
// A failing emit stops the scan and Scan returns its error unchanged; when
// ctx ends Scan returns ctx.Err(). Either way every goroutine has ended when
// Scan returns, though a Read that blocks delays that until it returns.
func Scan(ctx context.Context, r io.Reader, p ChunkerParams, emit func(ScannedChunk) error) (Digests, error) {
	if err := ValidateParams(p); err != nil {
		return Digests{}, fmt.Errorf("scan: %w", err)
	}
	return scan(ctx, r, func(r io.Reader) Chunker { return registry[p.Name].New(r, p) }, emit)
}

// scan is Scan with the chunker made by newChunker, for chunkers that need
// more than their parameters (an adaptive chunker's size controller).
func scan(ctx context.Context, r io.Reader, newChunker func(io.Reader) Chunker, emit func(ScannedChunk) error) (Digests, error) {
	g, gctx := errgroup.WithContext(ctx)
	// sem holds a token for every block in flight; the last stage done
	// with a block takes the token back.
	sem := make(chan struct{}, scanBlocks)
	release := func(b *scanBlock) {
		if b.refs.Add(-1) == 0 {
			scanBlockPool.Put(b)
			<-sem
		}
	}
	// The sends below never block: a channel holds at most the blocks in
	// flight. The reader closes them at the end of the stream only; after
	// a failure the consumers stop on gctx, so none of them can mistake a
	// failed read for the end.
	toMD5 := make(chan *scanBlock, scanBlocks)
	toBLAKE3 := make(chan *scanBlock, scanBlocks)
	toCut := make(chan *scanBlock, scanBlocks)
	g.Go(func() error {
		for {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			b := scanBlockPool.Get().(*scanBlock)
			n, err := io.ReadFull(r, b.buf)
			if n > 0 {
				b.n = n
				b.refs.Store(3)
				toMD5 <- b
				toBLAKE3 <- b
				toCut <- b
			} else {
				scanBlockPool.Put(b)
				<-sem
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				close(toMD5)
				close(toBLAKE3)
				close(toCut)
				return nil
			}
			if err != nil {
				return fmt.Errorf("scan: read: %w", err)
			}
		}
	})

	var digests Digests
	g.Go(func() error {
		h := md5.New()
		err := consumeBlocks(gctx, toMD5, release, func(b []byte) { h.Write(b) })
		h.Sum(digests.MD5[:0])
		return err
	})
	g.Go(func() error {
		h := blake3.New()
		err := consumeBlocks(gctx, toBLAKE3, release, func(b []byte) { h.Write(b) })
		h.Sum(digests.BLAKE3[:0])
		return err
	})

	chunks := make(chan ScannedChunk, scanQueue)
	g.Go(func() error {
		br := &blockReader{ctx: gctx, blocks: toCut, release: release}
		defer br.close()
		c := newChunker(br)
		var off int64
		for i := 0; ; i++ {
			data, err := c.Next()
			if errors.Is(err, io.EOF) {
				close(chunks)
				return nil
			}
			if err != nil {
				return fmt.Errorf("scan: cut chunk %d at offset %d: %w", i, off, err)
			}
			buf := getChunkData(len(data))
			copy(buf, data)
			select {
			case chunks <- ScannedChunk{Index: i, Offset: off, Ref: ChunkRef{Size: uint32(len(buf))}, Data: buf}:
			case <-gctx.Done():
				ReleaseChunkData(buf)
				return gctx.Err()
			}
			off += int64(len(data))
		}
	})
	g.Go(func() error {
		for {
			select {
			case c, ok := <-chunks:
				if !ok {
					return nil
				}
				if err := gctx.Err(); err != nil {
					ReleaseChunkData(c.Data)
					return err
				}
				c.Ref.ID = SumChunk(c.Data)
				if err := emit(c); err != nil {
					return err
				}
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	if err := g.Wait(); err != nil {
		drainChunks(chunks)
		if ctx.Err() != nil {
			return Digests{}, ctx.Err()
		}
		return Digests{}, err
	}
	return digests, nil
}

// drainChunks hands back to the pool the chunks cut but never emitted.
func drainChunks(chunks <-chan ScannedChunk) {
	for {
		select {
		case c, ok := <-chunks:
			if !ok {
				return
			}
			ReleaseChunkData(c.Data)
		default:
			return
		}
	}
}

// consumeBlocks feeds every block of ch to use until ch is closed.
func consumeBlocks(ctx context.Context, ch <-chan *scanBlock, release func(*scanBlock), use func([]byte)) error {
	for {
		select {
		case b, ok := <-ch:
			if !ok {
				return nil
			}
			use(b.buf[:b.n])
			release(b)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// blockReader is the io.Reader the chunker in Scan reads: the blocks of a
// channel, each released once copied out.
type blockReader struct {
	ctx     context.Context
	blocks  <-chan *scanBlock
	release func(*scanBlock)
	cur     *scanBlock
	pos     int
}

func (r *blockReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.pos == r.cur.n {
		r.close()
		select {
		case b, ok := <-r.blocks:
			if !ok {
				return 0, io.EOF
			}
			r.cur, r.pos = b, 0
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	n := copy(p, r.cur.buf[r.pos:r.cur.n])
	r.pos += n
	return n, nil
}

func (r *blockReader) close() {
	if r.cur != nil {
		r.release(r.cur)
		r.cur = nil
	}
}

// The chunk pool keeps buffers in power-of-two size classes from 4 KiB to
// MaxChunkSize. sync.Pool holds pointers; sliceHeaders recycles the *[]byte
// so that handing a buffer back does not allocate.
const (
	minChunkClass = 12
	maxChunkClass = 24
)

var (
	chunkPools   [maxChunkClass - minChunkClass + 1]sync.Pool
	sliceHeaders = sync.Pool{New: func() any { return new([]byte) }}
)

// getChunkData returns a pooled buffer of n bytes, 0 < n <= MaxChunkSize.
func getChunkData(n int) []byte {
	class := max(bits.Len(uint(n-1)), minChunkClass)
	if p, _ := chunkPools[class-minChunkClass].Get().(*[]byte); p != nil {
		b := (*p)[:n]
		*p = nil
		sliceHeaders.Put(p)
		return b
	}
	return make([]byte, n, 1<<class)
}

// ReleaseChunkData hands the Data of a ScannedChunk back to the chunk pool.
// It may be called from any goroutine, exactly once per chunk; b must not be
// used afterwards. Slices that did not come from the pool are left to the
// garbage collector.
func ReleaseChunkData(b []byte) {
	c := cap(b)
	if c < 1<<minChunkClass || c > 1<<maxChunkClass || c&(c-1) != 0 {
		return
	}
	p := sliceHeaders.Get().(*[]byte)
	*p = b[:0]
	chunkPools[bits.TrailingZeros(uint(c))-minChunkClass].Put(p)
}
