package transport

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// testServer is a real server on a loopback port, serving until the test ends.
type testServer struct {
	*Server
	token string
	stop  func()
	// crashed is set by crash: Serve's error is then expected.
	crashed atomic.Bool
}

func startServer(t *testing.T, cfg ServerConfig) *testServer {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	// A data directory kept from an earlier server of the test holds a
	// token named test already, which its clients go on using.
	token, err := NewToken(cfg.DataDir, "test")
	for i := 2; errors.Is(err, ErrTokenNameTaken); i++ {
		token, err = NewToken(cfg.DataDir, fmt.Sprintf("test-%d", i))
	}
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: srv, token: token}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx); err != nil && !ts.crashed.Load() {
			t.Errorf("serve: %v", err)
		}
	})
	var once sync.Once
	ts.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			srv.Close()
		})
	}
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) dial(t *testing.T, mod func(*ClientConfig)) (*Client, error) {
	t.Helper()
	cfg := ClientConfig{Addr: ts.Addr().String(), Token: ts.token, Fingerprint: ts.Fingerprint(), DialTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := Dial(context.Background(), cfg)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func (ts *testServer) client(t *testing.T) *Client {
	t.Helper()
	c, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// openSession opens an upload session for spec at once, as clients of
// protocol versions before 3 do; a later client opens it with the first
// missing request.
func openSession(ctx context.Context, c *Client, spec engine.UploadSpec) (*upload, error) {
	u, err := c.OpenUpload(ctx, spec)
	if err != nil {
		return nil, err
	}
	up := u.(*upload)
	if _, err := up.ensureOpen(ctx, 0, nil); err != nil {
		up.Close()
		return nil, err
	}
	return up, nil
}

// writeFile writes size seeded pseudo-random bytes to a new file.
func writeFile(t *testing.T, size int, seed uint64) string {
	t.Helper()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	rng.Read(data)
	p := filepath.Join(t.TempDir(), "src.bin")
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func rabin(t *testing.T) engine.ChunkerParams {
	t.Helper()
	k, err := engine.LookupChunker("rabin")
	if err != nil {
		t.Fatal(err)
	}
	return k.Defaults
}

func push(t *testing.T, c *Client, local, remote string) engine.PushResult {
	t.Helper()
	res, err := engine.Push(context.Background(), c, local, remote, engine.PushOptions{Chunker: rabin(t)})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return res
}

// sameContent fails unless the server's materialised file equals local.
func sameContent(t *testing.T, ts *testServer, local, remote string) {
	t.Helper()
	want, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(ts.cfg.FilesDir, remote))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s on the server differs from %s (%d vs %d bytes)", remote, local, len(got), len(want))
	}
}

func TestPushAndRepush(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	local := writeFile(t, 24<<20, 1)

	first := push(t, c, local, "dir/a.bin")
	sameContent(t, ts, local, "dir/a.bin")
	data, _ := os.ReadFile(local)
	if first.Manifest.Digests.BLAKE3 != blake3.Sum256(data) || first.Manifest.Digests.MD5 != md5.Sum(data) {
		t.Fatal("push reports digests that differ from the file's")
	}
	if first.Version != 1 || first.ChunksSent != len(first.Manifest.Chunks) {
		t.Fatalf("first push: version %d, sent %d of %d chunks", first.Version, first.ChunksSent, len(first.Manifest.Chunks))
	}

	before := c.Stats()
	second := push(t, c, local, "dir/a.bin")
	after := c.Stats()
	if second.ChunksSent != 0 || second.Version != 2 {
		t.Fatalf("re-push of an unchanged file sent %d chunks, version %d", second.ChunksSent, second.Version)
	}
	if wire := after.BytesSent - before.BytesSent; wire > uint64(len(data))/100 {
		t.Fatalf("re-push of an unchanged file sent %d wire bytes, over 1%% of %d", wire, len(data))
	}

	// Change 64 KiB in the middle: only the chunks around it travel.
	copy(data[len(data)/2:], bytes.Repeat([]byte{0xAB}, 64<<10))
	if err := os.WriteFile(local, data, 0o640); err != nil {
		t.Fatal(err)
	}
	third := push(t, c, local, "dir/a.bin")
	sameContent(t, ts, local, "dir/a.bin")
	if third.RawBytesSent > 4<<20 {
		t.Fatalf("64 KiB change re-sent %d bytes", third.RawBytesSent)
	}
}

// An open that asks, sent right behind a hello that an older server
// refuses, or sent once the refusal has arrived, is made again as that
// server's open and missing request.
func TestOpenBehindARefusedHello(t *testing.T) {
	refs := []engine.ChunkRef{{ID: engine.SumChunk([]byte("a")), Size: 1}, {ID: engine.SumChunk([]byte("b")), Size: 1}}
	for _, tc := range []struct {
		version uint32
		// behind holds the hello's refusal for 50 ms, until the open has
		// gone; otherwise the open waits for the refusal.
		behind bool
	}{{1, false}, {2, false}, {1, true}, {2, true}} {
		version := tc.version
		cfg := ServerConfig{version: version}
		if tc.behind {
			cfg.helloDelay = 50 * time.Millisecond
		}
		ts := startServer(t, cfg)
		for i := range 3 {
			c := ts.client(t)
			for deadline := time.Now().Add(5 * time.Second); !tc.behind && c.version.Load() == ProtocolVersion; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the refusal of the hello did not come")
				}
			}
			u, err := c.OpenUpload(t.Context(), engine.UploadSpec{Path: fmt.Sprintf("f%d.bin", i), Size: 2, Chunker: rabin(t)})
			if err != nil {
				t.Fatal(err)
			}
			missing, err := u.Missing(t.Context(), 0, refs)
			if err != nil || !slices.Equal(missing, []bool{true, true}) {
				t.Fatalf("version %d server, push %d: missing %v, %v", version, i, missing, err)
			}
			if got := c.version.Load(); got != version {
				t.Errorf("version %d server, push %d: the client speaks version %d", version, i, got)
			}
			if u.ID() == "" {
				t.Errorf("version %d server, push %d: no session", version, i)
			}
			u.Close()
		}
	}
}

