package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// codecDelta marks, on a data stream, a delta (engine.EncodedDelta) instead
// of a chunk: the header's ID is the first target's, its raw size the
// targets' total, and the payload a delta bundle. It never reaches a store.
const codecDelta engine.Codec = 2

// maxBundleOverhead bounds what a delta bundle carries besides the delta:
// its base version, spans and targets.
const maxBundleOverhead = 3*binary.MaxVarintLen64 + engine.MaxDeltaTargets*(2*binary.MaxVarintLen64+32+binary.MaxVarintLen64)

// maxDeltaPayload bounds a delta bundle's payload for targets of rawSize
// bytes: a delta is at worst the raw targets and a byte.
func maxDeltaPayload(rawSize uint32) int64 {
	return engine.MaxEncodedSize(engine.CodecZstd, rawSize) + maxBundleOverhead
}

func encodeSpans(e *enc, spans []engine.ChunkSpan) {
	e.uvarint(uint64(len(spans)))
	for _, s := range spans {
		e.uvarint(uint64(s.Start))
		e.uvarint(uint64(s.Len()))
	}
}

// decodeSpans reads spans of a base of n chunks: each non-empty and inside it.
func decodeSpans(d *dec, n int) []engine.ChunkSpan {
	spans := make([]engine.ChunkSpan, d.count("spans", engine.MaxDeltaTargets, 2))
	for i := range spans {
		start, count := d.uvarint("span start"), d.uvarint("span length")
		if d.err == nil && (count == 0 || start > uint64(n) || count > uint64(n)-start) {
			d.fail("span of %d chunks from %d outside a base of %d", count, start, n)
		}
		spans[i] = engine.ChunkSpan{Start: int(start), End: int(start + count)}
	}
	return spans
}

// Base implements engine.DeltaUpload; it is known once the session is
// open.
func (u *upload) Base() *engine.Manifest {
	u.openMu.Lock()
	defer u.openMu.Unlock()
	return u.base
}

// Signature implements engine.DeltaUpload.
func (u *upload) Signature(ctx context.Context, spans []engine.ChunkSpan) ([]byte, error) {
	e := enc{}
	e.string(u.id)
	e.uvarint(u.baseVersion)
	encodeSpans(&e, spans)
	return u.c.call(ctx, opSignature, e.b)
}

// SendDelta implements engine.DeltaUpload: the delta travels on the data
// streams as one entry, acknowledged once every target is stored.
func (u *upload) SendDelta(ctx context.Context, d engine.EncodedDelta) error {
	if len(d.Targets) == 0 {
		return fmt.Errorf("delta without targets")
	}
	e := enc{b: make([]byte, 0, len(d.Payload)+64+len(d.Targets)*37)}
	e.uvarint(u.baseVersion)
	encodeSpans(&e, d.Base)
	encodeRefs(&e, d.Targets)
	e.raw(d.Payload)
	var size uint32
	for _, t := range d.Targets {
		size += t.Size
	}
	return u.Send(ctx, engine.EncodedChunk{ID: d.Targets[0].ID, Codec: codecDelta, RawSize: size, Payload: e.b, Release: d.Release})
}

// baseBytes reads the chunks of spans of version n of path, concatenated,
// at most engine.MaxDeltaBase bytes of them.
func (s *Server) baseBytes(ctx context.Context, path string, n uint64, spans []engine.ChunkSpan) ([]byte, error) {
	m, err := s.base(ctx, path, n)
	if err != nil {
		return nil, err
	}
	var size int64
	for _, sp := range spans {
		if sp.End > len(m.Chunks) {
			return nil, refuse(statusBadRequest, "base span %d..%d outside version %d of %s (%d chunks)", sp.Start, sp.End, n, path, len(m.Chunks))
		}
		for _, r := range m.Chunks[sp.Start:sp.End] {
			size += int64(r.Size)
		}
	}
	if size > engine.MaxDeltaBase {
		return nil, refuse(statusBadRequest, "base of %d bytes exceeds %d", size, engine.MaxDeltaBase)
	}
	base := make([]byte, 0, size)
	for _, sp := range spans {
		if base, err = s.readChunks(ctx, base, m.Chunks[sp.Start:sp.End]); err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
	}
	return base, nil
}

