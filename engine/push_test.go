package engine

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// memRemote is an in-memory Remote: a chunk store and the latest manifest
// of every path, enough to test the push plan without a network.
type memRemote struct {
	mu       sync.Mutex
	chunks   map[ChunkID][]byte
	files    map[string][]byte
	asked    int // chunks asked about
	failSend error
}

func newMemRemote() *memRemote {
	return &memRemote{chunks: map[ChunkID][]byte{}, files: map[string][]byte{}}
}

func (r *memRemote) OpenUpload(ctx context.Context, spec UploadSpec) (Upload, error) {
	return &memUpload{r: r}, nil
}

func (r *memRemote) Get(ctx context.Context, id ChunkID, dst []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, ok := r.chunks[id]
	if !ok {
		return nil, fmt.Errorf("chunk %s missing", id)
	}
	return append(dst[:0], data...), nil
}

type memUpload struct{ r *memRemote }

func (u *memUpload) ID() string { return "mem" }

func (u *memUpload) Missing(ctx context.Context, first int, refs []ChunkRef) ([]bool, error) {
	u.r.mu.Lock()
	defer u.r.mu.Unlock()
	u.r.asked += len(refs)
	missing := make([]bool, len(refs))
	for i, ref := range refs {
		_, has := u.r.chunks[ref.ID]
		missing[i] = !has
	}
	return missing, nil
}

func (u *memUpload) Send(ctx context.Context, c EncodedChunk) error {
	if u.r.failSend != nil {
		return u.r.failSend
	}
	raw, err := Decompress(nil, c.Codec, c.Payload, int(c.RawSize))
	if err != nil {
		return err
	}
	if err := VerifyChunk(c.ID, raw); err != nil {
		return err
	}
	u.r.mu.Lock()
	u.r.chunks[c.ID] = raw
	u.r.mu.Unlock()
	c.Release()
	return nil
}

func (u *memUpload) Commit(ctx context.Context, m *Manifest) (CommitResult, error) {
	var out bytes.Buffer
	if err := Assemble(ctx, m, u.r, &out); err != nil {
		return CommitResult{}, err
	}
	u.r.mu.Lock()
	defer u.r.mu.Unlock()
	u.r.files[m.Path] = out.Bytes()
	return CommitResult{Version: 1}, nil
}

func (u *memUpload) Close() error { return nil }

type countingProgress struct {
	mu    sync.Mutex
	bytes map[Stage]int64
}

func (p *countingProgress) Add(s Stage, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytes[s] += n
}

func TestPushToMemRemote(t *testing.T) {
	data := append(tarLikeData(1, 6<<20), randomData(2, 3<<20)...)
	data = append(data, data[:2<<20]...) // a repeated region: sent once
	local := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range ChunkerKinds() {
		t.Run(k.Name, func(t *testing.T) {
			r := newMemRemote()
			p := &countingProgress{bytes: map[Stage]int64{}}
			res, err := Push(context.Background(), r, local, "f", PushOptions{Chunker: k.Defaults, Progress: p, BatchChunks: 7})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(r.files["f"], data) {
				t.Fatal("assembled file differs")
			}
			if p.bytes[StageScanned] != int64(len(data)) || p.bytes[StagePresent]+p.bytes[StageStored] != int64(len(data)) {
				t.Fatalf("progress %v does not add up to %d", p.bytes, len(data))
			}
			if res.ChunksSent != len(r.chunks) {
				t.Fatalf("sent %d chunks, the remote holds %d distinct", res.ChunksSent, len(r.chunks))
			}
			again, err := Push(context.Background(), r, local, "f", PushOptions{Chunker: k.Defaults})
			if err != nil || again.ChunksSent != 0 {
				t.Fatalf("re-push sent %d chunks: %v", again.ChunksSent, err)
			}
		})
	}
}

func TestPushSendFailure(t *testing.T) {
	local := filepath.Join(t.TempDir(), "f")
	os.WriteFile(local, randomData(3, 4<<20), 0o600)
	r := newMemRemote()
	r.failSend = errors.New("link down")
	k, _ := LookupChunker("rabin")
	_, err := Push(context.Background(), r, local, "f", PushOptions{Chunker: k.Defaults})
	if err == nil || !errors.Is(err, r.failSend) {
		t.Fatalf("push with failing sends: %v", err)
	}
	if _, ok := r.files["f"]; ok {
		t.Fatal("a failed push committed")
	}
}

func TestAssembleRefusesLies(t *testing.T) {
	r := newMemRemote()
	a, b := randomData(4, 1000), randomData(5, 2000)
	r.chunks[SumChunk(a)], r.chunks[SumChunk(b)] = a, b
	whole := append(append([]byte{}, a...), b...)
	k, _ := LookupChunker("fixed")
	good := Manifest{Path: "x", Size: 3000, Chunker: k.Defaults,
		Chunks: []ChunkRef{{SumChunk(a), 1000}, {SumChunk(b), 2000}}}
	good.Digests = digestsOf(whole)
	var out bytes.Buffer
	if err := Assemble(context.Background(), &good, r, &out); err != nil || !bytes.Equal(out.Bytes(), whole) {
		t.Fatalf("honest manifest: %v", err)
	}
	for name, lie := range map[string]func(m *Manifest){
		"blake3":     func(m *Manifest) { m.Digests.BLAKE3[3] ^= 1 },
		"md5":        func(m *Manifest) { m.Digests.MD5[3] ^= 1 },
		"size":       func(m *Manifest) { m.Size++ },
		"chunk size": func(m *Manifest) { m.Chunks[0].Size-- },
	} {
		t.Run(name, func(t *testing.T) {
			m := good
			m.Chunks = append([]ChunkRef(nil), good.Chunks...)
			lie(&m)
			if err := Assemble(context.Background(), &m, r, &bytes.Buffer{}); !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("got %v, want ErrDigestMismatch", err)
			}
		})
	}
	m := good
	m.Chunks = []ChunkRef{{SumChunk([]byte("absent")), 6}}
	if err := Assemble(context.Background(), &m, r, &bytes.Buffer{}); err == nil {
		t.Fatal("assembled a manifest naming an absent chunk")
	}
}

