package transport

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// smallChunks cuts finely, so that chunk lists are long enough for their
// cost on the wire to show.
var smallChunks = engine.ChunkerParams{Name: "fastcdc", Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

// edit returns a copy of the file at src with n bytes overwritten at each
// of offs, written to a new file.
func edit(t *testing.T, src string, offs ...int) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range offs {
		copy(data[off:], bytes.Repeat([]byte("edited!"), 100))
	}
	p := filepath.Join(t.TempDir(), "edited.bin")
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func pushWith(t *testing.T, c *Client, local, remote string, p engine.ChunkerParams) engine.PushResult {
	t.Helper()
	res, err := engine.Push(t.Context(), c, local, remote, engine.PushOptions{Chunker: p})
	if err != nil {
		t.Fatalf("push %s: %v", remote, err)
	}
	return res
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	if err := filesEqual(a, b); err != nil {
		t.Fatal(err)
	}
}

func TestPullVersionsOntoOldCopy(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	v1 := writeFile(t, 8<<20, 1)
	v2 := edit(t, v1, 1<<20, 5<<20)
	pushWith(t, c, v1, "dir/f.bin", rabin(t))
	pushWith(t, c, v2, "dir/f.bin", rabin(t))
	pushWith(t, c, v1, "other.bin", rabin(t))

	list, err := c.List(t.Context(), "dir/")
	if err != nil || len(list) != 1 || list[0].Path != "dir/f.bin" || list[0].Number != 2 || list[0].Size != 8<<20 {
		t.Fatalf("list dir/: %+v, %v", list, err)
	}
	if all, err := c.List(t.Context(), ""); err != nil || len(all) != 2 || all[0].Path != "dir/f.bin" || all[1].Path != "other.bin" {
		t.Fatalf("list all: %+v, %v", all, err)
	}
	versions, err := c.Versions(t.Context(), "dir/f.bin")
	if err != nil || len(versions) != 2 || versions[0].Number != 1 || versions[1].Number != 2 || versions[0].Digests == versions[1].Digests {
		t.Fatalf("versions: %+v, %v", versions, err)
	}
	if _, err := c.Versions(t.Context(), "nope"); !isStatus(err, statusNotFound) {
		t.Fatalf("versions of an unknown path: %v", err)
	}

	// Pull v2 onto a copy of v1 elsewhere: only the edited chunks travel.
	local := filepath.Join(t.TempDir(), "f.bin")
	copyFile(t, v1, local)
	_, m, err := c.Manifest(t.Context(), "dir/f.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	res, err := engine.Pull(t.Context(), c, m, local, engine.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, local, v2)
	if res.ChunksFetched == 0 || res.ChunksFetched > 4 || res.BytesReused < 6<<20 {
		t.Errorf("pull onto v1 fetched %d chunks (%d bytes) and reused %d bytes", res.ChunksFetched, res.BytesFetched, res.BytesReused)
	}
	// And version 1 back again, by number.
	_, m1, err := c.Manifest(t.Context(), "dir/f.bin", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.Pull(t.Context(), c, m1, local, engine.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameFile(t, local, v1)
	if _, _, err := c.Manifest(t.Context(), "dir/f.bin", 9); !isStatus(err, statusNotFound) {
		t.Fatalf("manifest of a version that does not exist: %v", err)
	}
}

func isStatus(err error, status byte) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Status == status
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// countingFetcher fails after limit chunks, as a pull whose link dies.
type countingFetcher struct {
	*Client
	limit int64
	n     atomic.Int64
}

var errCut = errors.New("link cut")

func (f *countingFetcher) Fetch(ctx context.Context, refs []engine.ChunkRef, got func(engine.ChunkRef, []byte) error) error {
	return f.Client.Fetch(ctx, refs, func(r engine.ChunkRef, data []byte) error {
		if f.n.Add(1) > f.limit {
			return errCut
		}
		return got(r, data)
	})
}

func TestInterruptedPullResumes(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	src := writeFile(t, 16<<20, 2)
	p := engine.ChunkerParams{Name: "fixed", Min: 256 << 10, Avg: 256 << 10, Max: 256 << 10}
	pushWith(t, c, src, "big.bin", p)
	_, m, err := c.Manifest(t.Context(), "big.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "big.bin")
	cut := &countingFetcher{Client: c, limit: 20}
	if _, err := engine.Pull(t.Context(), cut, m, local, engine.PullOptions{}); !errors.Is(err, errCut) {
		t.Fatalf("pull over a cut link: %v", err)
	}
	if _, err := os.Stat(local); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted pull left %s: %v", local, err)
	}
	again := &countingFetcher{Client: c, limit: 1 << 30}
	res, err := engine.Pull(t.Context(), again, m, local, engine.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, local, src)
	if res.Resumed < 20*256<<10 || res.ChunksFetched > 64-20 {
		t.Errorf("resumed pull: %d bytes in place, %d chunks fetched of 64", res.Resumed, res.ChunksFetched)
	}
	if _, err := os.Stat(engine.PartialPath(local)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial file left after a successful pull: %v", err)
	}
}

// TestChunkListsTravelAsDeltas pushes and pulls an edited file with fine
// chunks: a client that remembers the previous version sends and receives
// chunk lists as deltas, a fraction of the bytes of a client that does not.
func TestChunkListsTravelAsDeltas(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	v1 := writeFile(t, 8<<20, 3) // about 2000 chunks
	v2 := edit(t, v1, 3<<20)
	cache := func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() }

	first, err := ts.dial(t, cache)
	if err != nil {
		t.Fatal(err)
	}
	pushWith(t, first, v1, "f.bin", smallChunks)
	before := first.Stats().BytesSent
	res := pushWith(t, first, v2, "f.bin", smallChunks)
	withCache := first.Stats().BytesSent - before

	plain := ts.client(t)
	before = plain.Stats().BytesSent
	pushWith(t, plain, v2, "g.bin", smallChunks) // all its chunks are stored already
	without := plain.Stats().BytesSent - before
	t.Logf("re-push of an edit: %d bytes sent with a remembered base, %d without", withCache, without)
	if res.ChunksSent == 0 || withCache*4 > without {
		t.Errorf("re-push of an edit: %d bytes sent with a remembered base, %d without", withCache, without)
	}
	sameContent(t, ts, v2, "f.bin")

	// A pull by a client that remembers version 1 gets version 2's
	// manifest as a delta.
	other, err := ts.dial(t, cache)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Manifest(t.Context(), "f.bin", 1); err != nil {
		t.Fatal(err)
	}
	before = other.Stats().BytesReceived
	_, m, err := other.Manifest(t.Context(), "f.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	delta := other.Stats().BytesReceived - before
	if m.Digests != res.Manifest.Digests || len(m.Chunks) != len(res.Manifest.Chunks) {
		t.Fatal("manifest fetched as a delta differs from the one pushed")
	}
	t.Logf("manifest of %d chunks: %d bytes on the wire as a delta", len(m.Chunks), delta)
	if full := uint64(len(m.Chunks) * 33); delta*4 > full {
		t.Errorf("manifest of %d chunks as a delta took %d bytes on the wire (full list: %d)", len(m.Chunks), delta, full)
	}
}

// TestStaleBaseFallsBack: a client whose remembered version was pruned on
// the server pushes with full chunk lists, and still succeeds.
func TestStaleBaseFallsBack(t *testing.T) {
	ts := startServer(t, ServerConfig{KeepVersions: 1})
	cached, err := ts.dial(t, func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() })
	if err != nil {
		t.Fatal(err)
	}
	v1 := writeFile(t, 2<<20, 4)
	v2 := edit(t, v1, 1<<20)
	v3 := edit(t, v2, 0)
	// v2 and v3 have one size; written within one tick of the file
	// system's clock, they would have one modification time too, and the
	// other client's push of v2 would re-attach to the session of v3 and
	// end it (a run of the suite failed so: "upload session not found").
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(v3, later, later); err != nil {
		t.Fatal(err)
	}
	pushWith(t, cached, v1, "f.bin", smallChunks)
	pushWith(t, ts.client(t), v2, "f.bin", smallChunks) // prunes version 1
	res := pushWith(t, cached, v3, "f.bin", smallChunks)
	if res.Version != 3 {
		t.Fatalf("version %d, want 3", res.Version)
	}
	sameContent(t, ts, v3, "f.bin")
	if _, _, err := cached.Manifest(t.Context(), "f.bin", 0); err != nil {
		t.Fatal(err)
	}
}

// TestCollectReclaimsPrunedVersions: with two versions kept, a collection
// deletes the chunks only the pruned version held, and the kept versions
// still pull.
func TestCollectReclaimsPrunedVersions(t *testing.T) {
	ts := startServer(t, ServerConfig{KeepVersions: 2})
	c := ts.client(t)
	p := engine.ChunkerParams{Name: "fixed", Min: 64 << 10, Avg: 64 << 10, Max: 64 << 10}
	v1 := writeFile(t, 1<<20, 5)
	v2 := edit(t, v1, 0)       // changes chunk 0
	v3 := edit(t, v2, 512<<10) // changes chunk 8
	for _, f := range []string{v1, v2, v3} {
		pushWith(t, c, f, "f.bin", p)
	}
	if vs, err := c.Versions(t.Context(), "f.bin"); err != nil || len(vs) != 2 || vs[0].Number != 2 {
		t.Fatalf("versions after 3 pushes keeping 2: %+v, %v", vs, err)
	}
	st, err := c.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// v1's first chunk is the only one no kept version holds.
	if st.ChunksDeleted != 1 || st.RawBytesFreed != 64<<10 || st.Versions != 2 || st.ChunksMarked != 17 {
		t.Errorf("collect: %+v", st)
	}
	if st, err := c.Collect(t.Context()); err != nil || st.ChunksDeleted != 0 {
		t.Errorf("second collect: %+v, %v", st, err)
	}
	for n, want := range map[uint64]string{2: v2, 3: v3} {
		_, m, err := c.Manifest(t.Context(), "f.bin", n)
		if err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(t.TempDir(), "f.bin")
		if _, err := engine.Pull(t.Context(), c, m, local, engine.PullOptions{}); err != nil {
			t.Fatalf("pull version %d after gc: %v", n, err)
		}
		sameFile(t, local, want)
	}
}

// TestCollectDuringPushes runs garbage collection over and over while
// clients push files that share chunks with pruned versions: every push
// commits and every committed file is whole.
func TestCollectDuringPushes(t *testing.T) {
	ts := startServer(t, ServerConfig{KeepVersions: 1})
	p := engine.ChunkerParams{Name: "fixed", Min: 16 << 10, Avg: 16 << 10, Max: 16 << 10}
	base := writeFile(t, 1<<20, 6)
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var collections atomic.Int64
	wg.Go(func() {
		c := ts.client(t)
		for ctx.Err() == nil {
			if _, err := c.Collect(ctx); err != nil && ctx.Err() == nil && !isStatus(err, statusError) {
				t.Errorf("collect: %v", err)
				return
			}
			collections.Add(1)
		}
	})
	var pushers sync.WaitGroup
	for w := range 3 {
		pushers.Go(func() {
			c := ts.client(t)
			for i := range 6 {
				// Each version rewrites one chunk and keeps the rest, so
				// most of its chunks were answered present and are
				// referenced only by the version the push replaces.
				f := edit(t, base, ((w*6+i)%64)<<14)
				name := filepath.Join("w", string(rune('a'+w)))
				if _, err := engine.Push(ctx, c, f, name, engine.PushOptions{Chunker: p}); err != nil {
					t.Errorf("push %d of worker %d: %v", i, w, err)
					return
				}
				sameContent(t, ts, f, name)
			}
		})
	}
	pushers.Wait()
	stop()
	wg.Wait()
	if collections.Load() < 2 {
		t.Errorf("only %d collections ran during the pushes", collections.Load())
	}
	// The last collection the loop asked for may still run on the
	// server, its client gone.
	var st index.GCStats
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, err = ts.client(t).Collect(t.Context())
		if !isStatus(err, statusError) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.Versions != 3 {
		t.Errorf("after the pushes: %+v", st)
	}
	for w := range 3 {
		name := filepath.Join("w", string(rune('a'+w)))
		_, m, err := ts.client(t).Manifest(t.Context(), name, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := engine.Pull(t.Context(), ts.client(t), m, filepath.Join(t.TempDir(), "x"), engine.PullOptions{}); err != nil {
			t.Fatalf("pull %s after the collections: %v", name, err)
		}
	}
}

func TestFetchRefusals(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	unknown := engine.ChunkRef{ID: engine.SumChunk([]byte("never stored")), Size: 12}
	err := c.Fetch(t.Context(), []engine.ChunkRef{unknown}, func(engine.ChunkRef, []byte) error { return nil })
	if !isStatus(err, statusNotFound) {
		t.Fatalf("fetch of an unknown chunk: %v", err)
	}
	// A request above the limit is refused before anything is read.
	conn, _, err := c.connection(t.Context(), 0, false)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]engine.ChunkRef, maxFetchRefs+1)
	_, err = c.fetchStream(t.Context(), conn, refs, func(engine.ChunkRef, []byte) error { return nil }, t.Context(), func() bool { return false })
	if !isStatus(err, statusBadRequest) {
		t.Fatalf("fetch of %d chunks: %v", len(refs), err)
	}
	var gcs index.GCStats
	if gcs, err = c.Collect(t.Context()); err != nil || gcs.ChunksDeleted != 0 {
		t.Fatalf("collect on an empty server: %+v, %v", gcs, err)
	}
}

// pruningRemote opens uploads through a client, then has the base version
// pruned on the server and its cached copy dropped, as happens when
// another client pushes while this upload runs.
type pruningRemote struct {
	*Client
	prune func()
}

func (r pruningRemote) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	up, err := r.Client.OpenUpload(ctx, spec)
	if err == nil {
		r.prune()
	}
	return up, err
}

func TestBasePrunedDuringPush(t *testing.T) {
	ts := startServer(t, ServerConfig{KeepVersions: 1})
	cached, err := ts.dial(t, func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() })
	if err != nil {
		t.Fatal(err)
	}
	v1 := writeFile(t, 2<<20, 8)
	v2 := edit(t, v1, 1<<20)
	v3 := edit(t, v2, 0)
	pushWith(t, cached, v1, "f.bin", smallChunks)
	other := ts.client(t)
	r := pruningRemote{Client: cached, prune: func() {
		pushWith(t, other, v2, "f.bin", smallChunks)
		ts.bases.mu.Lock()
		ts.bases.m, ts.bases.order, ts.bases.chunks = nil, nil, 0
		ts.bases.mu.Unlock()
	}}
	res, err := engine.Push(t.Context(), r, v3, "f.bin", engine.PushOptions{Chunker: smallChunks})
	if err != nil {
		t.Fatalf("push whose base was pruned: %v", err)
	}
	if res.Version != 3 {
		t.Fatalf("version %d, want 3", res.Version)
	}
	sameContent(t, ts, v3, "f.bin")
}