// A push opens its session and asks about the file's first chunks in one
// round trip to a server of version 3, and in two to an older one. With a
// remembered base the first chunks travel as a delta against it; a server
// that no longer holds the base answers the open alone, and the push asks
// again in full.
func TestOpenAsksAboutFirstChunks(t *testing.T) {
	local := writeFile(t, 1<<20, 50)
	for _, c := range []struct {
		name     string
		version  uint32
		requests int // open, missing and commit
	}{
		{"version 3", 0, 2},
		{"version 2", 2, 3},
		{"version 1", 1, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{version: c.version})
			cl := ts.client(t)
			push(t, cl, local, "f.bin")
			sameContent(t, ts, local, "f.bin")
			if got := cl.Stats().Requests; got != c.requests {
				t.Errorf("a push of one batch took %d requests, want %d", got, c.requests)
			}
		})
	}

	ts := startServer(t, ServerConfig{KeepVersions: 1})
	cache := func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() }
	a, err := ts.dial(t, cache)
	if err != nil {
		t.Fatal(err)
	}
	pushWith(t, a, local, "f.bin", smallChunks)
	requests := func(cl *Client, local string) int {
		before := cl.Stats().Requests
		pushWith(t, cl, local, "f.bin", smallChunks)
		sameContent(t, ts, local, "f.bin")
		return cl.Stats().Requests - before
	}
	// Against version 1, which the server holds: the open with the
	// first chunks, the signature of the base chunks the edit replaced,
	// the commit.
	if got := requests(a, edit(t, local, 100<<10)); got != 3 {
		t.Errorf("re-push against a base the server holds: %d requests, want 3", got)
	}
	// Another client's push prunes version 2, a's base: the open, the
	// missing request in full, the commit.
	pushWith(t, ts.client(t), writeFile(t, 1<<20, 51), "f.bin", smallChunks)
	if got := requests(a, edit(t, local, 200<<10)); got != 3 {
		t.Errorf("re-push against a pruned base: %d requests, want 3", got)
	}
}

