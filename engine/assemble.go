package engine

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// ErrDigestMismatch is returned when assembled content does not match the
// size or digests its manifest promises.
var ErrDigestMismatch = errors.New("file content does not match manifest")

// ChunkSource gives verified chunk bytes; index.Store is one.
type ChunkSource interface {
	// Get appends the raw bytes of chunk id to dst[:0], after checking that
	// they hash to id.
	Get(ctx context.Context, id ChunkID, dst []byte) ([]byte, error)
}

// assembleReadahead is how many chunks Assemble fetches ahead of the writer.
const assembleReadahead = 4

// assemblePool recycles chunk buffers between Assemble's fetchers and its
// MD5 goroutine, the last stage to use them.
var assemblePool = sync.Pool{New: func() any { return new([]byte) }}

// AssembleMemory bounds the chunk bytes Assemble holds at once for m: the
// chunks being fetched ahead, those waiting for MD5, and the one the
// writer and the one MD5 work on, each at most m's largest chunk.
func AssembleMemory(m *Manifest) int64 {
	var largest uint32
	for _, r := range m.Chunks {
		largest = max(largest, r.Size)
	}
	return (2*assembleReadahead + 2) * int64(largest)
}

// Assemble writes the content that m describes to w, fetching chunks from src
// a few at a time in parallel, and checks the result against m's size and
// digests. MD5, which cannot be split, runs on a goroutine of its own beside
// the writer and BLAKE3. A mismatch returns an error wrapping ErrDigestMismatch; w then
// holds content that must not be used.
func Assemble(ctx context.Context, m *Manifest, src ChunkSource, w io.Writer) error {
	g, gctx := errgroup.WithContext(ctx)
	type fetched struct {
		buf *[]byte
		err error
	}
	pending := make(chan chan fetched, assembleReadahead)
	g.Go(func() error {
		defer close(pending)
		for _, ref := range m.Chunks {
			slot := make(chan fetched, 1)
			select {
			case pending <- slot:
			case <-gctx.Done():
				return gctx.Err()
			}
			g.Go(func() error {
				buf := assemblePool.Get().(*[]byte)
				data, err := src.Get(gctx, ref.ID, (*buf)[:0])
				if err == nil && len(data) != int(ref.Size) {
					err = fmt.Errorf("chunk %s: %w: %d bytes, manifest says %d", ref.ID, ErrDigestMismatch, len(data), ref.Size)
				}
				*buf = data
				slot <- fetched{buf, err}
				return nil
			})
		}
		return nil
	})
	toMD5 := make(chan *[]byte, assembleReadahead)
	var got Digests
	md5Done := make(chan struct{})
	g.Go(func() error {
		defer close(md5Done)
		sum := md5.New()
		for buf := range toMD5 {
			sum.Write(*buf)
			assemblePool.Put(buf)
		}
		sum.Sum(got.MD5[:0])
		return nil
	})
	g.Go(func() error {
		b3 := blake3.New()
		var size int64
		err := func() error {
			defer close(toMD5)
			for slot := range pending {
				var f fetched
				select {
				case f = <-slot:
				case <-gctx.Done():
					return gctx.Err()
				}
				if f.err != nil {
					return f.err
				}
				data := *f.buf
				b3.Write(data)
				size += int64(len(data))
				if _, err := w.Write(data); err != nil {
					return fmt.Errorf("write %s: %w", m.Path, err)
				}
				toMD5 <- f.buf
			}
			return nil
		}()
		if err != nil {
			return err
		}
		<-md5Done
		b3.Sum(got.BLAKE3[:0])
		return checkDigests(m, size, got)
	})
	return g.Wait()
}
