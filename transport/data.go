package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
)

// chunkHeader precedes every chunk on a data stream.
type chunkHeader struct {
	ID         engine.ChunkID
	Codec      engine.Codec
	RawSize    uint32
	PayloadLen uint32
}

func (h chunkHeader) put(b []byte) {
	copy(b, h.ID[:])
	b[32] = byte(h.Codec)
	binary.BigEndian.PutUint32(b[33:], h.RawSize)
	binary.BigEndian.PutUint32(b[37:], h.PayloadLen)
}

func decodeChunkHeader(b []byte) (chunkHeader, error) {
	var h chunkHeader
	copy(h.ID[:], b[:32])
	h.Codec = engine.Codec(b[32])
	h.RawSize = binary.BigEndian.Uint32(b[33:])
	h.PayloadLen = binary.BigEndian.Uint32(b[37:])
	switch {
	case h.Codec != engine.CodecRaw && h.Codec != engine.CodecZstd && h.Codec != codecDelta:
		return h, fmt.Errorf("%w: chunk %s: unknown codec %d", errMalformed, h.ID, h.Codec)
	case h.RawSize == 0 || h.RawSize > engine.MaxChunkSize:
		return h, fmt.Errorf("%w: chunk %s: size %d outside 1..%d", errMalformed, h.ID, h.RawSize, engine.MaxChunkSize)
	case h.Codec == engine.CodecRaw && h.PayloadLen != h.RawSize:
		return h, fmt.Errorf("%w: raw chunk %s: payload %d bytes, size %d", errMalformed, h.ID, h.PayloadLen, h.RawSize)
	case h.Codec == codecDelta && int64(h.PayloadLen) > maxDeltaPayload(h.RawSize):
		return h, fmt.Errorf("%w: delta %s: payload of %d bytes for %d raw bytes", errMalformed, h.ID, h.PayloadLen, h.RawSize)
	case h.PayloadLen == 0 || (h.Codec != codecDelta && int64(h.PayloadLen) > engine.MaxEncodedSize(h.Codec, h.RawSize)):
		return h, fmt.Errorf("%w: chunk %s: payload of %d bytes for %d raw bytes", errMalformed, h.ID, h.PayloadLen, h.RawSize)
	}
	return h, nil
}

// bufPool recycles the buffers of chunks being received and sent.
var bufPool sync.Pool

func getBuf(n int) *[]byte {
	if b, ok := bufPool.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func (s *Server) serveData(ctx context.Context, p *peer, qs *quic.Stream) {
	defer qs.Close()
	st := s.stalling(qs)
	fail := func(code int, err error) {
		p.log.Warn("data stream refused", "err", err)
		qs.CancelRead(quic.StreamErrorCode(code))
	}
	_, body, err := readFrame(st, 64)
	if err != nil {
		fail(codeProtocol, err)
		return
	}
	sess, err := s.sessionOwned(ctx, p, string(body))
	if err != nil {
		writeFrame(st, statusNotFound, []byte(err.Error()))
		fail(codeProtocol, err)
		return
	}
	p.log.Debug("data stream", "session", sess.ID)
	if err := writeFrame(st, statusOK, nil); err != nil {
		return
	}
	var hdr [chunkHeaderLen]byte
	for {
		st.idle()
		if _, err := io.ReadFull(qs, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) {
				p.log.Info("data stream ended", "session", sess.ID, "err", err)
			}
			return
		}
		h, err := decodeChunkHeader(hdr[:])
		switch {
		case err == nil && h.Codec == codecDelta:
			err = s.receiveDelta(ctx, st, sess.Spec.Path, h)
		case err == nil:
			err = s.receiveChunk(ctx, st, h)
		}
		if err != nil && ctx.Err() != nil {
			// Shutting down: no refusal, the client sends the chunk
			// again to the next server on a new connection.
			qs.CancelWrite(codeShutdown)
			fail(codeShutdown, err)
			return
		}
		if err != nil {
			// Tell the client why before the stream goes: a refused
			// chunk, a bad frame or a store that cannot write.
			st.Write(encodeAck(h.ID, ackStatus(err), err.Error()))
			fail(codeProtocol, err)
			return
		}
		s.asm.stored(sess.ID)
		s.arrivals.stored()
		if _, err := st.Write(encodeAck(h.ID, statusOK, "")); err != nil {
			if errors.Is(err, errStalled) {
				// The client stopped reading its acknowledgements.
				qs.CancelWrite(codeProtocol)
				fail(codeProtocol, err)
			}
			return
		}
	}
}

