package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// A fetch stream carries one request, a list of chunk IDs, and the server's
// answer: each chunk in the order asked, or a refusal that ends the stream.

// fetchGroupBytes bounds the raw bytes one fetch stream asks for, so that a
// stream that drops costs little to ask again.
const fetchGroupBytes = 16 << 20

// encodeFetchRequest lists the chunks a fetch stream asks for.
func encodeFetchRequest(refs []engine.ChunkRef) []byte {
	e := enc{b: make([]byte, 0, 8+len(refs)*32)}
	e.uvarint(uint64(len(refs)))
	for _, r := range refs {
		e.raw(r.ID[:])
	}
	return e.b
}

func decodeFetchRequest(b []byte) ([]engine.ChunkID, error) {
	d := dec{b: b}
	ids := make([]engine.ChunkID, d.count("chunk count", maxFetchRefs, 32))
	for i := range ids {
		ids[i] = d.id("chunk id")
	}
	return ids, d.end()
}

func (s *Server) serveFetch(ctx context.Context, p *peer, qs *quic.Stream) {
	defer qs.Close()
	st := s.stalling(qs)
	_, body, err := readLastFrame(st, 1+binary.MaxVarintLen64+maxFetchRefs*32)
	var ids []engine.ChunkID
	if err == nil {
		ids, err = decodeFetchRequest(body)
	}
	if err != nil {
		p.log.Warn("bad fetch request", "err", err)
		writeFetchRefusal(st, statusBadRequest, err.Error())
		return
	}
	hdr := make([]byte, 1+chunkHeaderLen)
	for _, id := range ids {
		err := s.sendChunk(ctx, st, id, hdr)
		if err != nil && ctx.Err() != nil {
			qs.CancelWrite(codeShutdown)
			return
		}
		if errors.Is(err, errStalled) {
			// The client stopped reading: nothing more reaches it.
			p.log.Warn("fetch stalled", "chunk", id, "err", err)
			qs.CancelWrite(codeProtocol)
			return
		}
		var se *quic.StreamError
		if errors.As(err, &se) && se.Remote {
			// The client stopped reading: it moved the stream to
			// another connection, or gave up.
			return
		}
		if err != nil {
			status := statusError
			if errors.Is(err, index.ErrChunkMissing) {
				status = statusNotFound
			}
			p.log.Warn("fetch refused", "chunk", id, "err", err)
			writeFetchRefusal(st, status, err.Error())
			return
		}
	}
}

// sendChunk writes one chunk of a fetch: status 0, the chunk header and the
// zstd-compressed (or raw, when it does not shrink) payload.
func (s *Server) sendChunk(ctx context.Context, st io.Writer, id engine.ChunkID, hdr []byte) error {
	info, err := s.db.Chunk(ctx, id)
	if err != nil {
		return fmt.Errorf("chunk %s: %w", id, err)
	}
	need := 2*int64(info.Size) + 1024
	release, err := s.reserve(ctx, need)
	if err != nil {
		return err
	}
	defer release()
	raw := getBuf(int(info.Size))
	defer bufPool.Put(raw)
	data, err := s.chunks.Get(ctx, id, (*raw)[:0])
	if err != nil {
		if !errors.Is(err, index.ErrChunkMissing) {
			err = s.storageError(err)
		}
		return fmt.Errorf("chunk %s: %w", id, err)
	}
	*raw = data
	out := getBuf(int(engine.MaxEncodedSize(engine.CodecZstd, uint32(len(data)))))
	defer bufPool.Put(out)
	codec, payload := engine.Compress((*out)[:0], data)
	hdr[0] = statusOK
	chunkHeader{ID: id, Codec: codec, RawSize: uint32(len(data)), PayloadLen: uint32(len(payload))}.put(hdr[1:])
	if _, err := st.Write(hdr); err != nil {
		return err
	}
	_, err = st.Write(payload)
	return err
}

// writeFetchRefusal ends a fetch stream with a status and a message.
func writeFetchRefusal(w io.Writer, status byte, msg string) {
	w.Write(appendMessage([]byte{status}, msg))
}

