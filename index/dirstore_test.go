package index

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chunksync/chunksync/engine"
)

// storedChunk puts a chunk of n seeded bytes into a new DirStore and returns
// the store, the chunk and the path of its file.
func storedChunk(t *testing.T, compressible bool) (*DirStore, engine.ChunkID, []byte, string) {
	t.Helper()
	s, err := OpenDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 8<<10)
	for i := range raw {
		if compressible {
			raw[i] = byte(i % 7)
		} else {
			raw[i] = byte(i*2654435761>>13 ^ i>>3)
		}
	}
	codec, payload := engine.Compress(nil, raw)
	if compressible != (codec == engine.CodecZstd) {
		t.Fatalf("test data encodes as %s", codec)
	}
	id := engine.SumChunk(raw)
	if err := s.Put(t.Context(), id, codec, uint32(len(raw)), payload); err != nil {
		t.Fatal(err)
	}
	_, name := s.chunkPath(id)
	return s, id, raw, name
}

func TestDirStoreLayout(t *testing.T) {
	s, id, _, name := storedChunk(t, false)
	h := id.String()
	if want := filepath.Join(s.Dir(), h[:2], h); name != want {
		t.Fatalf("chunk file at %s, want %s", name, want)
	}
	// Every fan-out directory is there from the start: no Put makes one.
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var fanOut int
	for _, e := range entries {
		if e.IsDir() && isFanOutName(e.Name()) {
			fanOut++
		}
	}
	if fanOut != 256 {
		t.Errorf("%d fan-out directories, want 256", fanOut)
	}
	// A chunk's file in another chunk's directory is not a chunk of the
	// store.
	wrong := "00"
	if h[:2] == wrong {
		wrong = "01"
	}
	other := engine.SumChunk([]byte("misfiled"))
	if err := os.WriteFile(filepath.Join(s.Dir(), wrong, other.String()), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Walk(t.Context(), func(got engine.ChunkID) error {
		if got != id {
			t.Errorf("Walk listed %s, want only %s", got, id)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	hd, err := decodeChunkHeader(b)
	if err != nil {
		t.Fatalf("header of stored file: %v", err)
	}
	if hd.codec != engine.CodecRaw || hd.rawSize != 8<<10 || len(b) != chunkHeaderSize+8<<10 {
		t.Fatalf("stored header %+v, file of %d bytes", hd, len(b))
	}
}

// TestDirStoreDetectsCorruption changes stored files behind the store's back
// and checks that Get refuses them with ErrChunkCorrupt naming the chunk.
func TestDirStoreDetectsCorruption(t *testing.T) {
	cases := []struct {
		name         string
		compressible bool
		change       func(b []byte) []byte
	}{
		{"raw payload byte flipped", false, func(b []byte) []byte { b[len(b)/2] ^= 1; return b }},
		{"zstd payload byte flipped", true, func(b []byte) []byte { b[len(b)-3] ^= 0x40; return b }},
		{"last byte flipped", false, func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }},
		{"raw truncated", false, func(b []byte) []byte { return b[:len(b)-1] }},
		{"zstd truncated", true, func(b []byte) []byte { return b[:len(b)-5] }},
		{"raw extended", false, func(b []byte) []byte { return append(b, 0) }},
		{"header only", false, func(b []byte) []byte { return b[:chunkHeaderSize] }},
		{"shorter than header", false, func(b []byte) []byte { return b[:3] }},
		{"empty", false, func(b []byte) []byte { return b[:0] }},
		{"bad magic", false, func(b []byte) []byte { b[0] = 'X'; return b }},
		{"future version", false, func(b []byte) []byte { b[4] = 2; return b }},
		{"codec changed", false, func(b []byte) []byte { b[5] = byte(engine.CodecZstd); return b }},
		{"unknown codec", false, func(b []byte) []byte { b[5] = 7; return b }},
		{"raw size huge", true, func(b []byte) []byte { copy(b[6:], []byte{0xff, 0xff, 0xff, 0xff}); return b }},
		{"raw size smaller", true, func(b []byte) []byte { b[8]--; return b }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, id, _, name := storedChunk(t, tc.compressible)
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(name, tc.change(b), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = s.Get(t.Context(), id, nil)
			if !errors.Is(err, ErrChunkCorrupt) {
				t.Fatalf("Get of a changed file: got %v, want ErrChunkCorrupt", err)
			}
			if !strings.Contains(err.Error(), id.String()) {
				t.Errorf("error %q does not name chunk %s", err, id)
			}
		})
	}
}

func TestDirStoreRemovesStaleTemps(t *testing.T) {
	s, id, raw, name := storedChunk(t, false)
	stale := filepath.Join(s.Dir(), tempDir, tempPrefix+id.String()+"-123")
	other := filepath.Join(s.Dir(), tempDir, "notes.txt")
	misplaced := filepath.Join(filepath.Dir(name), tempPrefix+id.String()+"-456")
	for _, f := range []string{stale, other, misplaced} {
		if err := os.WriteFile(f, []byte("half a chunk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := OpenDirStore(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file still there after open: %v", err)
	}
	for _, f := range []string{other, misplaced} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("open removed a file that is not its own: %v", err)
		}
	}
	got, err := s2.Get(t.Context(), id, nil)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("Get after reopen: %v", err)
	}
	var n int
	if err := s2.Walk(t.Context(), func(got engine.ChunkID) error {
		if got != id {
			t.Errorf("Walk listed %s, want only %s", got, id)
		}
		n++
		return nil
	}); err != nil || n != 1 {
		t.Fatalf("Walk: %v after %d chunks", err, n)
	}
}

// TestDirStoreHalfWrittenChunk stops a Put at CheckpointChunkHalfWritten,
// where a crash test kills the server, and checks what a crash there
// leaves: a temporary file shorter than the chunk's, and no chunk that a
// reader, a walk or a later Put could take as stored. A store opened
// after the crash removes the temporary file.
func TestDirStoreHalfWrittenChunk(t *testing.T) {
	dir := t.TempDir()
	raw := bytes.Repeat([]byte("half"), 4<<10)
	id := engine.SumChunk(raw)
	var left []byte
	var s *DirStore
	s, err := OpenDirStore(dir, WithCheckpoint(func(point string) {
		if point != CheckpointChunkHalfWritten {
			t.Errorf("checkpoint %q, want %q", point, CheckpointChunkHalfWritten)
		}
		temps, err := s.Temps()
		if err != nil || len(temps) != 1 {
			t.Fatalf("temporary files in the middle of a Put: %v, %v; want one", temps, err)
		}
		if left, err = os.ReadFile(temps[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(t.Context(), id, nil); !errors.Is(err, ErrChunkMissing) {
			t.Errorf("Get of a half-written chunk: %v, want ErrChunkMissing", err)
		}
		if err := s.Walk(t.Context(), func(got engine.ChunkID) error {
			t.Errorf("Walk lists %s while it is half written", got)
			return nil
		}); err != nil {
			t.Error(err)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), id, engine.CodecRaw, uint32(len(raw)), raw); err != nil {
		t.Fatal(err)
	}
	if n := len(left); n <= chunkHeaderSize || n >= chunkHeaderSize+len(raw) {
		t.Fatalf("the checkpoint found %d bytes written of %d: not in the middle of the chunk", n, chunkHeaderSize+len(raw))
	}
	// The store as a crash at the checkpoint leaves it: the chunk not
	// renamed into place, its temporary file half written.
	if err := s.Delete(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, tempDir, tempPrefix+id.String()+"-crashed")
	if err := os.WriteFile(stale, left, 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if temps, err := s2.Temps(); err != nil || len(temps) != 0 {
		t.Errorf("temporary files after a reopen: %v, %v; want none", temps, err)
	}
	if _, err := s2.Get(t.Context(), id, nil); !errors.Is(err, ErrChunkMissing) {
		t.Errorf("Get after the crash: %v, want ErrChunkMissing", err)
	}
	// The push resumes: the chunk comes again and is stored whole.
	if err := s2.Put(t.Context(), id, engine.CodecRaw, uint32(len(raw)), raw); err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Get(t.Context(), id, nil); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("Get after the chunk came again: %v", err)
	}
}

// TestDirStorePutLeavesNoTemps checks that refused and completed Puts leave
// nothing but the chunk file behind.
func TestDirStorePutLeavesNoTemps(t *testing.T) {
	s, id, raw, name := storedChunk(t, true)
	if err := s.Put(t.Context(), id, engine.CodecRaw, uint32(len(raw))+1, raw); err == nil {
		t.Fatal("Put accepted a raw payload shorter than its size")
	}
	entries, err := os.ReadDir(filepath.Dir(name))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != filepath.Base(name) {
		t.Fatalf("chunk directory holds %v, want only the chunk", entries)
	}
	if entries, err := os.ReadDir(filepath.Join(s.Dir(), tempDir)); err != nil || len(entries) != 0 {
		t.Fatalf("temporary directory holds %v, %v; want nothing", entries, err)
	}
}

// TestDirStoreFailedWriteLeavesNoTemp makes the rename fail and checks that
// the temporary file is removed and the error names the chunk.
func TestDirStoreFailedWriteLeavesNoTemp(t *testing.T) {
	s, err := OpenDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte("chunk")
	id := engine.SumChunk(raw)
	_, name := s.chunkPath(id)
	// A directory where the chunk file should go makes the rename fail.
	if err := os.MkdirAll(filepath.Join(name, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(name, "x"))
	err = s.Put(t.Context(), id, engine.CodecRaw, uint32(len(raw)), raw)
	if err == nil || !strings.Contains(err.Error(), id.String()) {
		t.Fatalf("Put over a directory: got %v, want an error naming %s", err, id)
	}
	if entries, err := os.ReadDir(filepath.Join(s.Dir(), tempDir)); err != nil || len(entries) != 0 {
		t.Fatalf("temporary directory holds %v, %v; want nothing", entries, err)
	}
}

func FuzzStoredChunkHeader(f *testing.F) {
	f.Add(appendChunkHeader(nil, chunkHeader{codec: engine.CodecZstd, rawSize: 1 << 20}))
	f.Add(appendChunkHeader(nil, chunkHeader{codec: engine.CodecRaw, rawSize: 0}))
	f.Add(appendChunkHeader(nil, chunkHeader{codec: engine.CodecRaw, rawSize: engine.MaxChunkSize}))
	f.Add([]byte("csck\x01\x01\xff\xff\xff\xff"))
	f.Add([]byte("csck\x02\x00\x00\x00\x00\x00"))
	f.Add([]byte("csc"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeChunkHeader(b)
		if err != nil {
			return
		}
		if h.rawSize > engine.MaxChunkSize {
			t.Fatalf("accepted raw size %d", h.rawSize)
		}
		if h.codec != engine.CodecRaw && h.codec != engine.CodecZstd {
			t.Fatalf("accepted codec %d", h.codec)
		}
		if enc := appendChunkHeader(nil, h); !bytes.Equal(enc, b[:chunkHeaderSize]) {
			t.Fatalf("header %x decodes to %+v, which encodes to %x", b[:chunkHeaderSize], h, enc)
		}
	})
}