// signature answers a request for the signature of base chunks.
func (s *Server) signature(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	d := dec{b: body}
	id := d.string("session", 64)
	n := d.uvarint("base version")
	sess, err := s.sessionOwned(ctx, p, id)
	if err != nil {
		return nil, err
	}
	m, err := s.base(ctx, sess.Spec.Path, n)
	if err != nil {
		return nil, err
	}
	spans := decodeSpans(&d, len(m.Chunks))
	if err := d.end(); err != nil {
		return nil, err
	}
	release, err := s.reserve(ctx, engine.MaxDeltaBase)
	if err != nil {
		return nil, err
	}
	defer release()
	base, err := s.baseBytes(ctx, sess.Spec.Path, n, spans)
	if err != nil {
		return nil, err
	}
	return engine.AppendSignature(nil, base)
}

// receiveDelta reads a delta bundle, rebuilds its targets from the base
// chunks it names, verifies each target against its ID and stores it.
func (s *Server) receiveDelta(ctx context.Context, st io.Reader, path string, h chunkHeader) error {
	need := int64(h.PayloadLen) + 2*int64(h.RawSize) + engine.MaxDeltaBase
	release, err := s.reserve(ctx, need)
	if err != nil {
		return err
	}
	defer release()
	payload := make([]byte, h.PayloadLen)
	if _, err := io.ReadFull(st, payload); err != nil {
		return fmt.Errorf("delta %s: %w", h.ID, err)
	}
	d := dec{b: payload}
	n := d.uvarint("base version")
	m, err := s.base(ctx, path, n)
	if err != nil {
		return err
	}
	spans := decodeSpans(&d, len(m.Chunks))
	targets := decodeRefs(&d, engine.MaxDeltaTargets)
	if d.err != nil {
		return d.err
	}
	var size uint32
	for _, t := range targets {
		size += t.Size
	}
	if len(targets) == 0 || targets[0].ID != h.ID || size != h.RawSize {
		return fmt.Errorf("%w: delta %s: targets of %d bytes do not match its header", errMalformed, h.ID, size)
	}
	base, err := s.baseBytes(ctx, path, n, spans)
	if err != nil {
		return err
	}
	raw, err := engine.DecodeDelta(make([]byte, 0, size), base, d.b, size)
	if err != nil {
		return fmt.Errorf("delta %s: %w", h.ID, err)
	}
	// The targets are verified, compressed and stored durably on all
	// cores at once: their fsyncs overlap.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, t := range targets {
		data := raw[:t.Size]
		raw = raw[t.Size:]
		g.Go(func() error {
			if err := engine.VerifyChunk(t.ID, data); err != nil {
				return err
			}
			buf := getBuf(int(engine.MaxEncodedSize(engine.CodecZstd, t.Size)))
			defer bufPool.Put(buf)
			codec, enc := engine.Compress((*buf)[:0], data)
			if err := s.gc.Put(gctx, t.ID, codec, t.Size, enc); err != nil {
				return s.storageError(err)
			}
			s.chunks.add(t.ID, data)
			return nil
		})
	}
	return g.Wait()
}

// FetchDelta implements engine.DeltaFetcher: the server makes the delta
// when it holds every base chunk, and answers ok false when it does not.
func (c *Client) FetchDelta(ctx context.Context, targets, base []engine.ChunkRef) ([]byte, bool, error) {
	e := enc{b: make([]byte, 0, 16+37*(len(targets)+len(base)))}
	encodeRefs(&e, targets)
	encodeRefs(&e, base)
	reply, err := c.call(ctx, opFetchDelta, e.b)
	if err != nil {
		return nil, false, fmt.Errorf("fetch delta: %w", err)
	}
	d := dec{b: reply}
	ok := d.byte("made") == 1
	var size uint32
	for _, t := range targets {
		size += t.Size
	}
	payload := d.bytes("delta", int(maxDeltaPayload(size)))
	if err := d.end(); err != nil {
		return nil, false, fmt.Errorf("fetch delta: %w", err)
	}
	return payload, ok, nil
}

