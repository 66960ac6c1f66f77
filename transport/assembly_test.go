package transport

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// commitLog is a slog.Handler that keeps how each commit's file was
// assembled, from the server's "committed" records.
type commitLog struct {
	mu        sync.Mutex
	assembled []string
}

func (l *commitLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *commitLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *commitLog) WithGroup(string) slog.Handler            { return l }

func (l *commitLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "committed" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "assembled" {
			l.mu.Lock()
			l.assembled = append(l.assembled, a.Value.String())
			l.mu.Unlock()
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
		// Every chunk is acknowledged: the assembly is at most its
		// write buffer behind.
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
