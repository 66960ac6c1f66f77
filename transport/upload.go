package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/chunksync/chunksync/engine"
)

// unackedBudget bounds the memory of the chunks an upload holds that the
// server has not yet acknowledged: enough to fill a 400 Mbit/s link with
// 200 ms RTT, 10 MB in flight and its queue's 2.5 MB, in buffers up to
// twice the size of their chunks. With 32 MiB a push through that link ran
// at 353–378 Mbit/s between its first and last seconds, with 64 at 375–389.
const unackedBudget = 64 << 20

// upload spreads chunks over parallel data streams and keeps every chunk
// until the server acknowledges it, so that chunks in flight when a
// connection drops are sent again on the next one.
type upload struct {
	c    *Client
	spec engine.UploadSpec
	fp   string // the server's fingerprint, for the manifest cache
	// ref names proposed, the version of the path the client remembers,
	// for the open to ask whether the server still holds it.
	ref      baseRef
	proposed *engine.Manifest
	// openMu is held while the session opens; id is "" until it has.
	openMu sync.Mutex
	id     string
	// base, when not nil, is version baseVersion of the path, which the
	// server holds too: chunk lists travel as deltas against it. Set by
	// the open.
	base        *engine.Manifest
	baseVersion uint64

	ctx    context.Context
	cancel context.CancelFunc
	g      *errgroup.Group

	queue   chan engine.EncodedChunk
	unacked *semaphore.Weighted

	mu    sync.Mutex
	retry []engine.EncodedChunk // chunks to send again, taken before queue
	done  bool                  // queue is closed

	start func() // starts the data streams, once
	// stopWatch ends the upload's watchLoss once the queue is closed.
	stopWatch context.CancelFunc
}

func newUpload(ctx context.Context, c *Client) *upload {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	watch, stopWatch := context.WithCancel(gctx)
	u := &upload{
		c:   c,
		ctx: gctx, cancel: cancel, g: g,
		stopWatch: stopWatch,
		queue:     make(chan engine.EncodedChunk, c.cfg.Streams),
		unacked:   semaphore.NewWeighted(unackedBudget),
	}
	// The data streams open with the first chunk: a push of a file the
	// server holds already sends none, and opens none. By then the open
	// has been answered, and with it the hello that says how many
	// streams the server allows.
	u.start = sync.OnceFunc(func() {
		for i := range c.dataStreams() {
			g.Go(func() error { return u.stream(i) })
		}
		g.Go(func() error {
			c.watchLoss(watch, false)
			return nil
		})
	})
	return u
}

// dialDataSlots connects the slots the data streams will use, beside
// the requests that come before the first chunk: a dial and its hello
// take two round trips, which the streams would otherwise wait for once
// they have a chunk to send. A dial that fails is left to the stream that
// needs its slot, which tries again and says why.
func (u *upload) dialDataSlots() {
	for i := range int(u.c.spread.Load()) {
		u.g.Go(func() error {
			u.c.connection(u.ctx, u.c.slotFor(i), false)
			return nil
		})
	}
}

// open opens the upload's session. With refs, the file's first chunks,
// it asks in the same round trip which of them the server lacks (version
// 3) and returns the answer; with a base the refs travel as a delta
// against it, and a server that no longer holds the base answers the open
// alone (missing is then nil).
func (u *upload) open(ctx context.Context, refs []engine.ChunkRef) (missing []bool, err error) {
	e := enc{}
	encodeSpec(&e, u.spec)
	encodeBaseRef(&e, u.ref)
	op := opOpenUpload
	switch {
	case len(refs) > 0 && u.proposed != nil:
		op = opOpenAsk
		e.bytes(engine.AppendChunkListDelta(nil, u.proposed.Chunks, refs))
	case len(refs) > 0:
		op = opOpenAsk
		encodeRefs(&e, refs)
	}
	reply, err := u.c.call(ctx, op, e.b)
	if err != nil {
		return nil, fmt.Errorf("open upload of %s: %w", u.spec.Path, err)
	}
	d := dec{b: reply}
	id := d.string("session", 64)
	d.byte("reattached") // for the server's log; the session ID is what resumes
	baseOK := d.byte("base accepted") == 1
	if op == opOpenAsk && (baseOK || u.proposed == nil) && d.err == nil {
		missing, err = decodeBitmap(d.b, len(refs))
	} else {
		err = d.end()
	}
	if err != nil {
		return nil, fmt.Errorf("open upload of %s: %w", u.spec.Path, err)
	}
	u.id = id
	if baseOK {
		u.baseVersion, u.base = u.ref.Version, u.proposed
	}
	return missing, nil
}

