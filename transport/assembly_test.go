package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// commitLog is a slog.Handler that keeps how each commit's file was
// assembled and how many chunks it awaited, from the server's "committed"
// records.
type commitLog struct {
	mu        sync.Mutex
	assembled []string
	awaited   []int64
}

func (l *commitLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *commitLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *commitLog) WithGroup(string) slog.Handler            { return l }

func (l *commitLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "committed" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch a.Key {
		case "assembled":
			l.assembled = append(l.assembled, a.Value.String())
		case "awaited":
			l.awaited = append(l.awaited, a.Value.Int64())
		}
		return true
	})
	return nil
}

func (l *commitLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.assembled)
}

func (l *commitLog) allAwaited() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.awaited)
}

// tempFilesOf returns the sizes of the commits' temporary files under the
// server's files root.
func tempFilesOf(t *testing.T, ts *testServer) []int64 {
	t.Helper()
	names, err := tempFiles(ts.cfg.FilesDir)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int64
	for _, n := range names {
		if fi, err := os.Stat(n); err == nil {
			sizes = append(sizes, fi.Size())
		}
	}
	return sizes
}

// beforeCommit runs a function of the upload and its manifest before the
// commit of every upload it opens.
type beforeCommit struct {
	*Client
	do func(u engine.Upload, m *engine.Manifest) error
}

func (r beforeCommit) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	u, err := r.Client.OpenUpload(ctx, spec)
	return uploadBeforeCommit{u, r.do}, err
}

type uploadBeforeCommit struct {
	engine.Upload
	do func(u engine.Upload, m *engine.Manifest) error
}

func (u uploadBeforeCommit) Commit(ctx context.Context, m *engine.Manifest) (engine.CommitResult, error) {
	if err := u.do(u.Upload, m); err != nil {
		return engine.CommitResult{}, err
	}
	return u.Upload.Commit(ctx, m)
}