func TestAuthAndIdentity(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	t.Run("wrong token", func(t *testing.T) {
		// Dial does not wait for the hello's reply: the push's open goes
		// right behind the hello, and is refused with it.
		c, err := ts.dial(t, func(c *ClientConfig) { c.Token = "cs_wrong" })
		if err != nil {
			t.Fatal(err)
		}
		_, err = engine.Push(t.Context(), c, writeFile(t, 1<<20, 71), "refused.bin", engine.PushOptions{Chunker: rabin(t)})
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
		if _, _, err := ts.db.Manifest(t.Context(), "refused.bin", 0); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("a push with a refused token left a version: %v", err)
		}
		if sessions, err := ts.client(t).Sessions(t.Context()); err != nil || len(sessions) != 0 {
			t.Errorf("a push with a refused token left sessions %v (%v)", sessions, err)
		}
	})
	t.Run("wrong fingerprint", func(t *testing.T) {
		_, err := ts.dial(t, func(c *ClientConfig) { c.Fingerprint = "sha256:" + strings.Repeat("00", 32) })
		if !errors.Is(err, ErrIdentity) {
			t.Fatalf("got %v, want ErrIdentity", err)
		}
	})
	t.Run("no fingerprint, no known servers", func(t *testing.T) {
		_, err := ts.dial(t, func(c *ClientConfig) { c.Fingerprint = "" })
		if !errors.Is(err, ErrIdentity) {
			t.Fatalf("got %v, want ErrIdentity", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		pc.Close()
		_, err = Dial(context.Background(), ClientConfig{Addr: addr, Token: "x", Fingerprint: ts.Fingerprint(), DialTimeout: 500 * time.Millisecond})
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("got %v, want ErrUnreachable", err)
		}
		if want := "server unreachable: no answer from " + addr + " within 500ms"; err.Error() != want {
			t.Errorf("error reads %q, want %q", err, want)
		}
	})
}

func TestTrustOnFirstUse(t *testing.T) {
	a := startServer(t, ServerConfig{})
	addr := a.Addr().String()
	known := filepath.Join(t.TempDir(), "known_servers")
	tofu := func(c *ClientConfig) { c.Fingerprint, c.KnownServers = "", known }
	if _, err := a.dial(t, tofu); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if fp, err := (KnownServers{Path: known}).Lookup(addr); err != nil || fp != a.Fingerprint() {
		t.Fatalf("known servers remembers %q (%v), want %s", fp, err, a.Fingerprint())
	}
	if _, err := a.dial(t, tofu); err != nil {
		t.Fatalf("second use: %v", err)
	}
	a.stop()

	// Another server (a new identity) on the same address is refused.
	b := startServer(t, ServerConfig{Listen: addr})
	_, err := b.dial(t, tofu)
	if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), "CHANGED") {
		t.Fatalf("changed identity: got %v", err)
	}
}

func TestRefusedPaths(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(ts.cfg.FilesDir, "escape")); err != nil {
		t.Fatal(err)
	}
	local := writeFile(t, 1<<20, 2)
	for _, p := range []string{"", "../x", "/etc/passwd", "a/../../b", "a/./b", "a\x00b", `a\b`, "escape/x", strings.Repeat("a", 5000), ".chunksync-tmp-1"} {
		_, err := engine.Push(context.Background(), c, local, p, engine.PushOptions{Chunker: rabin(t)})
		if err == nil {
			t.Errorf("push to %q succeeded", p)
			continue
		}
		var se *ServerError
		if !errors.As(err, &se) {
			t.Errorf("push to %q: %v is not a server refusal", p, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("files written outside the files root: %v", entries)
	}
}

// fakeRemote wraps a real upload to send chunks that lie about their ID.
type lyingRemote struct{ *Client }

func (r lyingRemote) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	u, err := r.Client.OpenUpload(ctx, spec)
	return lyingUpload{u}, err
}

type lyingUpload struct{ engine.Upload }

func (u lyingUpload) Send(ctx context.Context, c engine.EncodedChunk) error {
	c.ID[0] ^= 1
	return u.Upload.Send(ctx, c)
}

