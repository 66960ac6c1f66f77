package engine

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
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

// Assembly builds a file chunk by chunk, in order, as the chunks become
// available, for a receiver that assembles while a push still runs: when
// the manifest arrives, only the chunks not yet written are left to write.
// It writes each chunk to w and hashes it into the file's BLAKE3 and MD5,
// and hashes the chunk list it was given, so that Check can tell whether
// the content is exactly what a manifest describes, through exactly the
// manifest's chunks. It is not safe for concurrent use.
type Assembly struct {
	w      io.Writer
	b3     *blake3.Hasher
	md5    hash.Hash
	list   *blake3.Hasher // of the chunk list: each ID and size
	size   int64
	chunks int
}

// NewAssembly returns an Assembly that writes to w.
func NewAssembly(w io.Writer) *Assembly {
	return &Assembly{w: w, b3: blake3.New(), md5: md5.New(), list: blake3.New()}
}

// Add writes data, the raw bytes of chunk ref, the next chunk of the file.
// The caller has verified that data hashes to ref.ID.
func (a *Assembly) Add(ref ChunkRef, data []byte) error {
	if len(data) != int(ref.Size) {
		return fmt.Errorf("chunk %s: %w: %d bytes, the list says %d", ref.ID, ErrDigestMismatch, len(data), ref.Size)
	}
	if _, err := a.w.Write(data); err != nil {
		return err
	}
	a.b3.Write(data)
	a.md5.Write(data)
	hashRef(a.list, ref)
	a.size += int64(len(data))
	a.chunks++
	return nil
}

// Chunks returns the number of chunks added.
func (a *Assembly) Chunks() int { return a.chunks }

// Check reports whether the chunks added are m's chunk list and their
// content has m's size and digests; a mismatch wraps ErrDigestMismatch.
func (a *Assembly) Check(m *Manifest) error {
	if a.chunks != len(m.Chunks) {
		return fmt.Errorf("%s: %w: %d chunks assembled, manifest lists %d", m.Path, ErrDigestMismatch, a.chunks, len(m.Chunks))
	}
	list := blake3.New()
	for _, r := range m.Chunks {
		hashRef(list, r)
	}
	if !bytes.Equal(list.Sum(nil), a.list.Sum(nil)) {
		return fmt.Errorf("%s: %w: the chunks assembled are not the manifest's", m.Path, ErrDigestMismatch)
	}
	var got Digests
	a.b3.Sum(got.BLAKE3[:0])
	a.md5.Sum(got.MD5[:0])
	return checkDigests(m, a.size, got)
}

func hashRef(h *blake3.Hasher, r ChunkRef) {
	var b [len(ChunkID{}) + 4]byte
	copy(b[:], r.ID[:])
	binary.BigEndian.PutUint32(b[len(r.ID):], r.Size)
	h.Write(b[:])
}