// TestPushSendsDeltas: a client that remembers the version the server
// holds sends the chunks of an edit as a delta against the chunks they
// replaced, a fraction of their compressed size.
func TestPushSendsDeltas(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() })
	if err != nil {
		t.Fatal(err)
	}
	v1 := textFile(t)
	v2 := edit(t, v1, 1<<20, 4<<20)
	p := engine.ChunkerParams{Name: "fastcdc", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	pushWith(t, c, v1, "f.txt", p)
	res := pushWith(t, c, v2, "f.txt", p)
	sameContent(t, ts, v2, "f.txt")
	t.Logf("re-push of 2 edits: %d chunks, %d raw bytes as %d bytes", res.ChunksSent, res.RawBytesSent, res.BytesSent)
	if res.ChunksSent == 0 || res.BytesSent*20 > res.RawBytesSent {
		t.Errorf("re-push of 2 edits: %d chunks, %d raw bytes as %d bytes", res.ChunksSent, res.RawBytesSent, res.BytesSent)
	}
}

// textFile writes a file of repetitive text with sparse variations: data
// whose edits compress well against what they replaced.
func textFile(t *testing.T) string {
	t.Helper()
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog, again and again; "), 1<<17)
	for i := range text {
		if i%997 == 0 {
			text[i] = byte('a' + i%26)
		}
	}
	p := filepath.Join(t.TempDir(), "v1.txt")
	if err := os.WriteFile(p, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPullFetchesDeltas: a pull onto an old copy that the server keeps
// receives the changed chunks as a delta against the local ones they
// replaced.
func TestPullFetchesDeltas(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	// Random bytes: the changed chunks do not compress, so only a delta
	// against the chunks they replaced makes them small.
	v1 := writeFile(t, 8<<20, 9)
	v2 := edit(t, v1, 1<<20, 4<<20)
	p := engine.ChunkerParams{Name: "fastcdc", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	pushWith(t, c, v1, "f.txt", p)
	pushWith(t, c, v2, "f.txt", p)
	_, m, err := c.Manifest(t.Context(), "f.txt", 0)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "f.txt")
	copyFile(t, v1, local)
	before := c.Stats().BytesReceived
	res, err := engine.Pull(t.Context(), c, m, local, engine.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, local, v2)
	got := c.Stats().BytesReceived - before
	t.Logf("pull of 2 edits: %d chunks, %d raw bytes, %d bytes received", res.ChunksFetched, res.BytesFetched, got)
	if res.ChunksFetched == 0 || got*10 > uint64(res.BytesFetched) {
		t.Errorf("pull of 2 edits: %d chunks, %d raw bytes, %d bytes received", res.ChunksFetched, res.BytesFetched, got)
	}
}

// TestPullDeltaFallsBack: a local copy the server never held gets its
// changed chunks in full, and the result is right.
func TestPullDeltaFallsBack(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	v1 := textFile(t)
	v2 := edit(t, v1, 1<<20)
	p := engine.ChunkerParams{Name: "fastcdc", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	pushWith(t, c, v2, "f.txt", p)
	_, m, err := c.Manifest(t.Context(), "f.txt", 0)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "f.txt")
	copyFile(t, v1, local) // v1 was never pushed: the server lacks its chunk
	res, err := engine.Pull(t.Context(), c, m, local, engine.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, local, v2)
	if res.ChunksFetched == 0 {
		t.Error("nothing fetched")
	}
}

// corruptingRemote damages the payload of every delta its uploads send, as
// a false match of a short sub-chunk hash would make the server refuse it.
type corruptingRemote struct{ *Client }

func (r corruptingRemote) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	up, err := r.Client.OpenUpload(ctx, spec)
	if err != nil {
		return nil, err
	}
	return corruptingUpload{up.(*upload)}, nil
}

type corruptingUpload struct{ *upload }

func (u corruptingUpload) SendDelta(ctx context.Context, d engine.EncodedDelta) error {
	d.Payload = bytes.Clone(d.Payload)
	d.Payload[len(d.Payload)-1] ^= 0xff // the zstd frame's checksum
	return u.upload.SendDelta(ctx, d)
}

// TestRefusedDeltaFallsBack: a push whose delta the server refuses goes on
// without deltas and commits.
func TestRefusedDeltaFallsBack(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.CacheDir = t.TempDir() })
	if err != nil {
		t.Fatal(err)
	}
	v1 := writeFile(t, 4<<20, 12)
	v2 := edit(t, v1, 2<<20)
	p := engine.ChunkerParams{Name: "fastcdc", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	pushWith(t, c, v1, "f.bin", p)
	res, err := engine.Push(t.Context(), corruptingRemote{c}, v2, "f.bin", engine.PushOptions{Chunker: p})
	if err != nil {
		t.Fatalf("push whose delta was refused: %v", err)
	}
	sameContent(t, ts, v2, "f.bin")
	if res.ChunksSent == 0 || res.BytesSent < res.RawBytesSent/2 {
		t.Errorf("after the refusal the chunks went as they are: %d chunks, %d of %d bytes", res.ChunksSent, res.BytesSent, res.RawBytesSent)
	}
}