// The server assembles a pushed file while its chunks arrive: by the time
// the client commits, the file is written, and the commit only checks it
// and puts it in place.
func TestAssembledDuringPush(t *testing.T) {
	log := new(commitLog)
	ts := startServer(t, ServerConfig{Logger: slog.New(log)})
	c := ts.client(t)
	local := writeFile(t, 24<<20, 40)
	waited := func(_ engine.Upload, m *engine.Manifest) error {
		// Every chunk is on its way: the assembly reaches the file's
		// size less its write buffer at most.
		deadline := time.Now().Add(10 * time.Second)
		for {
			sizes := tempFilesOf(t, ts)
			if len(sizes) == 1 && sizes[0] >= m.Size-assembleBuffer {
				return nil
			}
			if time.Now().After(deadline) {
				t.Errorf("before the commit: temporary files of %v bytes, want one of %d less at most %d", sizes, m.Size, assembleBuffer)
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	pushAssembled(t, ts, log, beforeCommit{c, waited}, local, "d/big.bin", "during the push")
	// A re-push, of a file the server holds, assembles it again during
	// the push, from chunks that are all there.
	pushAssembled(t, ts, log, c, local, "d/big.bin", "during the push", "during the push")
}

// pushAssembled pushes local to remote through r and fails unless the
// server holds it, its commits so far were assembled as want says, and no
// temporary file is left.
func pushAssembled(t *testing.T, ts *testServer, log *commitLog, r engine.Remote, local, remote string, want ...string) {
	t.Helper()
	if _, err := engine.Push(context.Background(), r, local, remote, engine.PushOptions{Chunker: rabin(t)}); err != nil {
		t.Fatal(err)
	}
	sameContent(t, ts, local, remote)
	if got := log.all(); !slices.Equal(got, want) {
		t.Fatalf("commits assembled %q, want %q", got, want)
	}
	if sizes := tempFilesOf(t, ts); len(sizes) != 0 {
		t.Fatalf("temporary files left: %v", sizes)
	}
}

// A chunk list that the missing requests do not give in order, from the
// first chunk to the last, leaves the commit to assemble the file from the
// store; the file is the same.
func TestAssemblyFallsBack(t *testing.T) {
	for name, relist := range map[string]func(ctx context.Context, u engine.Upload, m *engine.Manifest) error{
		// A list from the start again that stops short: the chunks
		// assembled are fewer than the manifest's.
		"restarted short": func(ctx context.Context, u engine.Upload, m *engine.Manifest) error {
			_, err := u.Missing(ctx, 0, m.Chunks[:1])
			return err
		},
		// A list that goes back: the assembly stops.
		"went back": func(ctx context.Context, u engine.Upload, m *engine.Manifest) error {
			_, err := u.Missing(ctx, 1, m.Chunks[1:2])
			return err
		},
		// The same chunks listed in another order.
		"reordered": func(ctx context.Context, u engine.Upload, m *engine.Manifest) error {
			refs := slices.Clone(m.Chunks)
			refs[0], refs[1] = refs[1], refs[0]
			_, err := u.Missing(ctx, 0, refs)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			log := new(commitLog)
			ts := startServer(t, ServerConfig{Logger: slog.New(log)})
			c := ts.client(t)
			local := writeFile(t, 4<<20, 41)
			do := func(u engine.Upload, m *engine.Manifest) error {
				if len(m.Chunks) < 2 {
					t.Fatalf("%d chunks, the test needs two", len(m.Chunks))
				}
				return relist(context.Background(), u, m)
			}
			pushAssembled(t, ts, log, beforeCommit{c, do}, local, "f.bin", "at the commit")
		})
	}
}

// An assembly's file goes with its session: cancelled, expired, or when
// the server stops.
func TestAssemblyRemovedWithSession(t *testing.T) {
	ctx := context.Background()
	spec := engine.UploadSpec{Path: "a/b.bin", Size: 1 << 20, Mode: 0o644, ModTime: time.Now(), Chunker: rabin(t)}
	refs := []engine.ChunkRef{{ID: engine.SumChunk([]byte("absent")), Size: 6}}
	open := func(t *testing.T, ts *testServer) (*Client, engine.Upload) {
		t.Helper()
		c := ts.client(t)
		u, err := c.OpenUpload(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.Missing(ctx, 0, refs); err != nil {
			t.Fatal(err)
		}
		if n := len(tempFilesOf(t, ts)); n != 1 {
			t.Fatalf("%d temporary files after the first missing request, want the assembly's", n)
		}
		return c, u
	}
	t.Run("cancelled", func(t *testing.T) {
		ts := startServer(t, ServerConfig{})
		c, u := open(t, ts)
		if err := c.CancelSession(ctx, u.ID()); err != nil {
			t.Fatal(err)
		}
		if sizes := tempFilesOf(t, ts); len(sizes) != 0 {
			t.Fatalf("temporary files left after the cancel: %v", sizes)
		}
	})
	t.Run("expired", func(t *testing.T) {
		ts := startServer(t, ServerConfig{SessionIdle: 200 * time.Millisecond})
		open(t, ts)
		deadline := time.Now().Add(10 * time.Second)
		for len(tempFilesOf(t, ts)) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("temporary file left 10 s after its session's idle time")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("server stopped", func(t *testing.T) {
		ts := startServer(t, ServerConfig{})
		open(t, ts)
		ts.stop()
		if sizes := tempFilesOf(t, ts); len(sizes) != 0 {
			t.Fatalf("temporary files left by a stopped server: %v", sizes)
		}
	})
}

// withholding is a remote whose uploads drop the first chunk they are
// given to send, and hand it to held.
type withholding struct {
	*Client
	held chan<- engine.ChunkID
}

func (r withholding) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	u, err := r.Client.OpenUpload(ctx, spec)
	return &withheldUpload{Upload: u, held: r.held}, err
}

type withheldUpload struct {
	engine.Upload
	held chan<- engine.ChunkID
	once sync.Once
}

func (u *withheldUpload) Send(ctx context.Context, ch engine.EncodedChunk) error {
	withheld := false
	u.once.Do(func() { withheld = true })
	if !withheld {
		return u.Upload.Send(ctx, ch)
	}
	if ch.Release != nil {
		ch.Release()
	}
	u.held <- ch.ID
	return nil
}

// A client sends its commit as its streams send the last chunks, and the
// commit waits for the chunks on their way; one that names a chunk that
// does not come is refused once none has come for CommitWait.
func TestCommitAwaitsChunksOnTheirWay(t *testing.T) {
	log := new(commitLog)
	ts := startServer(t, ServerConfig{Logger: slog.New(log)})
	local := writeFile(t, 4<<20, 42)

	// 4 MiB at 8 MiB/s: the commit reaches the server long before the
	// last chunk.
	slow, err := ts.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = 8 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	push(t, slow, local, "slow.bin")
	sameContent(t, ts, local, "slow.bin")
	if a := log.allAwaited(); len(a) != 1 || a[0] == 0 {
		t.Fatalf("chunks awaited by the commit: %v, want some", a)
	}

	// A chunk held back until another push stores it, well after the
	// commit was sent.
	local = writeFile(t, 4<<20, 43)
	held := make(chan engine.ChunkID, 1)
	done := make(chan error, 1)
	go func() {
		_, err := engine.Push(t.Context(), withholding{ts.client(t), held}, local, "late.bin", engine.PushOptions{Chunker: rabin(t)})
		done <- err
	}()
	<-held
	time.Sleep(200 * time.Millisecond)
	push(t, ts.client(t), local, "other.bin")
	if err := <-done; err != nil {
		t.Fatalf("push whose chunk came late: %v", err)
	}
	sameContent(t, ts, local, "late.bin")

	// A commit that lacks more chunks than a client can have on their
	// way is refused without waiting.
	params := engine.ChunkerParams{Name: "fixed", Min: 4096, Avg: 4096, Max: 4096}
	m := &engine.Manifest{Path: "many.bin", Size: (maxAwaited + 1) * 4096, Chunker: params}
	for i := range maxAwaited + 1 {
		m.Chunks = append(m.Chunks, engine.ChunkRef{ID: engine.SumChunk(binary.AppendUvarint(nil, uint64(i))), Size: 4096})
	}
	c := ts.client(t)
	u, err := openSession(t.Context(), c, engine.UploadSpec{Path: m.Path, Size: m.Size, Chunker: params})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	body, err := u.commitBody(m)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.call(t.Context(), opCommit, body)
	refusal(t, err, statusMissing, fmt.Sprintf("%d chunks not stored, first %s", maxAwaited+1, m.Chunks[0].ID))
	if took := time.Since(start); took >= ts.cfg.CommitWait {
		t.Errorf("refused after %v, the commit wait is %v", took, ts.cfg.CommitWait)
	}

	// A chunk that never comes.
	ts = startServer(t, ServerConfig{CommitWait: 300 * time.Millisecond})
	go func() {
		_, err := engine.Push(t.Context(), withholding{ts.client(t), held}, local, "never.bin", engine.PushOptions{Chunker: rabin(t)})
		done <- err
	}()
	id := <-held
	err = <-done
	var se *ServerError
	if !errors.As(err, &se) || se.Status != statusMissing || !strings.Contains(se.Msg, "1 chunks not stored, first "+id.String()) {
		t.Fatalf("commit naming a chunk never sent: %v", err)
	}
	// The session goes on, with its assembly, for the client to send
	// the chunk and commit again.
	if sizes := tempFilesOf(t, ts); len(sizes) != 1 {
		t.Fatalf("after the refusal: temporary files of %v bytes, want the assembly's", sizes)
	}
}

// TestReattachRacesACommit: a push re-attaches to the session of an
// earlier push of the same file, whose commit then ends it (as when the
// earlier client was killed after its commit had gone). The open asks
// again in a session of its own, and the push completes.
func TestReattachRacesACommit(t *testing.T) {
	var hook atomic.Pointer[func(reattached bool)]
	ts := startServer(t, ServerConfig{afterOpen: func(reattached bool) {
		if h := hook.Load(); h != nil {
			(*h)(reattached)
		}
	}})
	local := writeFile(t, 1<<20, 81)
	ready, reattached := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	a := beforeCommit{ts.client(t), func(engine.Upload, *engine.Manifest) error {
		close(ready)
		select {
		case <-reattached:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("the second push never re-attached to this session")
		}
	}}
	go func() {
		_, err := engine.Push(t.Context(), a, local, "f.bin", engine.PushOptions{Chunker: rabin(t)})
		first <- err
	}()
	<-ready
	var once sync.Once
	h := func(again bool) {
		if again {
			// Hold the second push's open until the first push's
			// commit has ended the session it re-attached to.
			once.Do(func() {
				close(reattached)
				if err := <-first; err != nil {
					t.Errorf("first push: %v", err)
				}
			})
		}
	}
	hook.Store(&h)
	push(t, ts.client(t), local, "f.bin")
	select {
	case <-reattached:
	default:
		t.Fatal("the second push opened a session of its own at once: the race was not played")
	}
	sameContent(t, ts, local, "f.bin")
	if vs, err := ts.db.Versions(t.Context(), "f.bin"); err != nil || len(vs) != 2 {
		t.Errorf("versions %v (%v), want one from each push", vs, err)
	}
}

// TestOpenWaitsForACommitUnderWay: a push of a file whose earlier push's
// commit is still waiting for a chunk does not re-attach to the session
// that commit is about to end: its open waits, and then opens a session of
// its own.
func TestOpenWaitsForACommitUnderWay(t *testing.T) {
	var mu sync.Mutex
	var opens []bool // reattached, for each open
	ts := startServer(t, ServerConfig{afterOpen: func(reattached bool) {
		mu.Lock()
		defer mu.Unlock()
		opens = append(opens, reattached)
	}})
	local := writeFile(t, 1<<20, 82)
	held := make(chan engine.ChunkID, 1)
	first, second := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := engine.Push(t.Context(), withholding{ts.client(t), held}, local, "f.bin", engine.PushOptions{Chunker: rabin(t)})
		first <- err
	}()
	<-held
	// The first push's commit waits for the chunk it held back.
	deadline := time.Now().Add(10 * time.Second)
	for {
		sessions, err := ts.db.ListSessions(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(sessions) == 1 && ts.committing.ended(sessions[0].ID) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first push's commit never got under way")
		}
		time.Sleep(10 * time.Millisecond)
	}
	go func() {
		_, err := engine.Push(t.Context(), ts.client(t), local, "f.bin", engine.PushOptions{Chunker: rabin(t)})
		second <- err
	}()
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	waited := len(opens) == 1
	mu.Unlock()
	if !waited {
		t.Error("the second push's open went on while the first push's commit was under way")
	}
	// Another push stores the held chunk, and the first commit ends.
	push(t, ts.client(t), local, "other.bin")
	if err := <-first; err != nil {
		t.Fatalf("first push: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second push: %v", err)
	}
	sameContent(t, ts, local, "f.bin")
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(opens, true) {
		t.Errorf("opens re-attached %v, want none: the second push's session is its own", opens)
	}
	if vs, err := ts.db.Versions(t.Context(), "f.bin"); err != nil || len(vs) != 2 {
		t.Errorf("versions %v (%v), want one from each push", vs, err)
	}
}
