package engine

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"

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

// Assemble writes the content that m describes to w, fetching chunks from src
// a few at a time in parallel, and checks the result against m's size and
// digests. A mismatch returns an error wrapping ErrDigestMismatch; w then
// holds content that must not be used.
func Assemble(ctx context.Context, m *Manifest, src ChunkSource, w io.Writer) error {
	g, gctx := errgroup.WithContext(ctx)
	type fetched struct {
		data []byte
		err  error
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
				data, err := src.Get(gctx, ref.ID, nil)
				if err == nil && len(data) != int(ref.Size) {
					err = fmt.Errorf("chunk %s: %w: %d bytes, manifest says %d", ref.ID, ErrDigestMismatch, len(data), ref.Size)
				}
				slot <- fetched{data, err}
				return nil
			})
		}
		return nil
	})
	g.Go(func() error {
		b3 := blake3.New()
		sum := md5.New()
		var size int64
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
			b3.Write(f.data)
			sum.Write(f.data)
			size += int64(len(f.data))
			if _, err := w.Write(f.data); err != nil {
				return fmt.Errorf("write %s: %w", m.Path, err)
			}
		}
		var got Digests
		b3.Sum(got.BLAKE3[:0])
		sum.Sum(got.MD5[:0])
		switch {
		case size != m.Size:
			return fmt.Errorf("%s: %w: %d bytes, manifest says %d", m.Path, ErrDigestMismatch, size, m.Size)
		case got.BLAKE3 != m.Digests.BLAKE3:
			return fmt.Errorf("%s: %w: BLAKE3 %x, manifest says %x", m.Path, ErrDigestMismatch, got.BLAKE3, m.Digests.BLAKE3)
		case got.MD5 != m.Digests.MD5:
			return fmt.Errorf("%s: %w: MD5 %x, manifest says %x", m.Path, ErrDigestMismatch, got.MD5, m.Digests.MD5)
		}
		return nil
	})
	return g.Wait()
}