// ensureOpen opens the session if it is not open yet. When it opens it
// with refs, chunks first, first+1, … of the file (first 0, on a server
// of version 3), it asks about them too and returns the answers for the
// first len(answers) of them.
func (u *upload) ensureOpen(ctx context.Context, first int, refs []engine.ChunkRef) ([]bool, error) {
	u.openMu.Lock()
	defer u.openMu.Unlock()
	if u.id != "" {
		return nil, nil
	}
	for {
		var asked []engine.ChunkRef
		if first == 0 && u.c.asksAtOpen() {
			asked = refs[:min(len(refs), maxMissingRefs)]
		}
		missing, err := u.open(ctx, asked)
		if asked != nil && errors.Is(err, errVersionRefused) {
			// The open went behind the first hello, and the server
			// refused that hello's version; the client speaks an
			// older one now, which opens without asking.
			continue
		}
		return missing, err
	}
}

func (u *upload) ID() string {
	u.openMu.Lock()
	defer u.openMu.Unlock()
	return u.id
}

func (u *upload) Missing(ctx context.Context, first int, refs []engine.ChunkRef) ([]bool, error) {
	answered, err := u.ensureOpen(ctx, first, refs)
	if err != nil {
		return nil, err
	}
	missing := append(make([]bool, 0, len(refs)), answered...)
	first += len(answered)
	refs = refs[len(answered):]
	for len(refs) > 0 {
		n := min(len(refs), maxMissingRefs)
		var baseChunks []engine.ChunkRef
		if u.base != nil {
			baseChunks = u.base.Chunks
		}
		body := missingRequest{Session: u.id, First: uint64(first), Base: u.baseVersion, Refs: refs[:n]}.encode(baseChunks)
		reply, err := u.c.call(ctx, opMissing, body)
		if err != nil && u.dropBase(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, err := decodeBitmap(reply, n)
		if err != nil {
			return nil, err
		}
		missing = append(missing, m...)
		first += n
		refs = refs[n:]
	}
	return missing, nil
}

// dropBase reports whether err may come from the server no longer holding
// the base version (pruned since the upload opened), and if so goes on
// without one: the request is to be repeated with everything in full.
func (u *upload) dropBase(err error) bool {
	u.openMu.Lock()
	defer u.openMu.Unlock()
	var se *ServerError
	if u.base == nil || !errors.As(err, &se) || se.Status != statusNotFound {
		return false
	}
	u.base, u.baseVersion = nil, 0
	return true
}

func (u *upload) Send(ctx context.Context, ch engine.EncodedChunk) error {
	u.start()
	// The budget counts the memory held, which is the buffer's capacity:
	// a pooled buffer can be much larger than the chunk it carries.
	weight := min(int64(cap(ch.Payload)), unackedBudget)
	if err := u.unacked.Acquire(ctx, weight); err != nil {
		return err
	}
	release := ch.Release
	ch.Release = func() {
		u.unacked.Release(weight)
		if release != nil {
			release()
		}
	}
	select {
	case u.queue <- ch:
		return nil
	case <-u.ctx.Done():
		u.unacked.Release(weight)
		return u.failure()
	case <-ctx.Done():
		u.unacked.Release(weight)
		return ctx.Err()
	}
}

// failure returns why the streams stopped.
func (u *upload) failure() error {
	if err := u.g.Wait(); err != nil {
		return err
	}
	return context.Cause(u.ctx)
}

func (u *upload) Commit(ctx context.Context, m *engine.Manifest) (engine.CommitResult, error) {
	u.closeQueue()
	// A file of no chunks asked about none: its session opens now.
	if _, err := u.ensureOpen(ctx, 0, nil); err != nil {
		return engine.CommitResult{}, err
	}
	// The commit goes now, as the streams send their last chunks, rather
	// than a round trip later, once they are acknowledged: the server
	// waits for chunks on their way. One that does not, or that stops
	// waiting, refuses it for the chunks it lacks, and it goes again once
	// the streams are done.
	body, err := u.commitBody(m)
	if err != nil {
		return engine.CommitResult{}, err
	}
	early, cancel := context.WithCancel(ctx)
	defer cancel()
	var reply []byte
	var commitErr error
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		reply, commitErr = u.c.call(early, opCommit, body)
	}()
	streamErr := u.g.Wait()
	var se *ServerError
	// Failed streams end the commit too; but a stream that found the
	// session gone may have found it ended by this very commit (sending
	// again a chunk whose first copy was stored after all), and the
	// commit's answer says.
	if streamErr != nil && !(errors.As(streamErr, &se) && se.Status == statusNotFound) {
		cancel()
	}
	<-sent
	if commitErr != nil {
		if streamErr != nil {
			return engine.CommitResult{}, streamErr
		}
		missing := errors.As(commitErr, &se) && se.Status == statusMissing
		if !missing && !u.dropBase(commitErr) {
			return engine.CommitResult{}, commitErr
		}
		if reply, err = u.commit(ctx, m); err != nil {
			return engine.CommitResult{}, err
		}
	}
	d := dec{b: reply}
	v := d.uvarint("version")
	if err := d.end(); err != nil {
		return engine.CommitResult{}, err
	}
	u.c.cache.store(u.fp, v, m)
	return engine.CommitResult{Version: v}, nil
}