// Fetch asks the server for the chunks refs and calls got with the raw
// bytes of each, from several goroutines at once. Chunks are requested in
// groups over parallel streams; a group whose stream drops is asked for
// again (what arrived of it is not) on a new connection. Fetch implements
// engine.Fetcher.
func (c *Client) Fetch(ctx context.Context, refs []engine.ChunkRef, got func(engine.ChunkRef, []byte) error) error {
	// The server's stream limit is in its hello's reply; a pull given
	// its manifest sends no request before its chunks.
	if err := c.helloAnswered(ctx); err != nil {
		return err
	}
	groups := make(chan []engine.ChunkRef)
	// Groups small enough that every stream gets one: a request of a few
	// chunks on one stream would use one connection of several.
	streamCount := c.dataStreams()
	var total int64
	for _, r := range refs {
		total += int64(r.Size)
	}
	groupBytes := min(fetchGroupBytes, total/int64(streamCount))
	g, gctx := errgroup.WithContext(ctx)
	// The watcher may move the streams to the FEC port; it ends with the
	// streams.
	watch, stopWatch := context.WithCancel(gctx)
	defer stopWatch()
	g.Go(func() error {
		c.watchLoss(watch, true)
		return nil
	})
	g.Go(func() error {
		defer close(groups)
		for len(refs) > 0 {
			n, bytes := 0, int64(0)
			for n < len(refs) && n < maxFetchRefs && (n == 0 || bytes+int64(refs[n].Size) <= groupBytes) {
				bytes += int64(refs[n].Size)
				n++
			}
			select {
			case groups <- refs[:n]:
			case <-gctx.Done():
				return gctx.Err()
			}
			refs = refs[n:]
		}
		return nil
	})
	var streams sync.WaitGroup
	for i := range streamCount {
		streams.Add(1)
		g.Go(func() error {
			defer streams.Done()
			for group := range groups {
				if err := c.fetchGroup(gctx, i, group, got); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		streams.Wait()
		stopWatch()
		return nil
	})
	return g.Wait()
}

// fetchGroup fetches one group on a stream of the connection of fetch
// stream i's slot, re-dialling and asking again for what did not arrive
// when the connection drops, and going on on the new slot when the
// streams move to the FEC port.
//
// A fetch spreads its streams over every slot, also in automatic mode: the
// chunks come from the server, whose losses the client only learns by
// asking, and on a clean link eight connections fetch as fast as one
// (bench transfer on loopback through the emulator: 955 and 1010 Mbit/s
// against 952 and 842).
func (c *Client) fetchGroup(ctx context.Context, i int, refs []engine.ChunkRef, got func(engine.ChunkRef, []byte) error) error {
	for attempt := 0; ; attempt++ {
		placed := c.placement()
		slot := c.fetchSlot(i)
		conn, gen, err := c.connection(ctx, slot, true)
		if err != nil {
			return err
		}
		n, err := c.fetchStream(ctx, conn, refs, got, placed, func() bool { return c.fetchSlot(i) != slot })
		refs = refs[n:]
		if err == nil {
			return nil
		}
		if errors.Is(err, errStreamMoved) {
			attempt = 0
			continue
		}
		var de *deliveryError
		if errors.As(err, &de) {
			return fmt.Errorf("fetch: %w", de.err)
		}
		if !isConnError(conn, err) || ctx.Err() != nil || (attempt >= 8 && n == 0) {
			return fmt.Errorf("fetch: %w", err)
		}
		if n > 0 {
			attempt = 0
		}
		c.broken(slot, gen, err)
	}
}

// deliveryError is fetchStream's error when the caller's got refused a
// chunk: the connection is fine and asking again cannot help. (A full
// disk's syscall.Errno is a net.Error, which isConnError would take for a
// dropped connection.)
type deliveryError struct{ err error }

func (e *deliveryError) Error() string { return e.err.Error() }
func (e *deliveryError) Unwrap() error { return e.err }

// errStreamMoved is fetchStream's error when it stopped because its
// stream moved to another slot.
var errStreamMoved = errors.New("stream moved to another connection")

// fetchStream asks for refs on one new stream and returns how many arrived.
// It stops at once, with errStreamMoved, when placed ends and moved says
// the stream has moved to another slot.
func (c *Client) fetchStream(ctx context.Context, conn *quic.Conn, refs []engine.ChunkRef, got func(engine.ChunkRef, []byte) error, placed context.Context, moved func() bool) (int, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(codeShutdown)
		st.CancelWrite(codeShutdown)
	})
	defer stop()
	var movedAway atomic.Bool
	stopMove := context.AfterFunc(placed, func() {
		if moved() {
			movedAway.Store(true)
			st.CancelRead(codeShutdown)
		}
	})
	defer stopMove()
	if _, err := st.Write(appendFrame([]byte{streamFetch}, 0, encodeFetchRequest(refs))); err != nil {
		return 0, err
	}
	if err := st.Close(); err != nil {
		return 0, err
	}
	var hdr [1 + chunkHeaderLen]byte
	r := c.readLimited(ctx, st)
	for i, ref := range refs {
		data, release, err := readFetchedChunk(r, ref, hdr[:])
		if err != nil && movedAway.Load() && ctx.Err() == nil {
			return i, errStreamMoved
		}
		if err != nil {
			st.CancelRead(codeShutdown)
			return i, err
		}
		err = got(ref, data)
		release()
		if err != nil {
			st.CancelRead(codeShutdown)
			return i, &deliveryError{err}
		}
	}
	return len(refs), nil
}

// readFetchedChunk reads one answer of a fetch stream and decodes the chunk
// it carries. It checks every length against ref before allocating; the
// caller hashes the bytes.
func readFetchedChunk(r io.Reader, ref engine.ChunkRef, hdr []byte) ([]byte, func(), error) {
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return nil, nil, err
	}
	if status := hdr[0]; status != statusOK {
		return nil, nil, readRefusal(r, status, "refusal")
	}
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return nil, nil, err
	}
	h, err := decodeChunkHeader(hdr[1:])
	if err != nil {
		return nil, nil, err
	}
	if h.ID != ref.ID || h.RawSize != ref.Size {
		return nil, nil, fmt.Errorf("%w: server sent chunk %s of %d bytes, asked for %s of %d", errMalformed, h.ID, h.RawSize, ref.ID, ref.Size)
	}
	payload := getBuf(int(h.PayloadLen))
	if _, err := io.ReadFull(r, *payload); err != nil {
		bufPool.Put(payload)
		return nil, nil, err
	}
	if h.Codec == engine.CodecRaw {
		return *payload, func() { bufPool.Put(payload) }, nil
	}
	defer bufPool.Put(payload)
	out := getBuf(int(h.RawSize))
	data, err := engine.Decompress((*out)[:0], h.Codec, *payload, int(h.RawSize))
	if err != nil {
		bufPool.Put(out)
		return nil, nil, fmt.Errorf("chunk %s: %w", h.ID, err)
	}
	return data, func() { bufPool.Put(out) }, nil
}