// sumSizes adds up the sizes of refs, refusing more than limit bytes.
func sumSizes(refs []engine.ChunkRef, limit int64, what string) (int64, error) {
	var n int64
	for _, r := range refs {
		n += int64(r.Size)
	}
	if n > limit {
		return n, refuse(statusBadRequest, "%s of %d bytes exceeds %d", what, n, limit)
	}
	return n, nil
}

// readChunks appends the raw bytes of refs, in order, to dst, reading (and
// so decompressing and verifying) on all cores at once. They are read
// through the cache of raw chunks, and stay there: a delta's base is read
// for its signature and again for every part of the delta.
func (s *Server) readChunks(ctx context.Context, dst []byte, refs []engine.ChunkRef) ([]byte, error) {
	start := len(dst)
	var total int
	for _, r := range refs {
		total += int(r.Size)
	}
	dst = slices.Grow(dst, total)[:start+total]
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	off := start
	for _, r := range refs {
		// Each chunk decodes into its own place, capped so that a chunk
		// of another size cannot spill into its neighbour's.
		place := dst[off : off : off+int(r.Size)]
		off += int(r.Size)
		g.Go(func() error {
			data, err := s.chunks.read(gctx, r.ID, place)
			if err != nil {
				return fmt.Errorf("chunk %s: %w", r.ID, err)
			}
			if len(data) != int(r.Size) {
				return refuse(statusBadRequest, "chunk %s has %d bytes, not %d", r.ID, len(data), r.Size)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return dst, nil
}

// fetchDelta answers a request for chunks as a delta against chunks the
// client holds: made when the server holds those too, against a signature
// of them with the longest hashes (it never travels, and with 8 bytes a
// false match, which would cost the client a fetch of the chunks in
// full, is out of reach). Its reservation of the memory budget lasts until
// the caller releases it, once the reply is sent.
func (s *Server) fetchDelta(ctx context.Context, body []byte) (reply []byte, release func(), err error) {
	d := dec{b: body}
	targets := decodeRefs(&d, engine.MaxDeltaTargets)
	base := decodeRefs(&d, engine.MaxDeltaTargets)
	if err := d.end(); err != nil {
		return nil, nil, err
	}
	tsize, err := sumSizes(targets, engine.MaxDeltaSize, "delta target")
	if err != nil {
		return nil, nil, err
	}
	bsize, err := sumSizes(base, engine.MaxDeltaBase, "delta base")
	if err != nil {
		return nil, nil, err
	}
	// The base and the target, the signature and the table made of it
	// (under an eighth of the base), the delta and the reply holding it
	// (each about the target's size at most), until the reply is sent.
	held, err := s.reserve(ctx, bsize+bsize/8+3*tsize+1024)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			held()
		}
	}()
	e := enc{}
	baseBytes, err := s.readChunks(ctx, make([]byte, 0, bsize), base)
	if errors.Is(err, index.ErrChunkMissing) {
		e.bool(false)
		e.bytes(nil)
		return e.b, held, nil
	}
	if err != nil {
		return nil, nil, err
	}
	target, err := s.readChunks(ctx, make([]byte, 0, tsize), targets)
	if err != nil {
		return nil, nil, err
	}
	sig, err := engine.AppendSignature(nil, baseBytes, engine.WithSignatureHashLen(engine.MaxSignatureHashLen))
	if err != nil {
		return nil, nil, err
	}
	payload, err := engine.EncodeDelta(nil, target, sig)
	if err != nil {
		return nil, nil, err
	}
	e.bool(true)
	e.bytes(payload)
	return e.b, held, nil
}
