package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// Opener opens the store kept in dir, a directory the suite makes with
// t.TempDir. Opening the same dir again, after the first store is closed,
// must give a store holding the same chunks; a backend that keeps no files
// may use dir as a name. When the store implements io.Closer the suite
// closes it; the Opener may also register its own cleanup with t.
type Opener func(t *testing.T, dir string) index.Store

// Walker is implemented by stores that can list their chunks; the suite
// checks it when the store has it.
type Walker = index.Walker

// Run runs the conformance suite against the stores open returns.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"RoundTrip", testRoundTrip},
		{"ReuseDst", testReuseDst},
		{"Missing", testMissing},
		{"PutTwice", testPutTwice},
		{"Delete", testDelete},
		{"CanceledContext", testCanceledContext},
		{"RefusesBadInput", testRefusesBadInput},
		{"ConcurrentPutSame", testConcurrentPutSame},
		{"ConcurrentPutDifferent", testConcurrentPutDifferent},
		{"Reopen", testReopen},
		{"Walk", testWalk},
		{"WalkDeleting", testWalkDeleting},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// chunk is a test chunk in raw and encoded form.
type chunk struct {
	id      engine.ChunkID
	raw     []byte
	codec   engine.Codec
	payload []byte
}

// newChunk makes a chunk of n bytes from seed. Compressible chunks are
// zstd-encoded, the others raw, as engine.Compress decides.
func newChunk(seed uint64, n int, compressible bool) chunk {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	raw := make([]byte, n)
	for i := range raw {
		if compressible {
			raw[i] = "chunksync "[r.IntN(10)]
		} else {
			raw[i] = byte(r.Uint32())
		}
	}
	codec, payload := engine.Compress(nil, raw)
	return chunk{id: engine.SumChunk(raw), raw: raw, codec: codec, payload: payload}
}

func openStore(t *testing.T, open Opener, dir string) index.Store {
	t.Helper()
	s := open(t, dir)
	t.Cleanup(func() { closeStore(t, s) })
	return s
}

func closeStore(t *testing.T, s index.Store) {
	t.Helper()
	if c, ok := s.(io.Closer); ok {
		if err := c.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	}
}

func put(t *testing.T, s index.Store, c chunk) {
	t.Helper()
	if err := s.Put(t.Context(), c.id, c.codec, uint32(len(c.raw)), c.payload); err != nil {
		t.Fatalf("Put(%s): %v", c.id, err)
	}
}

func mustGet(t *testing.T, s index.Store, c chunk) {
	t.Helper()
	got, err := s.Get(t.Context(), c.id, nil)
	if err != nil {
		t.Fatalf("Get(%s): %v", c.id, err)
	}
	if !bytes.Equal(got, c.raw) {
		t.Fatalf("Get(%s) = %d bytes, want the %d put", c.id, len(got), len(c.raw))
	}
}

func testRoundTrip(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	cases := []struct {
		name      string
		c         chunk
		wantCodec engine.Codec
	}{
		{"zstd", newChunk(1, 64<<10, true), engine.CodecZstd},
		{"raw", newChunk(2, 64<<10, false), engine.CodecRaw},
		{"empty", newChunk(3, 0, false), engine.CodecRaw},
		{"one byte", newChunk(4, 1, false), engine.CodecRaw},
		{"large zstd", newChunk(5, 2<<20, true), engine.CodecZstd},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.c.codec != tc.wantCodec {
				t.Fatalf("test data encodes as %s, want %s", tc.c.codec, tc.wantCodec)
			}
			put(t, s, tc.c)
			mustGet(t, s, tc.c)
		})
	}
}

func testReuseDst(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	a, b := newChunk(10, 40<<10, true), newChunk(11, 30<<10, false)
	put(t, s, a)
	put(t, s, b)
	buf := make([]byte, 100, 128<<10)
	for _, c := range []chunk{a, b, a} {
		var err error
		buf, err = s.Get(t.Context(), c.id, buf)
		if err != nil {
			t.Fatalf("Get(%s): %v", c.id, err)
		}
		if !bytes.Equal(buf, c.raw) {
			t.Fatalf("Get(%s) into a used buffer returned other bytes", c.id)
		}
	}
}

func testMissing(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	put(t, s, newChunk(20, 1000, false))
	id := newChunk(21, 1000, false).id
	_, err := s.Get(t.Context(), id, nil)
	if !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("Get of an absent chunk: got %v, want ErrChunkMissing", err)
	}
	if !strings.Contains(err.Error(), id.String()) {
		t.Errorf("error %q does not name chunk %s", err, id)
	}
	if errors.Is(err, index.ErrChunkCorrupt) {
		t.Errorf("absent chunk reported as corrupt: %v", err)
	}
}

func testPutTwice(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newChunk(30, 50<<10, true)
	put(t, s, c)
	put(t, s, c)
	mustGet(t, s, c)
	// The same chunk sent raw by another client is the same chunk.
	raw := c
	raw.codec, raw.payload = engine.CodecRaw, c.raw
	put(t, s, raw)
	mustGet(t, s, c)
}

func testDelete(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	a, b := newChunk(40, 1000, true), newChunk(41, 1000, false)
	put(t, s, a)
	put(t, s, b)
	if err := s.Delete(t.Context(), a.id); err != nil {
		t.Fatalf("Delete(%s): %v", a.id, err)
	}
	if _, err := s.Get(t.Context(), a.id, nil); !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("Get after Delete: got %v, want ErrChunkMissing", err)
	}
	if err := s.Delete(t.Context(), a.id); err != nil {
		t.Fatalf("Delete of an absent chunk: %v", err)
	}
	mustGet(t, s, b)
	put(t, s, a)
	mustGet(t, s, a)
}