// commit sends the commit of m and returns the server's reply, repeating
// it in full when the server no longer holds the base version.
func (u *upload) commit(ctx context.Context, m *engine.Manifest) ([]byte, error) {
	for {
		body, err := u.commitBody(m)
		if err != nil {
			return nil, err
		}
		reply, err := u.c.call(ctx, opCommit, body)
		if err != nil && u.dropBase(err) {
			continue
		}
		return reply, err
	}
}

// commitBody encodes the commit of m: the session and the manifest, as a
// delta against the base version when there is one.
func (u *upload) commitBody(m *engine.Manifest) ([]byte, error) {
	e := enc{}
	e.string(u.id)
	if err := encodeManifest(&e, m, u.baseVersion, u.base); err != nil {
		return nil, err
	}
	return e.b, nil
}

func (u *upload) Close() error {
	u.closeQueue()
	u.cancel()
	u.g.Wait()
	return nil
}

func (u *upload) closeQueue() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.done {
		u.done = true
		close(u.queue)
		u.stopWatch()
	}
}

// next returns the next chunk to send: one to send again first, then the
// queue. It returns false when the queue is closed and drained.
func (u *upload) next() (engine.EncodedChunk, bool, error) {
	u.mu.Lock()
	if n := len(u.retry); n > 0 {
		ch := u.retry[n-1]
		u.retry = u.retry[:n-1]
		u.mu.Unlock()
		return ch, true, nil
	}
	u.mu.Unlock()
	select {
	case ch, ok := <-u.queue:
		return ch, ok, nil
	case <-u.ctx.Done():
		return engine.EncodedChunk{}, false, u.ctx.Err()
	}
}

func (u *upload) requeue(chs []engine.EncodedChunk) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.retry = append(u.retry, chs...)
}

// stream runs data stream i: one QUIC stream at a time until the queue is
// drained, opening a new stream on a new connection after a failure, and
// on another connection when the client spreads its streams anew.
func (u *upload) stream(i int) error {
	for {
		placed := u.c.placement()
		slot := u.c.slotFor(i)
		conn, gen, err := u.c.connection(u.ctx, slot, true)
		if err != nil {
			return fmt.Errorf("upload %s: %w", u.id, err)
		}
		finished, unacked, err := u.runStream(conn, i, slot, placed)
		if len(unacked) > 0 {
			u.requeue(unacked)
		}
		if err == nil && finished {
			// Another stream may have failed after our queue drained and
			// put chunks back: take care of them too.
			u.mu.Lock()
			empty := len(u.retry) == 0
			u.mu.Unlock()
			if empty {
				return nil
			}
			continue
		}
		if err != nil {
			if u.ctx.Err() != nil {
				return u.ctx.Err()
			}
			if !isConnError(conn, err) {
				return fmt.Errorf("upload %s: %w", u.id, err)
			}
			u.c.broken(slot, gen, err)
		}
	}
}

