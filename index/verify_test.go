package index

import (
	"crypto/md5"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// verifyEnv is a database and a store holding one verified version of
// "v/file" made of four chunks, two that compress and two that do not,
// and an open session.
type verifyEnv struct {
	*gcEnv
	chunks []engine.ChunkID
	m      *engine.Manifest
}

func newVerifyEnv(t *testing.T) *verifyEnv {
	t.Helper()
	e := &verifyEnv{gcEnv: newGCEnv(t)}
	rng := rand.New(rand.NewPCG(6, 6))
	m := &engine.Manifest{Path: "v/file", Mode: 0o644, ModTime: time.Unix(1.8e9, 0).UTC(),
		Chunker: engine.ChunkerParams{Name: "fixed", Min: 1024, Avg: 1024, Max: 1024}}
	b3, sum := blake3.New(), md5.New()
	for i := range 4 {
		raw := make([]byte, 1024)
		for j := range raw {
			if i%2 == 0 {
				raw[j] = byte(j%5 + i)
			} else {
				raw[j] = byte(rng.Uint32())
			}
		}
		id := engine.SumChunk(raw)
		codec, payload := engine.Compress(nil, raw)
		if err := e.c.Put(t.Context(), id, codec, uint32(len(raw)), payload); err != nil {
			t.Fatal(err)
		}
		e.chunks = append(e.chunks, id)
		m.Chunks = append(m.Chunks, engine.ChunkRef{ID: id, Size: 1024})
		m.Size += 1024
		b3.Write(raw)
		sum.Write(raw)
	}
	b3.Sum(m.Digests.BLAKE3[:0])
	sum.Sum(m.Digests.MD5[:0])
	e.addVersion(t, m)
	e.m = m
	e.openSession(t, "v/other", "pending chunk")
	return e
}

// chunkFile returns the path of chunk i's file.
func (e *verifyEnv) chunkFile(i int) string {
	_, name := e.store.chunkPath(e.chunks[i])
	return name
}

// verify closes the database, opens it and the store read-only as a
// verification does and returns the problems Verify reports.
func (e *verifyEnv) verify(t *testing.T, opts VerifyOptions) ([]Problem, VerifyStats) {
	t.Helper()
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := OpenDBReadOnly(e.db.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := OpenDirStoreReadOnly(e.store.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var problems []Problem
	st, err := Verify(t.Context(), db, store, opts, func(p Problem) { problems = append(problems, p) })
	if err != nil {
		t.Fatal(err)
	}
	if st.Problems != len(problems) {
		t.Errorf("stats count %d problems, %d reported", st.Problems, len(problems))
	}
	return problems, st
}

func kinds(problems []Problem) []ProblemKind {
	var k []ProblemKind
	for _, p := range problems {
		k = append(k, p.Kind)
	}
	return k
}

func TestVerifyClean(t *testing.T) {
	e := newVerifyEnv(t)
	problems, st := e.verify(t, VerifyOptions{})
	if len(problems) != 0 {
		t.Fatalf("clean data: %v", problems)
	}
	want := VerifyStats{Chunks: 4, ChunkBytes: 4096, Records: 4, Versions: 1, VersionBytes: 4096, Sessions: 1}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	// Verification changes nothing: the stores' directories and the
	// database file are as they were.
	if err := os.WriteFile(filepath.Join(e.store.Dir(), tempDir, "keep-me"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.verify(t, VerifyOptions{})
	if _, err := os.Stat(filepath.Join(e.store.Dir(), tempDir, "keep-me")); err != nil {
		t.Errorf("verification touched the store: %v", err)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, e *verifyEnv)
		opts   VerifyOptions
		want   []ProblemKind
	}{
		{"flipped byte in a raw chunk", func(t *testing.T, e *verifyEnv) {
			flipByte(t, e.chunkFile(1), chunkHeaderSize+100)
		}, VerifyOptions{}, []ProblemKind{ProblemChunkCorrupt, ProblemVersionContent}},
		{"flipped byte in a compressed chunk", func(t *testing.T, e *verifyEnv) {
			fi, err := os.Stat(e.chunkFile(0))
			if err != nil {
				t.Fatal(err)
			}
			flipByte(t, e.chunkFile(0), fi.Size()-3)
		}, VerifyOptions{}, []ProblemKind{ProblemChunkCorrupt, ProblemVersionContent}},
		{"flipped byte, quick", func(t *testing.T, e *verifyEnv) {
			flipByte(t, e.chunkFile(1), chunkHeaderSize+100)
		}, VerifyOptions{SkipContent: true}, []ProblemKind{ProblemChunkCorrupt}},
		{"truncated chunk", func(t *testing.T, e *verifyEnv) {
			if err := os.Truncate(e.chunkFile(3), chunkHeaderSize+10); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemChunkCorrupt, ProblemVersionContent}},
		{"deleted chunk", func(t *testing.T, e *verifyEnv) {
			if err := os.Remove(e.chunkFile(2)); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemChunkMissing, ProblemVersionContent}},
		{"temporary file", func(t *testing.T, e *verifyEnv) {
			if err := os.WriteFile(filepath.Join(e.store.Dir(), tempDir, tempPrefix+"x-1"), []byte("half"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemTempFile}},
		{"stored, not recorded", func(t *testing.T, e *verifyEnv) {
			raw := []byte("orphan")
			if err := e.store.Put(t.Context(), engine.SumChunk(raw), engine.CodecRaw, uint32(len(raw)), raw); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemChunkUnrecorded}},
		{"record disagrees with the store", func(t *testing.T, e *verifyEnv) {
			raw := []byte("misrecorded")
			id := engine.SumChunk(raw)
			if err := e.store.Put(t.Context(), id, engine.CodecRaw, uint32(len(raw)), raw); err != nil {
				t.Fatal(err)
			}
			if err := e.db.AddChunk(t.Context(), id, ChunkInfo{Size: uint32(len(raw)), Stored: 5, Codec: engine.CodecZstd}); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemChunkMismatch}},
		{"version names an unrecorded chunk", func(t *testing.T, e *verifyEnv) {
			m := *e.m
			m.Chunks = slices.Clone(m.Chunks)
			m.Chunks[2].ID = engine.SumChunk([]byte("never stored"))
			if _, err := e.db.AddVersion(t.Context(), &m, time.Now()); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{SkipContent: true}, []ProblemKind{ProblemVersionBroken}},
		{"version whose digests are wrong", func(t *testing.T, e *verifyEnv) {
			m := *e.m
			m.Digests.MD5[0] ^= 1
			if _, err := e.db.AddVersion(t.Context(), &m, time.Now()); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{}, []ProblemKind{ProblemVersionContent}},
		{"commit not finished", func(t *testing.T, e *verifyEnv) {
			if _, err := e.c.AddVersion(t.Context(), e.m, "", time.Now()); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{SkipContent: true}, []ProblemKind{ProblemVersionPending}},
		{"corrupt pending version record", func(t *testing.T, e *verifyEnv) {
			if err := e.db.update(t.Context(), func(tx *bolt.Tx) error {
				return tx.Bucket(bucketPendingVersions).Put([]byte(e.m.Path), []byte{1, 0})
			}); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{SkipContent: true}, []ProblemKind{ProblemRecordCorrupt}},
		{"corrupt chunk record", func(t *testing.T, e *verifyEnv) {
			if err := e.db.update(t.Context(), func(tx *bolt.Tx) error {
				return tx.Bucket(bucketChunks).Put(e.chunks[1][:], []byte{9, 9})
			}); err != nil {
				t.Fatal(err)
			}
		}, VerifyOptions{SkipContent: true}, []ProblemKind{ProblemRecordCorrupt}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newVerifyEnv(t)
			tt.damage(t, e)
			problems, _ := e.verify(t, tt.opts)
			if got := kinds(problems); !slices.Equal(got, tt.want) {
				t.Errorf("problems %v, want kinds %v", problems, tt.want)
			}
			for _, p := range problems {
				if p.Object == "" || p.Detail == "" {
					t.Errorf("problem %+v does not say what and why", p)
				}
			}
		})
	}
}

func TestOpenDBReadOnlyRefusesWhileOpen(t *testing.T) {
	e := newGCEnv(t)
	_, err := OpenDBReadOnly(e.db.Path())
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only open of a database open for writing: %v, want ErrLocked", err)
	}
	if _, err := OpenDBReadOnly(filepath.Join(t.TempDir(), "none.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only open of no database: %v, want not found", err)
	}
}

// flipByte inverts the bits of the byte at off in the file name.
func flipByte(t *testing.T, name string, off int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}
