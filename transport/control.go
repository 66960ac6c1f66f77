package transport

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// requestError is a refusal with the status the client receives.
type requestError struct {
	status byte
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func refuse(status byte, format string, args ...any) error {
	return &requestError{status: status, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) serveControl(ctx context.Context, p *peer, qs *quic.Stream) {
	defer qs.Close()
	st := s.stalling(qs)
	op, body, release, err := s.readRequest(ctx, st)
	if err != nil && ctx.Err() != nil {
		qs.CancelWrite(codeShutdown)
		return
	}
	if err != nil {
		p.log.Warn("bad control request", "err", err)
		writeFrame(st, statusBadRequest, []byte(err.Error()))
		qs.CancelRead(codeProtocol)
		return
	}
	defer release()
	reply, held, err := s.control(ctx, p, op, body)
	if held != nil {
		defer held()
	}
	if err != nil && ctx.Err() != nil {
		// Shutting down: no refusal, the client repeats the request
		// on a new connection.
		qs.CancelWrite(codeShutdown)
		return
	}
	if err != nil {
		status, msg := statusError, err.Error()
		var re *requestError
		switch {
		case errors.As(err, &re):
			status = re.status
		case errors.Is(err, errMalformed), errors.Is(err, engine.ErrMalformed):
			status = statusBadRequest
		case errors.Is(err, index.ErrSessionNotFound), errors.Is(err, index.ErrVersionNotFound):
			status = statusNotFound
		}
		p.log.Warn("refused request", "op", op, "err", err)
		writeFrame(st, status, []byte(truncate(msg, 4096)))
		return
	}
	if err := writeFrame(st, statusOK, reply); err != nil {
		p.log.Warn("write reply", "op", op, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// control runs one operation. When release is not nil, the memory budget
// counts the reply until it is called, once the reply is written.
func (s *Server) control(ctx context.Context, p *peer, op byte, body []byte) (reply []byte, release func(), err error) {
	switch op {
	case opOpenUpload:
		return unheld(s.openUpload(ctx, p, body))
	case opMissing:
		return unheld(s.missing(ctx, p, body))
	case opOpenAsk:
		return unheld(s.openAsk(ctx, p, body))
	case opCommit:
		return unheld(s.commit(ctx, p, body))
	case opSessions:
		return unheld(s.sessions(ctx, p, body))
	case opCancel:
		return unheld(s.cancel(ctx, p, body))
	case opManifest:
		return unheld(s.manifest(ctx, body))
	case opList:
		return unheld(s.list(ctx, body))
	case opVersions:
		return unheld(s.versions(ctx, body))
	case opCollect:
		return unheld(s.collect(ctx, body))
	case opSignature:
		return unheld(s.signature(ctx, p, body))
	case opFetchDelta:
		return s.fetchDelta(ctx, body)
	case opPathLoss:
		return unheld(pathLossOf(p.conn, body))
	}
	return nil, nil, refuse(statusBadRequest, "unknown operation %d", op)
}

// unheld is the result of a control operation whose reply the memory
// budget does not count.
func unheld(reply []byte, err error) ([]byte, func(), error) { return reply, nil, err }

// pathLossOf answers a path loss request with conn's counts.
func pathLossOf(conn *quic.Conn, body []byte) ([]byte, error) {
	if len(body) != 0 {
		return nil, refuse(statusBadRequest, "path loss request takes no arguments")
	}
	st := conn.ConnectionStats()
	return pathLoss{
		PacketsSent: st.PacketsSent, PacketsReceived: st.PacketsReceived, PacketsLost: st.PacketsLost,
		MinRTT: st.MinRTT, SmoothedRTT: st.SmoothedRTT,
	}.encode(), nil
}

// checkRemotePath refuses paths that could leave the files root or that
// the server reserves.
func checkRemotePath(p string) error {
	switch {
	case p == "":
		return refuse(statusBadRequest, "empty path")
	case len(p) > maxPathLen:
		return refuse(statusBadRequest, "path of %d bytes exceeds %d", len(p), maxPathLen)
	case strings.ContainsRune(p, 0):
		return refuse(statusBadRequest, "path %q contains a NUL byte", p)
	case strings.ContainsRune(p, '\\'):
		return refuse(statusBadRequest, "path %q contains a backslash", p)
	case !filepath.IsLocal(p) || path.Clean(p) != p:
		return refuse(statusBadRequest, "path %q must be relative, clean and stay inside the files root", p)
	case longestName(p) > maxNameLen:
		return refuse(statusBadRequest, "path %q has a name of %d bytes, more than the %d a file system takes", p, longestName(p), maxNameLen)
	case isTempName(path.Base(p)):
		return refuse(statusBadRequest, "path %q uses the server's temporary-file prefix", p)
	}
	return nil
}

// maxNameLen is the longest name of one path element: the NAME_MAX of
// Linux and the BSDs. A longer one would be accepted only to fail at the
// commit, after the whole file was sent.
const maxNameLen = 255

func longestName(p string) int {
	n := 0
	for name := range strings.SplitSeq(p, "/") {
		n = max(n, len(name))
	}
	return n
}

const tempPrefix = ".chunksync-tmp-"

func isTempName(name string) bool { return strings.HasPrefix(name, tempPrefix) }

func (s *Server) openUpload(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	d := dec{b: body}
	spec := decodeSpec(&d)
	base := decodeBaseRef(&d)
	if err := d.end(); err != nil {
		return nil, err
	}
	e := enc{}
	_, _, err := s.open(ctx, p, &e, spec, base)
	return e.b, err
}

// openAsk opens an upload session as openUpload does and answers, as
// missing does, which of the file's first chunks the server lacks: the
// push's first missing request without a round trip of its own. With a
// base, the chunks come as a delta against it, and when the server does
// not hold the base it cannot read them: it answers the open alone.
//
// The session it re-attaches to may still end before it is asked, by a
// commit that reached the server after the open (from the client that
// opened the session, killed after its commit had gone: see openSession).
// The open is then made again, and opens a session of its own.
func (s *Server) openAsk(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	d := dec{b: body}
	spec := decodeSpec(&d)
	ref := decodeBaseRef(&d)
	var refs []engine.ChunkRef
	var delta []byte
	if ref.Version != 0 {
		delta = d.bytes("chunk list delta", maxControlLen)
	} else {
		refs = decodeRefs(&d, maxMissingRefs)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	for again := true; ; again = false {
		e := enc{}
		sess, base, err := s.open(ctx, p, &e, spec, ref)
		if err != nil {
			return nil, err
		}
		if ref.Version != 0 {
			if base == nil {
				return e.b, nil
			}
			if refs, err = decodeListDelta(delta, base); err != nil {
				return nil, err
			}
		}
		missing, err := s.lacking(ctx, sess, 0, refs)
		if again && errors.Is(err, index.ErrSessionNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return append(e.b, encodeBitmap(missing)...), nil
	}
}

// open checks spec, opens or re-attaches to the caller's session for it
// and appends the open's reply to e: the session, whether it was open
// already, and whether the server holds the base the client named, which
// it returns.
func (s *Server) open(ctx context.Context, p *peer, e *enc, spec engine.UploadSpec, ref baseRef) (index.Session, *engine.Manifest, error) {
	if err := checkRemotePath(spec.Path); err != nil {
		return index.Session{}, nil, err
	}
	if err := engine.ValidateParams(spec.Chunker); err != nil {
		return index.Session{}, nil, refuse(statusBadRequest, "%v", err)
	}
	sess, reattached, err := s.openSession(ctx, p, spec)
	if err != nil {
		return index.Session{}, nil, err
	}
	if s.cfg.afterOpen != nil {
		s.cfg.afterOpen(reattached)
	}
	base := s.acceptBase(ctx, spec.Path, ref)
	p.log.Info("upload session", "session", sess.ID, "path", spec.Path, "size", spec.Size, "reattached", reattached, "base", ref.Version, "base_ok", base != nil)
	e.string(sess.ID)
	e.bool(reattached)
	e.bool(base != nil)
	return sess, base, nil
}

// openSession opens or re-attaches to the caller's session for spec. A
// session with a commit under way (sent by a client that may be gone:
// killed after it sent its commit, and now run again) is waited for: the
// commit ends it, and the open then opens a new one, or the commit fails
// and the open re-attaches to it as before.
func (s *Server) openSession(ctx context.Context, p *peer, spec engine.UploadSpec) (index.Session, bool, error) {
	for {
		sess, reattached, err := s.openSessionNow(ctx, p, spec)
		if err != nil || !reattached {
			return sess, reattached, err
		}
		ended := s.committing.ended(sess.ID)
		if ended == nil {
			return sess, true, nil
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return index.Session{}, false, ctx.Err()
		}
	}
}

// openSessionNow opens or re-attaches to the caller's session for spec,
// refusing a new one when the caller's token has
// cfg.MaxSessionsPerToken open: a client that opens sessions and never
// sends would otherwise fill the index until they expire.
func (s *Server) openSessionNow(ctx context.Context, p *peer, spec engine.UploadSpec) (index.Session, bool, error) {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	all, err := s.db.ListSessions(ctx)
	if err != nil {
		return index.Session{}, false, err
	}
	open := 0
	for _, sess := range all {
		if sess.Owner == p.owner {
			open++
		}
	}
	sess, reattached, err := s.db.OpenSession(ctx, p.owner, spec, time.Now())
	if err != nil || reattached || open < s.cfg.MaxSessionsPerToken {
		return sess, reattached, err
	}
	// Opened only to learn that it was not a re-attachment, which the
	// index decides: end it again.
	if err := s.db.DeleteSession(ctx, sess.ID); err != nil {
		return index.Session{}, false, err
	}
	return index.Session{}, false, refuse(statusError, "token %s has %d open upload sessions, the server's limit: let one finish, or cancel one (chunksync status, chunksync cancel)", p.owner, open)
}

// sessionCommits counts the commits under way of each session.
type sessionCommits struct {
	mu    sync.Mutex
	under map[string]*commitsOf
}

// commitsOf is the commits under way of one session: a commit repeated
// while the first still runs (its reply lost with its connection) is a
// second.
type commitsOf struct {
	n    int
	done chan struct{} // closed when the last ends
}

// start counts a commit of session id as under way until the function it
// returns is called.
func (c *sessionCommits) start(id string) (end func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	of := c.under[id]
	if of == nil {
		of = &commitsOf{done: make(chan struct{})}
		c.under[id] = of
	}
	of.n++
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if of.n--; of.n == 0 {
			close(of.done)
			delete(c.under, id)
		}
	}
}

// ended returns a channel closed once no commit of session id is under
// way, nil when none is now.
func (c *sessionCommits) ended(id string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if of := c.under[id]; of != nil {
		return of.done
	}
	return nil
}

// baseRef names a version that the client holds the manifest of, for the
// server to decode chunk list deltas against. Version 0 is none.
type baseRef struct {
	Version uint64
	BLAKE3  [32]byte
}

func encodeBaseRef(e *enc, b baseRef) {
	e.uvarint(b.Version)
	if b.Version != 0 {
		e.raw(b.BLAKE3[:])
	}
}

func decodeBaseRef(d *dec) baseRef {
	b := baseRef{Version: d.uvarint("base version")}
	if b.Version != 0 {
		copy(b.BLAKE3[:], d.take(32, "base blake3"))
	}
	return b
}

// acceptBase returns version b of path when the server holds it with the
// digest the client has, so that deltas against it mean the same to both,
// and nil otherwise.
func (s *Server) acceptBase(ctx context.Context, path string, b baseRef) *engine.Manifest {
	if b.Version == 0 {
		return nil
	}
	m, err := s.base(ctx, path, b.Version)
	if err != nil || m.Digests.BLAKE3 != b.BLAKE3 {
		return nil
	}
	return m
}

func (s *Server) missing(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	req, err := decodeMissingRequest(body)
	if err != nil {
		return nil, err
	}
	sess, err := s.sessionOwned(ctx, p, req.Session)
	if err != nil {
		return nil, err
	}
	if req.Base != 0 {
		base, err := s.base(ctx, sess.Spec.Path, req.Base)
		if err != nil {
			return nil, err
		}
		if req.Refs, err = decodeListDelta(req.Delta, base); err != nil {
			return nil, err
		}
	}
	missing, err := s.lacking(ctx, sess, req.First, req.Refs)
	if err != nil {
		return nil, err
	}
	return encodeBitmap(missing), nil
}

// decodeListDelta decodes the chunks of a missing request, a delta
// against base's chunk list.
func decodeListDelta(delta []byte, base *engine.Manifest) ([]engine.ChunkRef, error) {
	// Before decoding: a few bytes of copies can describe millions of
	// chunks.
	n, err := chunkListCount(delta)
	if err != nil {
		return nil, err
	}
	if n > maxMissingRefs {
		return nil, refuse(statusBadRequest, "%d chunks in one missing request, limit %d", n, maxMissingRefs)
	}
	refs, _, err := engine.DecodeChunkListDelta(delta, base.Chunks)
	return refs, err
}

// lacking records refs as chunks first, first+1, … of session sess's
// file and reports, for each, whether the store lacks it.
func (s *Server) lacking(ctx context.Context, sess index.Session, first uint64, refs []engine.ChunkRef) ([]bool, error) {
	if err := s.checkChunkCount(first + uint64(len(refs))); err != nil {
		return nil, err
	}
	if max := sess.Spec.Chunker.Max; max > 0 {
		for _, r := range refs {
			if r.Size > max {
				return nil, refuse(statusBadRequest, "chunk %s of %d bytes exceeds the session's maximum %d", r.ID, r.Size, max)
			}
		}
	}
	ids := make([]engine.ChunkID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	// Record the refs first: from then on the session protects them from
	// garbage collection, so a chunk reported present stays present.
	if err := s.db.AddSessionChunks(ctx, sess.ID, int(first), refs, time.Now()); err != nil {
		return nil, err
	}
	s.asm.list(sess, int(first), refs)
	has, err := s.gc.Has(ctx, ids)
	if err != nil {
		return nil, err
	}
	missing := make([]bool, len(has))
	for i, h := range has {
		missing[i] = !h
	}
	return missing, nil
}

// sessionOwned returns the caller's session without counting its progress.
func (s *Server) sessionOwned(ctx context.Context, p *peer, id string) (index.Session, error) {
	sess, err := s.db.Session(ctx, id)
	if err == nil && sess.Owner != p.owner {
		err = index.ErrSessionNotFound
	}
	if err != nil {
		return sess, fmt.Errorf("session %s: %w", id, err)
	}
	return sess, nil
}

func (s *Server) commit(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	d := dec{b: body}
	id := d.string("session", 64)
	defer s.committing.start(id)()
	var releaseList func()
	m, err := decodeManifest(&d, func(path string, n, chunks uint64) (*engine.Manifest, error) {
		if err := s.checkChunkCount(chunks); err != nil {
			return nil, err
		}
		// The request's reservation covers a list decoded from a full
		// manifest; one from a delta can be far larger.
		var err error
		if releaseList, err = s.reserve(ctx, int64(chunks)*chunkRefMemory); err != nil {
			return nil, err
		}
		return s.base(ctx, path, n)
	})
	if releaseList != nil {
		defer releaseList()
	}
	if err == nil {
		err = d.end()
	}
	if err == nil {
		err = s.checkChunkCount(uint64(len(m.Chunks)))
	}
	if err != nil {
		return nil, fmt.Errorf("commit manifest: %w", err)
	}
	// Before the path is locked: waiting, the commit holds up no other.
	missing, lacking, arrived, err := s.awaitStored(ctx, m)
	if err != nil {
		return nil, err
	}
	// Before the session is looked up: a commit repeated while the first
	// one still runs (its reply lost with its connection) waits for it,
	// and then finds its version.
	defer s.lockPath(m.Path)()
	sess, err := s.sessionOwned(ctx, p, id)
	if errors.Is(err, index.ErrSessionNotFound) {
		// A commit whose reply was lost is retried after the session
		// ended: answer with the version it created.
		if v, _, verr := s.db.Manifest(ctx, m.Path, 0); verr == nil && v.Digests == m.Digests && v.Size == m.Size {
			return versionReply(v.Number), nil
		}
	}
	if err != nil {
		return nil, err
	}
	if m.Path != sess.Spec.Path || m.Size != sess.Spec.Size || m.Chunker != sess.Spec.Chunker {
		return nil, refuse(statusBadRequest, "manifest for %s (%d bytes, %s) does not match session %s for %s (%d bytes, %s)",
			m.Path, m.Size, m.Chunker, id, sess.Spec.Path, sess.Spec.Size, sess.Spec.Chunker)
	}
	if lacking > 0 {
		// The session goes on, and with it its assembly: the client sends
		// what is missing and commits again.
		return nil, refuse(statusMissing, "commit %s: %d chunks not stored, first %s", m.Path, lacking, missing[0].ID)
	}
	// The commit uses the session's assembly, if it has a usable one, or
	// ends it; this also ends one that a missing request racing the
	// commit started.
	defer s.asm.drop(id)
	start := time.Now()
	var n uint64
	record := func() error {
		// Through the collector: it checks, excluding garbage
		// collection, that every chunk is still stored as it records
		// the version, marks the version pending and ends the session,
		// in one transaction: a commit retried after a crash finds
		// either the session (and no version) or the version, and a
		// server that restarts puts a pending version in place.
		var err error
		if n, err = s.gc.AddVersion(ctx, m, id, time.Now()); err != nil {
			return fmt.Errorf("record version of %s: %w", m.Path, err)
		}
		s.checkpoint(CheckpointCommitRecorded)
		return nil
	}
	assembled := "during the push"
	err = s.finishAssembly(ctx, id, m, record)
	if errors.Is(err, errNoAssembly) {
		assembled = "at the commit"
		err = s.materialise(ctx, m, record)
	}
	var me *index.MissingChunksError
	switch {
	case errors.As(err, &me):
		return nil, refuse(statusMissing, "commit %s: %v", m.Path, me)
	case err != nil && n != 0:
		return nil, fmt.Errorf("version %d recorded, putting it in place failed (the server tries again when it starts): %w", n, err)
	case err != nil:
		return nil, err
	}
	s.checkpoint(CheckpointCommitRenamed)
	if pruned, err := s.db.FinishCommit(ctx, m.Path, n, s.cfg.KeepVersions); err != nil {
		// The version stays pending: the next start puts it in place
		// again, and the next commit of the path prunes.
		p.log.Error("finish commit", "path", m.Path, "version", n, "err", err)
	} else if len(pruned) > 0 {
		p.log.Info("pruned versions", "path", m.Path, "versions", pruned)
	}
	p.log.Info("committed", "path", m.Path, "version", n, "size", m.Size, "session", id, "assembled", assembled,
		"awaited", arrived, "took", time.Since(start).Round(time.Millisecond))
	return versionReply(n), nil
}

// checkChunkCount refuses a file of n chunks when the server takes fewer
// (cfg.MaxManifestChunks).
func (s *Server) checkChunkCount(n uint64) error {
	if n > uint64(s.cfg.MaxManifestChunks) {
		return refuse(statusError, "a file of %d chunks: a file may have at most %d on this server", n, s.cfg.MaxManifestChunks)
	}
	return nil
}

func versionReply(n uint64) []byte {
	e := enc{}
	e.uvarint(n)
	return e.b
}

// maxAwaited bounds the missing chunks a commit waits for: far more than a
// client's unacknowledged chunks can be (unackedBudget, in buffers of at
// least 4 KiB). A commit that lacks more is refused at once.
const maxAwaited = 1 << 16

// awaitStored returns the chunks of m that the store lacks (the first
// maxAwaited of them) and their count, having waited while they kept
// arriving, and how many arrived while it waited. A client sends its
// commit as it hands its last chunks to its streams, not a round trip
// later once they are all acknowledged, so the commit can find the last
// of them on their way: it waits until the store holds every chunk of m,
// or until cfg.CommitWait passes without one more of them.
func (s *Server) awaitStored(ctx context.Context, m *engine.Manifest) (missing []engine.ChunkRef, count, arrived int, err error) {
	if missing, count, err = s.unstored(ctx, m.Chunks); err != nil || count == 0 || count > maxAwaited {
		return missing, count, 0, err
	}
	patience := time.NewTimer(s.cfg.CommitWait)
	defer patience.Stop()
	for {
		// Asked for before the store is: a chunk stored in between wakes
		// the wait at once.
		next := s.arrivals.next()
		still, n, err := s.unstored(ctx, missing)
		if err != nil {
			return nil, 0, 0, err
		}
		arrived += count - n
		if n == 0 {
			return nil, 0, arrived, nil
		}
		if n < count {
			patience.Reset(s.cfg.CommitWait)
		}
		missing, count = still, n
		select {
		case <-next:
		case <-patience.C:
			return missing, count, arrived, nil
		case <-ctx.Done():
			return nil, 0, 0, ctx.Err()
		}
	}
}

// unstored returns the first maxAwaited of refs whose chunks the store
// lacks, in order, and how many lack.
func (s *Server) unstored(ctx context.Context, refs []engine.ChunkRef) ([]engine.ChunkRef, int, error) {
	const batch = 4096
	var missing []engine.ChunkRef
	count := 0
	ids := make([]engine.ChunkID, 0, min(batch, len(refs)))
	for i := 0; i < len(refs); i += batch {
		part := refs[i:min(i+batch, len(refs))]
		ids = ids[:0]
		for _, r := range part {
			ids = append(ids, r.ID)
		}
		has, err := s.gc.Has(ctx, ids)
		if err != nil {
			return nil, 0, err
		}
		for j, h := range has {
			if h {
				continue
			}
			if count++; len(missing) < maxAwaited {
				missing = append(missing, part[j])
			}
		}
	}
	return missing, count, nil
}

// arrivals wakes the commits that wait for chunks (awaitStored) whenever
// a chunk is stored.
type arrivals struct {
	mu sync.Mutex
	ch chan struct{} // closed at the next chunk stored; nil while no one waits
}

// next returns a channel that is closed when the next chunk is stored.
func (a *arrivals) next() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil {
		a.ch = make(chan struct{})
	}
	return a.ch
}

// stored wakes those waiting for the next chunk.
func (a *arrivals) stored() {
	a.mu.Lock()
	ch := a.ch
	a.ch = nil
	a.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// lockPath serialises commits of one path and returns the unlock function.
// An entry lives only while a commit of its path runs or waits, so the
// table does not grow with every path ever committed.
func (s *Server) lockPath(p string) (unlock func()) {
	s.commitMu.Lock()
	l, ok := s.commits[p]
	if !ok {
		l = new(pathLock)
		s.commits[p] = l
	}
	l.users++
	s.commitMu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.commitMu.Lock()
		defer s.commitMu.Unlock()
		if l.users--; l.users == 0 {
			delete(s.commits, p)
		}
	}
}

// pathLock is one path's commit lock and the number of commits holding or
// waiting for it.
type pathLock struct {
	sync.Mutex
	users int
}

// assembleBuffer is the write buffer of a commit's assembly.
const assembleBuffer = 1 << 20

// errNoAssembly says that a commit's file was not assembled during its
// push, or not usably.
var errNoAssembly = errors.New("no assembly during the push")

// finishAssembly puts in place, through install, the file that session id's
// push assembled, once it is complete and checked against m; it returns
// errNoAssembly when there is none, or none that is m's.
func (s *Server) finishAssembly(ctx context.Context, id string, m *engine.Manifest, record func() error) error {
	a := s.asm.take(id)
	if a == nil {
		return errNoAssembly
	}
	tmp, f, err := a.finish(ctx, m)
	if err != nil {
		s.log.Warn("assembly during the push unusable", "session", id, "path", m.Path, "err", err)
		return errNoAssembly
	}
	return s.install(m, tmp, f, record)
}

// materialise assembles m from the store into a temporary file under the
// files root and puts it in place through install.
func (s *Server) materialise(ctx context.Context, m *engine.Manifest, record func() error) error {
	// Assembly holds chunks of its own, ten at the most; many commits at
	// once would otherwise hold memory that no budget counts. A file of
	// the largest chunks takes at most the whole budget, and waits for it.
	release, err := s.reserve(ctx, min(engine.AssembleMemory(m)+assembleBuffer, s.cfg.MemoryBudget))
	if err != nil {
		return err
	}
	defer release()
	tmp, f, err := s.createTemp(m.Path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, assembleBuffer)
	err = engine.Assemble(ctx, m, s.chunks, w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		f.Close()
		s.files.Remove(tmp)
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	return s.install(m, tmp, f, record)
}

// createTemp creates a new temporary file beside remote path p, under the
// files root, and the directories up to it.
func (s *Server) createTemp(p string) (string, *os.File, error) {
	dir := path.Dir(p)
	if err := s.files.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("commit %s: %w", p, err)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := path.Join(dir, tempPrefix+hex.EncodeToString(rnd[:]))
	f, err := s.files.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", nil, fmt.Errorf("commit %s: %w", p, err)
	}
	return tmp, f, nil
}

// install puts f, the temporary file tmp that holds m's verified content,
// in place: it syncs it, calls record, when set, and renames it over
// m.Path. Readers see the previous version or the new one, never a mix,
// and never a version before record has recorded it. A crash between
// record and the rename leaves the files root behind the index, with the
// version pending, for finishCommits to put in place; the other way round,
// the files root would hold a version that the index may never record.
// On failure it removes tmp.
func (s *Server) install(m *engine.Manifest, tmp string, f *os.File, record func() error) error {
	committed := false
	defer func() {
		if !committed {
			f.Close()
			s.files.Remove(tmp)
		}
	}()
	if err := f.Chmod(m.Mode.Perm()); err != nil {
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	if err := s.files.Chtimes(tmp, m.ModTime, m.ModTime); err != nil {
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	s.checkpoint(CheckpointCommitAssembled)
	if fi, err := s.files.Lstat(m.Path); err == nil && fi.Mode()&fs.ModeType != 0 {
		return refuse(statusError, "commit %s: the path holds a %s, not a regular file", m.Path, fileType(fi.Mode()))
	}
	if record != nil {
		if err := record(); err != nil {
			return err
		}
	}
	if err := s.files.Rename(tmp, m.Path); err != nil {
		return fmt.Errorf("commit %s: %w", m.Path, err)
	}
	committed = true
	if d, err := s.files.Open(path.Dir(m.Path)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("commit %s: sync directory: %w", m.Path, err)
		}
	}
	return nil
}

// finishCommits puts in place the versions that commits recorded and a
// crash kept from the files root (index.DB.PendingVersions): the latest
// version of each such path, assembled anew from the store, which holds
// every chunk a recorded version names. It runs before the server accepts
// a connection, so that no client hears of a version, a repeated commit's
// reply included, before it is in place. A version it cannot put in place
// stays pending, and the files root behind: it logs why, and the next
// start tries again.
func (s *Server) finishCommits(ctx context.Context) {
	pending, err := s.db.PendingVersions(ctx)
	if err != nil {
		s.log.Error("find interrupted commits", "err", err)
		return
	}
	for _, pv := range pending {
		v, m, err := s.db.Manifest(ctx, pv.Path, 0)
		if err == nil {
			err = s.materialise(ctx, m, nil)
		}
		if err != nil {
			s.log.Error("finish interrupted commit", "path", pv.Path, "version", pv.Number, "err", err)
			continue
		}
		pruned, err := s.db.FinishCommit(ctx, pv.Path, v.Number, s.cfg.KeepVersions)
		if err != nil {
			s.log.Error("finish interrupted commit", "path", pv.Path, "version", v.Number, "err", err)
			continue
		}
		s.log.Info("finished interrupted commit", "path", pv.Path, "version", v.Number, "pruned", pruned)
	}
}

// fileType names the type of a file that is not a regular one.
func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsDir():
		return "directory"
	}
	return "special file"
}

func (s *Server) sessions(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	if len(body) != 0 {
		return nil, refuse(statusBadRequest, "sessions request takes no arguments")
	}
	list, err := s.db.ListSessions(ctx)
	if err != nil {
		return nil, err
	}
	e := enc{}
	var mine []index.SessionProgress
	for _, sess := range list {
		if sess.Owner != p.owner {
			continue
		}
		sp, err := s.db.SessionProgress(ctx, sess.ID)
		if errors.Is(err, index.ErrSessionNotFound) {
			continue // ended while we listed
		}
		if err != nil {
			return nil, err
		}
		mine = append(mine, sp)
	}
	e.uvarint(uint64(len(mine)))
	for _, sp := range mine {
		encodeProgress(&e, sp)
	}
	return e.b, nil
}

func (s *Server) cancel(ctx context.Context, p *peer, body []byte) ([]byte, error) {
	d := dec{b: body}
	id := d.string("session", 64)
	if err := d.end(); err != nil {
		return nil, err
	}
	if _, err := s.sessionOwned(ctx, p, id); err != nil {
		return nil, err
	}
	if err := s.db.DeleteSession(ctx, id); err != nil {
		return nil, fmt.Errorf("cancel session %s: %w", id, err)
	}
	s.asm.drop(id)
	p.log.Info("session cancelled", "session", id)
	return nil, nil
}

func encodeProgress(e *enc, sp index.SessionProgress) {
	e.string(sp.ID)
	encodeSpec(e, sp.Spec)
	e.varint(sp.Created.UnixNano())
	e.varint(sp.Updated.UnixNano())
	e.uvarint(uint64(sp.Chunks))
	e.varint(sp.Bytes)
	e.uvarint(uint64(sp.ChunksStored))
	e.varint(sp.BytesStored)
}

func decodeProgress(d *dec) index.SessionProgress {
	var sp index.SessionProgress
	sp.ID = d.string("session", 64)
	sp.Spec = decodeSpec(d)
	sp.Created = time.Unix(0, d.varint("created"))
	sp.Updated = time.Unix(0, d.varint("updated"))
	sp.Chunks = int(d.uvarint("chunks") & 0x7fffffff)
	sp.Bytes = d.varint("bytes")
	sp.ChunksStored = int(d.uvarint("chunks stored") & 0x7fffffff)
	sp.BytesStored = d.varint("bytes stored")
	return sp
}