// runStream sends chunks on one new stream of data stream i until the
// queue is drained (finished), the stream fails, or the client moves data
// stream i off slot (not finished, no error: at once when placed ends,
// the chunks not yet acknowledged go again on the new slot); it returns
// the chunks the server did not acknowledge.
func (u *upload) runStream(conn *quic.Conn, i, slot int, placed context.Context) (finished bool, unacked []engine.EncodedChunk, err error) {
	// A stream opens with a chunk to send: one opened once the queue is
	// drained could find the session ended by its commit, which goes as
	// the last chunks do.
	ch, ok, err := u.next()
	if err != nil || !ok {
		return !ok && err == nil, nil, err
	}
	st, err := conn.OpenStreamSync(u.ctx)
	if err != nil {
		return false, []engine.EncodedChunk{ch}, err
	}
	stop := context.AfterFunc(u.ctx, func() {
		st.CancelWrite(codeShutdown)
		st.CancelRead(codeShutdown)
	})
	defer stop()
	var movedAway atomic.Bool
	stopMove := context.AfterFunc(placed, func() {
		if u.c.slotFor(i) != slot {
			movedAway.Store(true)
			st.CancelWrite(codeShutdown)
			st.CancelRead(codeShutdown)
		}
	})
	defer stopMove()
	if err := u.c.writeLimited(u.ctx, st, appendFrame([]byte{streamData}, 0, []byte(u.id))); err != nil {
		return false, []engine.EncodedChunk{ch}, err
	}
	inflight := make(chan sentChunk, 1024)
	readerDone := make(chan struct{})
	var lost []engine.EncodedChunk
	var ackErr error
	go func() {
		defer close(readerDone)
		lost, ackErr = readAcks(st, inflight)
	}()

	var sendErr error
	moved := false
	hdr := make([]byte, chunkHeaderLen)
send:
	for {
		select {
		case inflight <- sentChunk{ch, time.Now()}:
		case <-readerDone:
			unacked = append(unacked, ch)
			break send
		}
		chunkHeader{ID: ch.ID, Codec: ch.Codec, RawSize: ch.RawSize, PayloadLen: uint32(len(ch.Payload))}.put(hdr)
		if err := u.c.writeLimited(u.ctx, st, hdr); err != nil {
			sendErr = err
			break
		}
		if err := u.c.writeLimited(u.ctx, st, ch.Payload); err != nil {
			sendErr = err
			break
		}
		if u.c.slotFor(i) != slot {
			moved = true
			break
		}
		if ch, ok, err = u.next(); err != nil {
			sendErr = err
			break
		}
		if !ok {
			finished = true
			break
		}
	}
	close(inflight)
	if sendErr != nil {
		// Keep reading: the server's acknowledgement may say why the
		// stream failed. The reader ends when the server closes its side,
		// the connection drops or the upload is cancelled.
		st.CancelWrite(codeShutdown)
	} else {
		st.Close()
	}
	<-readerDone
	unacked = append(unacked, lost...)
	for sc := range inflight {
		unacked = append(unacked, sc.EncodedChunk)
	}
	switch {
	case movedAway.Load() && u.ctx.Err() == nil:
		return false, unacked, nil
	case ackErr != nil:
		st.CancelRead(codeShutdown)
		return false, unacked, ackErr
	case sendErr != nil:
		return false, unacked, sendErr
	case moved:
		return false, unacked, nil
	case !finished:
		// The reader stopped before the queue drained, without an error.
		return false, unacked, fmt.Errorf("%w: data stream ended early", errMalformed)
	}
	return true, unacked, nil
}

// readAcks reads the server's answer to the stream's session header and then
// one acknowledgement per chunk, in order, releasing each acknowledged chunk,
// until inflight is closed and drained. It returns the chunk it took from
// inflight but could not see acknowledged.
//
// It times each chunk for its Busy callback: from when the stream started
// on it, or acknowledged the chunk before it if that was later, to its
// acknowledgement. With chunks pipelined on the stream that is the time
// the stream spent on each; QUIC's buffers, which let a write return long
// before its bytes are sent, do not shorten it.
func readAcks(st *quic.Stream, inflight <-chan sentChunk) ([]engine.EncodedChunk, error) {
	status, body, err := readFrame(st, maxMessageLen)
	if err != nil {
		return nil, err
	}
	if status != statusOK {
		return nil, &ServerError{Status: status, Msg: string(body)}
	}
	var prev time.Time
	for sc := range inflight {
		ch := sc.EncodedChunk
		id, err := readAck(st)
		if err != nil {
			var se *ServerError
			if errors.As(err, &se) && ch.Codec == codecDelta {
				return []engine.EncodedChunk{ch}, fmt.Errorf("delta of chunk %s: %w: %w", id, engine.ErrDeltaRefused, se)
			}
			if errors.As(err, &se) {
				return []engine.EncodedChunk{ch}, fmt.Errorf("chunk %s: %w", id, se)
			}
			return []engine.EncodedChunk{ch}, err
		}
		if id != ch.ID {
			return []engine.EncodedChunk{ch}, fmt.Errorf("%w: acknowledgement for chunk %s, expected %s", errMalformed, id, ch.ID)
		}
		now := time.Now()
		if ch.Busy != nil {
			ch.Busy(now.Sub(later(sc.start, prev)))
		}
		prev = now
		if ch.Release != nil {
			ch.Release()
		}
	}
	return nil, nil
}

// sentChunk is a chunk on a data stream, with when the stream started on it.
type sentChunk struct {
	engine.EncodedChunk
	start time.Time
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