func testCanceledContext(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newChunk(50, 1000, false)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Put(ctx, c.id, c.codec, uint32(len(c.raw)), c.payload); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a canceled context: got %v, want context.Canceled", err)
	}
	put(t, s, c)
	if _, err := s.Get(ctx, c.id, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context: got %v, want context.Canceled", err)
	}
}

func testRefusesBadInput(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newChunk(55, 1000, false)
	cases := []struct {
		name    string
		codec   engine.Codec
		rawSize uint32
		payload []byte
	}{
		{"unknown codec", 9, 1000, c.raw},
		{"raw size above limit", engine.CodecZstd, engine.MaxChunkSize + 1, c.raw},
		{"raw payload of other size", engine.CodecRaw, 999, c.raw},
		{"zstd payload far larger than raw", engine.CodecZstd, 10, make([]byte, 64<<10)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Put(t.Context(), c.id, tc.codec, tc.rawSize, tc.payload); err == nil {
				t.Fatalf("Put accepted %s", tc.name)
			}
			if _, err := s.Get(t.Context(), c.id, nil); !errors.Is(err, index.ErrChunkMissing) {
				t.Fatalf("Get after refused Put: got %v, want ErrChunkMissing", err)
			}
		})
	}
}

func testConcurrentPutSame(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	c := newChunk(60, 200<<10, true)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			errs <- s.Put(t.Context(), c.id, c.codec, uint32(len(c.raw)), c.payload)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Put: %v", err)
		}
	}
	mustGet(t, s, c)
}

func testConcurrentPutDifferent(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	const workers, each = 8, 12
	chunks := make([]chunk, workers*each)
	for i := range chunks {
		chunks[i] = newChunk(uint64(1000+i), 4<<10+i, i%2 == 0)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(chunks))
	for w := range workers {
		wg.Go(func() {
			for _, c := range chunks[w*each : (w+1)*each] {
				if err := s.Put(t.Context(), c.id, c.codec, uint32(len(c.raw)), c.payload); err != nil {
					errs <- err
				}
				// Readers run beside writers.
				if _, err := s.Get(t.Context(), chunks[0].id, nil); err != nil && !errors.Is(err, index.ErrChunkMissing) {
					errs <- fmt.Errorf("Get beside Put: %w", err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Put: %v", err)
	}
	for _, c := range chunks {
		mustGet(t, s, c)
	}
}

func testReopen(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := open(t, dir)
	a, b := newChunk(70, 10<<10, true), newChunk(71, 10<<10, false)
	put(t, s, a)
	put(t, s, b)
	if err := s.Delete(t.Context(), b.id); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	s = openStore(t, open, dir)
	mustGet(t, s, a)
	if _, err := s.Get(t.Context(), b.id, nil); !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("deleted chunk after reopen: got %v, want ErrChunkMissing", err)
	}
}

func testWalk(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	w, ok := s.(Walker)
	if !ok {
		t.Skip("store has no Walk")
	}
	var want []engine.ChunkID
	for i := range 20 {
		c := newChunk(uint64(80+i), 100+i, i%3 == 0)
		put(t, s, c)
		want = append(want, c.id)
	}
	if err := s.Delete(t.Context(), want[5]); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 5, 6)
	var got []engine.ChunkID
	if err := w.Walk(t.Context(), func(id engine.ChunkID) error {
		got = append(got, id)
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	cmp := func(a, b engine.ChunkID) int { return bytes.Compare(a[:], b[:]) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Fatalf("Walk listed %d chunks, want the %d stored", len(got), len(want))
	}
	stop := errors.New("stop")
	n := 0
	err := w.Walk(t.Context(), func(engine.ChunkID) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Walk after fn failed: got %v after %d calls, want fn's error after 1", err, n)
	}
}

// testWalkDeleting deletes chunks from inside Walk, as garbage collection
// does: every chunk is still listed once, and the deleted ones are gone.
func testWalkDeleting(t *testing.T, open Opener) {
	s := openStore(t, open, t.TempDir())
	w, ok := s.(Walker)
	if !ok {
		t.Skip("store has no Walk")
	}
	var all []chunk
	for i := range 30 {
		c := newChunk(uint64(200+i), 50+i, false)
		put(t, s, c)
		all = append(all, c)
	}
	seen := map[engine.ChunkID]int{}
	if err := w.Walk(t.Context(), func(id engine.ChunkID) error {
		seen[id]++
		if id[0]%2 == 0 {
			return s.Delete(t.Context(), id)
		}
		return nil
	}); err != nil {
		t.Fatalf("Walk deleting: %v", err)
	}
	for _, c := range all {
		if seen[c.id] != 1 {
			t.Fatalf("Walk deleting listed chunk %s %d times, want once", c.id, seen[c.id])
		}
		_, err := s.Get(t.Context(), c.id, nil)
		if deleted := c.id[0]%2 == 0; deleted != errors.Is(err, index.ErrChunkMissing) || !deleted && err != nil {
			t.Fatalf("Get(%s) after Walk deleting (deleted %v): %v", c.id, deleted, err)
		}
	}
}