func ackStatus(err error) byte {
	switch {
	case errors.Is(err, engine.ErrChunkMismatch):
		return statusMismatch
	case errors.Is(err, errMalformed), errors.Is(err, engine.ErrMalformed):
		return statusBadRequest
	}
	return statusError
}

// encodeAck answers one chunk: its ID and a status, and for anything but
// statusOK a message of at most maxMessageLen bytes.
func encodeAck(id engine.ChunkID, status byte, msg string) []byte {
	b := make([]byte, ackLen, ackLen+2+maxMessageLen)
	copy(b, id[:])
	b[32] = status
	if status != statusOK {
		b = appendMessage(b, msg)
	}
	return b
}

// appendMessage appends a refusal's message: u16 length and at most
// maxMessageLen bytes of msg.
func appendMessage(b []byte, msg string) []byte {
	msg = truncate(msg, maxMessageLen)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// readRefusal reads the message that follows a status other than
// statusOK and returns the refusal as a *ServerError; what, for a message
// above the limit, names the kind of answer.
func readRefusal(r io.Reader, status byte, what string) error {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > maxMessageLen {
		return fmt.Errorf("%w: %s message of %d bytes", errMalformed, what, l)
	}
	msg := make([]byte, l)
	if _, err := io.ReadFull(r, msg); err != nil {
		return err
	}
	return &ServerError{Status: status, Msg: string(msg)}
}

// readAck reads one acknowledgement; a refusal comes back as a *ServerError.
func readAck(r io.Reader) (engine.ChunkID, error) {
	var b [ackLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return engine.ChunkID{}, err
	}
	id := engine.ChunkID(b[:32])
	if b[32] == statusOK {
		return id, nil
	}
	return id, readRefusal(r, b[32], "acknowledgement")
}

// receiveChunk reads one chunk's payload, verifies it and stores it
// durably.
func (s *Server) receiveChunk(ctx context.Context, st io.Reader, h chunkHeader) error {
	need := int64(h.PayloadLen) + int64(h.RawSize)
	release, err := s.reserve(ctx, need)
	if err != nil {
		return err
	}
	defer release()
	payload := getBuf(int(h.PayloadLen))
	defer bufPool.Put(payload)
	if _, err := io.ReadFull(st, *payload); err != nil {
		return fmt.Errorf("chunk %s: %w", h.ID, err)
	}
	raw := *payload
	if h.Codec != engine.CodecRaw {
		out := getBuf(int(h.RawSize))
		defer bufPool.Put(out)
		dec, err := engine.Decompress((*out)[:0], h.Codec, *payload, int(h.RawSize))
		if err != nil {
			return fmt.Errorf("chunk %s: %w", h.ID, err)
		}
		raw = dec
	}
	if err := engine.VerifyChunk(h.ID, raw); err != nil {
		return err
	}
	if err := s.gc.Put(ctx, h.ID, h.Codec, h.RawSize, *payload); err != nil {
		return s.storageError(err)
	}
	s.chunks.add(h.ID, raw)
	return nil
}

// storageError logs a failure of the server's own storage in full and
// returns what the client may know of it: the system's reason (such as "no
// space left on device"), without the server's paths.
func (s *Server) storageError(err error) error {
	s.log.Error("storage failed", "err", err)
	reason := "storage error"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		reason = errno.Error()
	}
	if errors.Is(err, syscall.ENOSPC) {
		// The files assembled during pushes hold space the chunks need;
		// their commits assemble them once the chunks are stored.
		s.asm.dropAll()
	}
	return fmt.Errorf("server cannot store the chunk: %s", reason)
}
