package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
)

// Defaults of the ServerConfig limits that a hostile client could otherwise
// use to hold the server's resources.
const (
	defaultStallTimeout        = 30 * time.Second
	defaultIdleTimeout         = 30 * time.Second
	defaultUnusedTimeout       = 10 * time.Minute
	defaultMaxSessionsPerToken = 128
	defaultMaxConnsPerToken    = 256
)

// errStalled is wrapped by the error of a read or write that made no
// progress for the server's StallTimeout.
var errStalled = errors.New("stream stalled")

// stallStream bounds how long each read or write of a stream may make no
// progress: a peer that announces a frame and then stops sending, or stops
// reading what it asked for, loses the stream instead of holding the memory
// the server reserved for it.
type stallStream struct {
	st    *quic.Stream
	stall time.Duration
}

// stallWriteStep is the most one write call hands to QUIC under one
// deadline, so that a chunk of 16 MiB on a slow link is not refused for
// taking longer than the stall timeout while every piece of it moves.
const stallWriteStep = 256 << 10

func (s stallStream) Read(p []byte) (int, error) {
	s.st.SetReadDeadline(time.Now().Add(s.stall))
	n, err := s.st.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: nothing received for %v", errStalled, s.stall)
	}
	return n, err
}

func (s stallStream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		step := p[:min(len(p), stallWriteStep)]
		s.st.SetWriteDeadline(time.Now().Add(s.stall))
		n, err := s.st.Write(step)
		written += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return written, fmt.Errorf("%w: the peer read nothing for %v", errStalled, s.stall)
		}
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// idle lets the stream wait for the peer without a deadline: between the
// chunks of a data stream, where the client may have nothing to send for
// as long as it reads unchanged parts of its file.
func (s stallStream) idle() { s.st.SetReadDeadline(time.Time{}) }

func (s *Server) stalling(st *quic.Stream) stallStream {
	return stallStream{st: st, stall: s.cfg.StallTimeout}
}

// readRequest reads a control request, the last frame of its stream. It
// reserves the body's bytes from the memory budget before allocating them,
// so that streams announcing 64 MiB requests and sending none of them
// cannot make the server allocate more than the budget; release returns
// the reservation once the request is answered.
func (s *Server) readRequest(ctx context.Context, r io.Reader) (op byte, body []byte, release func(), err error) {
	op, n, err := readFrameHeader(r, maxControlLen)
	if err != nil {
		return 0, nil, nil, err
	}
	// Decoding may need as much again (a manifest's chunk list).
	release, err = s.reserve(ctx, 2*int64(n))
	if err != nil {
		return 0, nil, nil, err
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		release()
		return 0, nil, nil, fmt.Errorf("%w: truncated frame: %w", errMalformed, err)
	}
	if err := readEnd(r); err != nil {
		release()
		return 0, nil, nil, err
	}
	return op, body, release, nil
}

// reserve takes n bytes of the memory budget, waiting until they are free,
// and returns the function that gives them back. It refuses at once to
// reserve more than the whole budget, for which it would wait forever.
func (s *Server) reserve(ctx context.Context, n int64) (release func(), err error) {
	if n > s.cfg.MemoryBudget {
		return nil, refuse(statusError, "the request needs %d MiB, more than the server's memory budget of %d MiB", (n+1<<20-1)>>20, s.cfg.MemoryBudget>>20)
	}
	if err := s.memory.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { s.memory.Release(n) }, nil
}

// chunkListCount returns the chunk count that opens a chunk list delta
// (engine.AppendChunkListDelta), for the server to refuse one that would
// expand past a limit before decoding it: a few bytes of copies of a large
// base can describe millions of chunks.
func chunkListCount(delta []byte) (uint64, error) {
	n, k := binary.Uvarint(delta)
	if k <= 0 {
		return 0, fmt.Errorf("%w: chunk list delta: bad count", errMalformed)
	}
	return n, nil
}

// chunkRefMemory is what one decoded chunk of a list costs: the ref and
// the flag engine.DecodeChunkListDelta keeps beside it.
const chunkRefMemory = int64(len(engine.ChunkID{})) + 4 + 1

// tokenConns counts the open connections of every token, for
// ServerConfig.MaxConnsPerToken.
type tokenConns struct {
	mu sync.Mutex
	n  map[string]int
}

// errBusy is wrapped by admit's refusals.
var errBusy = errors.New("connection limit")

// admit counts a new connection of owner, or refuses it when owner has
// limit open already.
func (t *tokenConns) admit(owner string, limit int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n[owner] >= limit {
		return fmt.Errorf("%w: token %s has %d connections open, the server's limit: close some before opening more", errBusy, owner, limit)
	}
	if t.n == nil {
		t.n = make(map[string]int)
	}
	t.n[owner]++
	return nil
}

// leave uncounts a connection that admit counted.
func (t *tokenConns) leave(owner string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n[owner]--; t.n[owner] == 0 {
		delete(t.n, owner)
	}
}

// streamWatch closes a connection that has had no open stream for its
// timeout: QUIC's own idle timeout never fires on a client that sends
// keep-alives, so without this a connection that authenticated and then
// does nothing would hold its place (and its token's connection count)
// forever. Clients dial again when they need a connection that was
// closed.
type streamWatch struct {
	mu     sync.Mutex
	active int
	timer  *time.Timer
	after  time.Duration
}

func watchStreams(conn *quic.Conn, after time.Duration) *streamWatch {
	w := &streamWatch{after: after}
	w.timer = time.AfterFunc(after, func() {
		conn.CloseWithError(codeOK, fmt.Sprintf("no stream for %v: connection closed as unused", after))
	})
	return w
}

// opened counts a stream the connection accepted.
func (w *streamWatch) opened() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active++
	w.timer.Stop()
}

// closed uncounts a stream; the last one starts the timer again.
func (w *streamWatch) closed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.active--; w.active == 0 {
		w.timer.Reset(w.after)
	}
}

// stop ends the watch with its connection.
func (w *streamWatch) stop() { w.timer.Stop() }