// countingSource counts the bytes a ChunkSource has given.
type countingSource struct {
	ChunkSource
	given atomic.Int64
}

func (c *countingSource) Get(ctx context.Context, id ChunkID, dst []byte) ([]byte, error) {
	b, err := c.ChunkSource.Get(ctx, id, dst)
	c.given.Add(int64(len(b)))
	return b, err
}

// blockedWriter holds its first Write until release is closed.
type blockedWriter struct {
	bytes.Buffer
	release chan struct{}
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	<-w.release
	return w.Buffer.Write(p)
}

// TestAssembleHoldsBoundedMemory stops Assemble's writer and checks that
// the chunks fetched meanwhile stay within AssembleMemory, the reservation
// a server's commit makes for it, rather than run through the manifest.
func TestAssembleHoldsBoundedMemory(t *testing.T) {
	r := newMemRemote()
	var whole []byte
	m := Manifest{Path: "x"}
	for i := range 64 {
		c := randomData(uint64(100+i), 4096)
		r.chunks[SumChunk(c)] = c
		m.Chunks = append(m.Chunks, ChunkRef{SumChunk(c), 4096})
		whole = append(whole, c...)
	}
	m.Size, m.Digests = int64(len(whole)), digestsOf(whole)
	src := &countingSource{ChunkSource: r}
	w := &blockedWriter{release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- Assemble(context.Background(), &m, src, w) }()
	// Wait for the fetchers to stop: a bound broken shows as more bytes
	// given, however long it takes them.
	for last := int64(-1); src.given.Load() != last; time.Sleep(100 * time.Millisecond) {
		last = src.given.Load()
	}
	given, limit := src.given.Load(), AssembleMemory(&m)
	close(w.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.Bytes(), whole) {
		t.Fatal("assembled content differs")
	}
	if given == 0 || given > limit {
		t.Fatalf("with the writer stopped, Assemble fetched %d bytes; AssembleMemory says %d", given, limit)
	}
	t.Logf("with the writer stopped, %d of the file's %d bytes fetched, within AssembleMemory's %d", given, len(whole), limit)
}

func digestsOf(data []byte) Digests {
	var d Digests
	d.BLAKE3 = blake3.Sum256(data)
	d.MD5 = md5.Sum(data)
	return d
}

func TestPushRawSendsUncompressed(t *testing.T) {
	local := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(local, textData(3, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	p := ChunkerParams{Name: "fixed", Min: 256 << 10, Avg: 256 << 10, Max: 256 << 10}
	compressed, err := Push(context.Background(), newMemRemote(), local, "f", PushOptions{Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := Push(context.Background(), newMemRemote(), local, "f", PushOptions{Chunker: p, Raw: true})
	if err != nil {
		t.Fatal(err)
	}
	if compressed.BytesSent >= compressed.RawBytesSent {
		t.Errorf("text pushed with compression: %d bytes sent for %d", compressed.BytesSent, compressed.RawBytesSent)
	}
	if raw.BytesSent != raw.RawBytesSent || raw.RawBytesSent != 4<<20 {
		t.Errorf("text pushed raw: %d bytes sent for %d", raw.BytesSent, raw.RawBytesSent)
	}
}

// aheadUpload is a memUpload whose Send waits until the push has asked
// about a batch beyond the one of the chunk, or about every chunk.
type aheadUpload struct {
	*memUpload
	chunks int // in the file
	mu     sync.Mutex
	more   chan struct{} // closed once a later batch, or the last, is asked about
	closed bool
}

func (u *aheadUpload) Missing(ctx context.Context, first int, refs []ChunkRef) ([]bool, error) {
	u.mu.Lock()
	if (first > 0 || first+len(refs) == u.chunks) && !u.closed {
		close(u.more)
		u.closed = true
	}
	u.mu.Unlock()
	return u.memUpload.Missing(ctx, first, refs)
}

func (u *aheadUpload) Send(ctx context.Context, c EncodedChunk) error {
	select {
	case <-u.more:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("chunk %s sent, and 5 s on the next batch not asked about", c.ID)
	}
	return u.memUpload.Send(ctx, c)
}

type aheadRemote struct {
	*memRemote
	up *aheadUpload
}

func (r aheadRemote) OpenUpload(ctx context.Context, spec UploadSpec) (Upload, error) {
	return r.up, nil
}

// A push asks about the next batch of chunks while it still sends the
// chunks of one: it would otherwise leave the link idle for a round trip
// at every batch once the queues behind it ran dry. Here the chunks of the
// first batch are more than its queues hold, and the remote takes none
// until it is asked about the second batch.
func TestPushAsksAhead(t *testing.T) {
	const chunks, batch = 64, 16
	data := randomData(3, chunks*1024)
	local := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := newMemRemote()
	up := &aheadUpload{memUpload: &memUpload{r: r}, chunks: chunks, more: make(chan struct{})}
	p := ChunkerParams{Name: "fixed", Min: 1024, Avg: 1024, Max: 1024}
	if _, err := Push(context.Background(), aheadRemote{r, up}, local, "f", PushOptions{Chunker: p, BatchChunks: batch, Compressors: 1}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.files["f"], data) {
		t.Fatal("assembled file differs")
	}
}