func TestChunkMismatchRefused(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	local := writeFile(t, 4<<20, 3)
	_, err := engine.Push(context.Background(), lyingRemote{c}, local, "x.bin", engine.PushOptions{Chunker: rabin(t)})
	if err == nil || !strings.Contains(err.Error(), "do not match") {
		t.Fatalf("push of lying chunks: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.cfg.FilesDir, "x.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file materialised from refused chunks: %v", err)
	}
	// The honest push that follows works and stores every chunk.
	push(t, c, local, "x.bin")
	sameContent(t, ts, local, "x.bin")
}

func TestLyingManifestKeepsPreviousVersion(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	local := writeFile(t, 4<<20, 4)
	push(t, c, local, "v.bin")
	prev, _ := os.ReadFile(filepath.Join(ts.cfg.FilesDir, "v.bin"))

	other := writeFile(t, 4<<20, 5)
	for name, lie := range map[string]func(m *engine.Manifest){
		"blake3": func(m *engine.Manifest) { m.Digests.BLAKE3[0] ^= 1 },
		"md5":    func(m *engine.Manifest) { m.Digests.MD5[0] ^= 1 },
	} {
		t.Run(name, func(t *testing.T) {
			_, err := engine.Push(context.Background(), manifestLiar{c, lie}, other, "v.bin", engine.PushOptions{Chunker: rabin(t)})
			if !strings.Contains(errString(err), "does not match manifest") {
				t.Fatalf("lying manifest: %v", err)
			}
			got, _ := os.ReadFile(filepath.Join(ts.cfg.FilesDir, "v.bin"))
			if !bytes.Equal(got, prev) {
				t.Fatal("previous version damaged by a refused commit")
			}
			entries, _ := os.ReadDir(ts.cfg.FilesDir)
			if len(entries) != 1 {
				t.Fatalf("files root holds %d entries after a refused commit", len(entries))
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

type manifestLiar struct {
	*Client
	lie func(*engine.Manifest)
}

func (r manifestLiar) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	u, err := r.Client.OpenUpload(ctx, spec)
	return lyingCommit{u, r.lie}, err
}

type lyingCommit struct {
	engine.Upload
	lie func(*engine.Manifest)
}

func (u lyingCommit) Commit(ctx context.Context, m *engine.Manifest) (engine.CommitResult, error) {
	lied := *m
	u.lie(&lied)
	return u.Upload.Commit(ctx, &lied)
}

// Every control request uses a stream; streams must be retired so that a
// long push can make more requests than the server's stream limit.
func TestDataStreams(t *testing.T) {
	for _, tc := range []struct {
		streams    int
		maxStreams uint32
		want       int
	}{
		{8, 64, 8},
		{16, 4, 2},
		{16, 10, 8},
		{4, 2, 1},
		{4, 0, 1},
		{1 << 20, 1<<32 - 1, 1 << 20},
	} {
		c := &Client{cfg: ClientConfig{Streams: tc.streams}}
		c.maxStreams.Store(tc.maxStreams)
		if got := c.dataStreams(); got != tc.want {
			t.Errorf("Streams %d, server MaxStreams %d: %d data streams, want %d", tc.streams, tc.maxStreams, got, tc.want)
		}
	}
}

// TestStreamsClampedToServer checks that a client asking for more data
// streams than the server allows on a connection still completes a push:
// it opens fewer, and leaves room for its control requests.
func TestStreamsClampedToServer(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxStreams: 4})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams = 16 })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.helloAnswered(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := c.dataStreams(); n != 2 {
		t.Errorf("%d data streams against a server allowing 4 streams, want 2", n)
	}
	local := writeFile(t, 8<<20, 3)
	// Without the clamp the push never ends: bound it rather than hang.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := engine.Push(ctx, c, local, "s.bin", engine.PushOptions{Chunker: rabin(t)}); err != nil {
		t.Fatalf("push with 16 streams against a server allowing 4: %v", err)
	}
	sameContent(t, ts, local, "s.bin")
}

func TestManyRequestsOneConnection(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxStreams: 8})
	c := ts.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 100 {
		if _, err := c.Sessions(ctx); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if st := c.Stats(); st.Connections != 1 {
		t.Fatalf("used %d connections", st.Connections)
	}
}

// Concurrent commits of one path are serialised, and the lock table is
// empty again once they are done.
func TestConcurrentCommitsOfOnePath(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	files := []string{writeFile(t, 2<<20, 21), writeFile(t, 2<<20, 22), writeFile(t, 2<<20, 23)}
	params := rabin(t)
	errs := make(chan error, len(files))
	var wg sync.WaitGroup
	for _, f := range files {
		c := ts.client(t)
		wg.Go(func() {
			_, err := engine.Push(context.Background(), c, f, "same.bin", engine.PushOptions{Chunker: params})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	versions, err := ts.db.Versions(context.Background(), "same.bin")
	if err != nil || len(versions) != len(files) {
		t.Fatalf("%d versions (%v), want %d", len(versions), err, len(files))
	}
	ts.commitMu.Lock()
	defer ts.commitMu.Unlock()
	if len(ts.commits) != 0 {
		t.Fatalf("%d path locks left after the commits ended", len(ts.commits))
	}
}
