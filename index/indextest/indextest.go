package indextest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// Backend is an index database as the suite sees it.
type Backend interface {
	index.ChunkIndex
	index.Sessions
	index.Catalogue
	index.Pruner
	io.Closer
}

// Opener opens the database kept in dir, a directory the suite makes with
// t.TempDir. Opening the same dir again after the first database is closed
// must give the same content. The suite closes what Opener returns.
type Opener func(t *testing.T, dir string) Backend

// Run runs the conformance suite against the databases open returns.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, db Backend)
	}{
		{"Chunks", testChunks},
		{"ChunkAddTwice", testChunkAddTwice},
		{"ChunkRefusesBadInfo", testChunkRefusesBadInfo},
		{"HasChunksBatch", testHasChunksBatch},
		{"ConcurrentAddChunk", testConcurrentAddChunk},
		{"SessionReattach", testSessionReattach},
		{"SessionNewOnOtherSpec", testSessionNewOnOtherSpec},
		{"SessionProgress", testSessionProgress},
		{"SessionUnknown", testSessionUnknown},
		{"SessionList", testSessionList},
		{"SessionDelete", testSessionDelete},
		{"SessionExpire", testSessionExpire},
		{"ConcurrentOpenSession", testConcurrentOpenSession},
		{"Versions", testVersions},
		{"VersionUnknownPath", testVersionUnknownPath},
		{"VersionPathPrefixes", testVersionPathPrefixes},
		{"VersionRefusesBadManifest", testVersionRefusesBadManifest},
		{"ConcurrentAddVersion", testConcurrentAddVersion},
		{"List", testList},
		{"ListPrefixes", testListPrefixes},
		{"PruneVersions", testPruneVersions},
		{"PruneNeverReusesNumbers", testPruneNeverReusesNumbers},
		{"PruneAll", testPruneAll},
		{"ConcurrentPruneAndAdd", testConcurrentPruneAndAdd},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, openDB(t, open, t.TempDir()))
		})
	}
	t.Run("Reopen", func(t *testing.T) { testReopen(t, open) })
}

func openDB(t *testing.T, open Opener, dir string) Backend {
	t.Helper()
	db := open(t, dir)
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return db
}

// ids returns n seeded chunk IDs.
func ids(seed uint64, n int) []engine.ChunkID {
	r := rand.New(rand.NewPCG(seed, 0x1d5))
	out := make([]engine.ChunkID, n)
	for i := range out {
		for j := 0; j < len(out[i]); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				out[i][j+k] = byte(v >> (8 * k))
			}
		}
	}
	return out
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

func info(i int) index.ChunkInfo {
	if i%2 == 0 {
		return index.ChunkInfo{Size: uint32(1000 + i), Stored: uint32(600 + i), Codec: engine.CodecZstd}
	}
	return index.ChunkInfo{Size: uint32(1000 + i), Stored: uint32(1000 + i), Codec: engine.CodecRaw}
}

func addChunk(t *testing.T, db Backend, id engine.ChunkID, ci index.ChunkInfo) {
	t.Helper()
	if err := db.AddChunk(t.Context(), id, ci); err != nil {
		t.Fatalf("AddChunk(%s): %v", id, err)
	}
}

func testChunks(t *testing.T, db Backend) {
	all := ids(1, 4)
	addChunk(t, db, all[0], info(0))
	addChunk(t, db, all[1], info(1))
	for i, id := range all[:2] {
		got, err := db.Chunk(t.Context(), id)
		if err != nil {
			t.Fatalf("Chunk(%s): %v", id, err)
		}
		if got != info(i) {
			t.Errorf("Chunk(%s) = %+v, want %+v", id, got, info(i))
		}
	}
	_, err := db.Chunk(t.Context(), all[2])
	if !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("Chunk of an unrecorded chunk: got %v, want ErrChunkMissing", err)
	}
	if !strings.Contains(err.Error(), all[2].String()) {
		t.Errorf("error %q does not name the chunk", err)
	}
}

func testChunkAddTwice(t *testing.T, db Backend) {
	id := ids(2, 1)[0]
	addChunk(t, db, id, info(0))
	addChunk(t, db, id, info(0))
	// The same chunk stored again in another encoding is still the same
	// chunk: adding it again is harmless, whatever it records.
	addChunk(t, db, id, info(1))
	if _, err := db.Chunk(t.Context(), id); err != nil {
		t.Fatalf("Chunk after adding twice: %v", err)
	}
}

func testChunkRefusesBadInfo(t *testing.T, db Backend) {
	id := ids(3, 1)[0]
	for _, ci := range []index.ChunkInfo{
		{Size: 10, Stored: 10, Codec: 9},
		{Size: engine.MaxChunkSize + 1, Stored: 10, Codec: engine.CodecZstd},
		{Size: 10, Stored: 11, Codec: engine.CodecRaw},
	} {
		if err := db.AddChunk(t.Context(), id, ci); err == nil {
			t.Errorf("AddChunk accepted %+v", ci)
		}
	}
	if have, err := db.HasChunks(t.Context(), []engine.ChunkID{id}); err != nil || have[0] {
		t.Fatalf("HasChunks after refused adds = %v, %v", have, err)
	}
}

func testHasChunksBatch(t *testing.T, db Backend) {
	all := ids(4, 300)
	r := rand.New(rand.NewPCG(4, 4))
	want := make([]bool, len(all))
	for i, id := range all {
		if r.IntN(2) == 0 {
			addChunk(t, db, id, info(i))
			want[i] = true
		}
	}
	// Ask in a shuffled order, with duplicates.
	order := r.Perm(len(all))
	order = append(order, order[:50]...)
	query := make([]engine.ChunkID, len(order))
	for i, j := range order {
		query[i] = all[j]
	}
	have, err := db.HasChunks(t.Context(), query)
	if err != nil {
		t.Fatal(err)
	}
	if len(have) != len(query) {
		t.Fatalf("HasChunks answered %d of %d", len(have), len(query))
	}
	for i, j := range order {
		if have[i] != want[j] {
			t.Fatalf("HasChunks[%d] (chunk %s) = %v, want %v", i, query[i], have[i], want[j])
		}
	}
	if have, err := db.HasChunks(t.Context(), nil); err != nil || len(have) != 0 {
		t.Fatalf("HasChunks(nil) = %v, %v", have, err)
	}
}

func testConcurrentAddChunk(t *testing.T, db Backend) {
	const workers, each = 8, 40
	all := ids(5, workers*each)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				// Every worker also adds its neighbour's first chunk, so
				// the same chunk is added concurrently.
				for _, j := range []int{w*each + i, (w + 1) % workers * each} {
					if err := db.AddChunk(t.Context(), all[j], info(j)); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent AddChunk: %v", err)
	}
	have, err := db.HasChunks(t.Context(), all)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range have {
		if !h {
			t.Fatalf("chunk %d not recorded after concurrent adds", i)
		}
	}
}

// spec returns an upload spec for path.
func spec(path string) engine.UploadSpec {
	return engine.UploadSpec{
		Path:    path,
		Size:    10 << 20,
		Mode:    0o644,
		ModTime: time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC),
		Chunker: engine.ChunkerParams{Name: "rabin", Min: 512 << 10, Avg: 1 << 20, Max: 8 << 20, Poly: 0x3DA3358B4DC173},
	}
}

func openSession(t *testing.T, db Backend, owner string, sp engine.UploadSpec, now time.Time) (index.Session, bool) {
	t.Helper()
	s, re, err := db.OpenSession(t.Context(), owner, sp, now)
	if err != nil {
		t.Fatalf("OpenSession(%s, %s): %v", owner, sp.Path, err)
	}
	return s, re
}

func testSessionReattach(t *testing.T, db Backend) {
	s1, re := openSession(t, db, "alice", spec("vm/disk.img"), t0)
	if re {
		t.Fatal("first OpenSession reattached")
	}
	if len(s1.ID) != 32 || strings.Trim(s1.ID, "0123456789abcdef") != "" {
		t.Errorf("session ID %q is not 128 bits of hex", s1.ID)
	}
	if s1.Owner != "alice" || s1.Spec.Path != "vm/disk.img" || !s1.Created.Equal(t0) || !s1.Updated.Equal(t0) {
		t.Errorf("new session = %+v", s1)
	}
	// The same spec with its mtime in another time zone is the same push.
	sp := spec("vm/disk.img")
	sp.ModTime = sp.ModTime.In(time.FixedZone("X", 3600))
	s2, re := openSession(t, db, "alice", sp, t0.Add(time.Minute))
	if !re || s2.ID != s1.ID {
		t.Fatalf("second OpenSession of the same spec: id %s reattached %v, want %s reattached", s2.ID, re, s1.ID)
	}
	if !s2.Created.Equal(t0) || !s2.Updated.Equal(t0.Add(time.Minute)) {
		t.Errorf("reattached session created %v updated %v, want %v and a minute later", s2.Created, s2.Updated, t0)
	}
}

func testSessionNewOnOtherSpec(t *testing.T, db Backend) {
	base, _ := openSession(t, db, "alice", spec("f"), t0)
	seen := map[string]string{base.ID: "base"}
	variants := []struct {
		name  string
		owner string
		edit  func(*engine.UploadSpec)
	}{
		{"owner", "bob", func(*engine.UploadSpec) {}},
		{"path", "alice", func(s *engine.UploadSpec) { s.Path = "g" }},
		{"size", "alice", func(s *engine.UploadSpec) { s.Size++ }},
		{"mode", "alice", func(s *engine.UploadSpec) { s.Mode = 0o600 }},
		{"mtime", "alice", func(s *engine.UploadSpec) { s.ModTime = s.ModTime.Add(time.Nanosecond) }},
		{"chunker name", "alice", func(s *engine.UploadSpec) { s.Chunker.Name = "fixed" }},
		{"chunker min", "alice", func(s *engine.UploadSpec) { s.Chunker.Min++ }},
		{"chunker avg", "alice", func(s *engine.UploadSpec) { s.Chunker.Avg++ }},
		{"chunker max", "alice", func(s *engine.UploadSpec) { s.Chunker.Max++ }},
		{"chunker poly", "alice", func(s *engine.UploadSpec) { s.Chunker.Poly++ }},
	}
	for _, v := range variants {
		sp := spec("f")
		v.edit(&sp)
		s, re := openSession(t, db, v.owner, sp, t0)
		if re {
			t.Errorf("other %s: reattached to %s", v.name, s.ID)
		}
		if prev, dup := seen[s.ID]; dup {
			t.Errorf("other %s: got the ID of %s", v.name, prev)
		}
		seen[s.ID] = v.name
	}
	if again, re := openSession(t, db, "alice", spec("f"), t0); !re || again.ID != base.ID {
		t.Errorf("base spec after the others: id %s reattached %v, want %s", again.ID, re, base.ID)
	}
}

func refs(seed uint64, n int) []engine.ChunkRef {
	out := make([]engine.ChunkRef, n)
	for i, id := range ids(seed, n) {
		out[i] = engine.ChunkRef{ID: id, Size: uint32(100 * (i + 1))}
	}
	return out
}

func progress(t *testing.T, db Backend, id string) index.SessionProgress {
	t.Helper()
	p, err := db.SessionProgress(t.Context(), id)
	if err != nil {
		t.Fatalf("SessionProgress(%s): %v", id, err)
	}
	return p
}

func checkProgress(t *testing.T, p index.SessionProgress, chunks int, bytes int64, stored int, storedBytes int64) {
	t.Helper()
	if p.Chunks != chunks || p.Bytes != bytes || p.ChunksStored != stored || p.BytesStored != storedBytes {
		t.Fatalf("progress: %d chunks / %d bytes, %d / %d stored; want %d / %d, %d / %d",
			p.Chunks, p.Bytes, p.ChunksStored, p.BytesStored, chunks, bytes, stored, storedBytes)
	}
	if p.Missing() != chunks-stored {
		t.Fatalf("Missing() = %d, want %d", p.Missing(), chunks-stored)
	}
}

func testSessionProgress(t *testing.T, db Backend) {
	s, _ := openSession(t, db, "alice", spec("p"), t0)
	checkProgress(t, progress(t, db, s.ID), 0, 0, 0, 0)

	rs := refs(10, 10) // sizes 100, 200, ... 1000: 5500 bytes
	for _, i := range []int{1, 3, 5} {
		addChunk(t, db, rs[i].ID, info(i))
	}
	if err := db.AddSessionChunks(t.Context(), s.ID, 0, rs[:6], t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	checkProgress(t, progress(t, db, s.ID), 6, 2100, 3, 200+400+600)
	if err := db.AddSessionChunks(t.Context(), s.ID, 6, rs[6:], t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	checkProgress(t, progress(t, db, s.ID), 10, 5500, 3, 1200)

	// Listing a position again replaces what it held.
	other := refs(11, 1)[0]
	other.Size = 50
	if err := db.AddSessionChunks(t.Context(), s.ID, 3, []engine.ChunkRef{other}, t0.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	checkProgress(t, progress(t, db, s.ID), 10, 5500-400+50, 2, 800)
	// Chunks that arrive later count as stored.
	addChunk(t, db, other.ID, info(0))
	addChunk(t, db, rs[9].ID, info(9))
	p := progress(t, db, s.ID)
	checkProgress(t, p, 10, 5150, 4, 800+50+1000)
	if !p.Updated.Equal(t0.Add(3*time.Second)) || p.ID != s.ID || p.Owner != "alice" {
		t.Fatalf("progress session = %+v, want %s updated at %v", p.Session, s.ID, t0.Add(3*time.Second))
	}
	// Empty lists touch the session and change nothing else.
	if err := db.AddSessionChunks(t.Context(), s.ID, 10, nil, t0.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	p = progress(t, db, s.ID)
	checkProgress(t, p, 10, 5150, 4, 1850)
	if !p.Updated.Equal(t0.Add(4 * time.Second)) {
		t.Fatalf("AddSessionChunks did not touch the session: updated %v", p.Updated)
	}
	// Another session's list is its own.
	s2, _ := openSession(t, db, "bob", spec("p"), t0)
	checkProgress(t, progress(t, db, s2.ID), 0, 0, 0, 0)

	if err := db.AddSessionChunks(t.Context(), s.ID, -1, rs[:1], t0); err == nil {
		t.Error("AddSessionChunks accepted a negative position")
	}
}

func testSessionUnknown(t *testing.T, db Backend) {
	openSession(t, db, "alice", spec("u"), t0)
	for _, id := range []string{"00000000000000000000000000000000", "", "not-a-session", "../../etc", strings.Repeat("A", 32)} {
		if _, err := db.SessionProgress(t.Context(), id); !errors.Is(err, index.ErrSessionNotFound) {
			t.Errorf("SessionProgress(%q): got %v, want ErrSessionNotFound", id, err)
		}
		if err := db.AddSessionChunks(t.Context(), id, 0, refs(1, 1), t0); !errors.Is(err, index.ErrSessionNotFound) {
			t.Errorf("AddSessionChunks(%q): got %v, want ErrSessionNotFound", id, err)
		}
		if err := db.DeleteSession(t.Context(), id); !errors.Is(err, index.ErrSessionNotFound) {
			t.Errorf("DeleteSession(%q): got %v, want ErrSessionNotFound", id, err)
		}
	}
}

func testSessionList(t *testing.T, db Backend) {
	if list, err := db.ListSessions(t.Context()); err != nil || len(list) != 0 {
		t.Fatalf("ListSessions of an empty index = %v, %v", list, err)
	}
	var want []string
	// Open in an order that differs from creation time.
	for _, i := range []int{2, 0, 1} {
		s, _ := openSession(t, db, "alice", spec(fmt.Sprint("l", i)), t0.Add(time.Duration(i)*time.Hour))
		want = append(want, s.ID)
	}
	want = []string{want[1], want[2], want[0]}
	list, err := db.ListSessions(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListSessions = %v, want oldest first %v", got, want)
	}
}

func testSessionDelete(t *testing.T, db Backend) {
	s, _ := openSession(t, db, "alice", spec("d"), t0)
	keep, _ := openSession(t, db, "alice", spec("k"), t0)
	if err := db.AddSessionChunks(t.Context(), s.ID, 0, refs(20, 5), t0); err != nil {
		t.Fatal(err)
	}
	if err := db.AddSessionChunks(t.Context(), keep.ID, 0, refs(21, 3), t0); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteSession(t.Context(), s.ID); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if _, err := db.SessionProgress(t.Context(), s.ID); !errors.Is(err, index.ErrSessionNotFound) {
		t.Fatalf("SessionProgress after delete: got %v, want ErrSessionNotFound", err)
	}
	if err := db.DeleteSession(t.Context(), s.ID); !errors.Is(err, index.ErrSessionNotFound) {
		t.Fatalf("DeleteSession twice: got %v, want ErrSessionNotFound", err)
	}
	// The same push again opens a new, empty session.
	s2, re := openSession(t, db, "alice", spec("d"), t0)
	if re || s2.ID == s.ID {
		t.Fatalf("OpenSession after delete reattached (%v) or reused the ID", re)
	}
	checkProgress(t, progress(t, db, s2.ID), 0, 0, 0, 0)
	checkProgress(t, progress(t, db, keep.ID), 3, 600, 0, 0)
}

func testSessionExpire(t *testing.T, db Backend) {
	old, _ := openSession(t, db, "alice", spec("e1"), t0)
	older, _ := openSession(t, db, "alice", spec("e0"), t0.Add(-time.Hour))
	touched, _ := openSession(t, db, "alice", spec("e2"), t0.Add(-time.Hour))
	fresh, _ := openSession(t, db, "alice", spec("e3"), t0.Add(time.Hour))
	if err := db.AddSessionChunks(t.Context(), touched.ID, 0, refs(30, 2), t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := db.AddSessionChunks(t.Context(), old.ID, 0, refs(31, 2), t0); err != nil {
		t.Fatal(err)
	}
	got, err := db.ExpireSessions(t.Context(), t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{older.ID, old.ID}; !slices.Equal(got, want) {
		t.Fatalf("ExpireSessions = %v, want %v", got, want)
	}
	for _, id := range got {
		if _, err := db.SessionProgress(t.Context(), id); !errors.Is(err, index.ErrSessionNotFound) {
			t.Errorf("expired session %s: got %v, want ErrSessionNotFound", id, err)
		}
	}
	for _, id := range []string{touched.ID, fresh.ID} {
		progress(t, db, id)
	}
	if s, re := openSession(t, db, "alice", spec("e1"), t0.Add(time.Hour)); re {
		t.Errorf("OpenSession reattached to expired session %s", s.ID)
	}
	if got, err := db.ExpireSessions(t.Context(), t0.Add(-2*time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("ExpireSessions with nothing idle = %v, %v", got, err)
	}
}

func testConcurrentOpenSession(t *testing.T, db Backend) {
	const n = 8
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, _, err := db.OpenSession(t.Context(), "alice", spec("c"), t0)
			if err != nil {
				t.Error(err)
			}
			got[i] = s.ID
		})
	}
	wg.Wait()
	for _, id := range got[1:] {
		if id != got[0] {
			t.Fatalf("concurrent OpenSession of one spec gave sessions %v", got)
		}
	}
}

// manifest returns a valid manifest of path whose content depends on seed.
func manifest(path string, seed uint64) *engine.Manifest {
	p := engine.ChunkerParams{Name: "fixed", Min: 1024, Avg: 1024, Max: 1024}
	n := int(seed%5) + 2
	m := &engine.Manifest{
		Path:    path,
		Mode:    fs.FileMode(0o640),
		ModTime: time.Unix(1700000000+int64(seed), 42).UTC(),
		Chunker: p,
	}
	for i, id := range ids(seed, n) {
		size := uint32(1024)
		if i == n-1 {
			size = uint32(1 + seed%1000)
		}
		m.Chunks = append(m.Chunks, engine.ChunkRef{ID: id, Size: size})
		m.Size += int64(size)
	}
	m.Digests.BLAKE3 = ids(seed+1000, 1)[0]
	copy(m.Digests.MD5[:], ids(seed+2000, 1)[0][:])
	return m
}

func sameManifest(a, b *engine.Manifest) bool {
	return a.Path == b.Path && a.Size == b.Size && a.Mode == b.Mode && a.ModTime.Equal(b.ModTime) &&
		a.Chunker == b.Chunker && slices.Equal(a.Chunks, b.Chunks) && a.Digests == b.Digests
}

func addVersion(t *testing.T, db Backend, m *engine.Manifest, now time.Time) uint64 {
	t.Helper()
	n, err := db.AddVersion(t.Context(), m, now)
	if err != nil {
		t.Fatalf("AddVersion(%s): %v", m.Path, err)
	}
	return n
}

func testVersions(t *testing.T, db Backend) {
	ms := []*engine.Manifest{manifest("a/file", 1), manifest("a/file", 2), manifest("a/file", 3)}
	for i, m := range ms {
		if n := addVersion(t, db, m, t0.Add(time.Duration(i)*time.Minute)); n != uint64(i+1) {
			t.Fatalf("version %d numbered %d", i+1, n)
		}
	}
	if n := addVersion(t, db, manifest("b", 4), t0); n != 1 {
		t.Fatalf("first version of another path numbered %d, want 1", n)
	}
	for _, tc := range []struct {
		ask, want uint64
	}{{0, 3}, {1, 1}, {2, 2}, {3, 3}} {
		v, m, err := db.Manifest(t.Context(), "a/file", tc.ask)
		if err != nil {
			t.Fatalf("Manifest(a/file, %d): %v", tc.ask, err)
		}
		want := ms[tc.want-1]
		if v.Number != tc.want || v.Path != "a/file" || v.Size != want.Size || v.Digests != want.Digests ||
			v.Chunker != want.Chunker || !v.Created.Equal(t0.Add(time.Duration(tc.want-1)*time.Minute)) {
			t.Errorf("Manifest(a/file, %d) version = %+v, want number %d", tc.ask, v, tc.want)
		}
		if !sameManifest(m, want) {
			t.Errorf("Manifest(a/file, %d) = %+v, want %+v", tc.ask, m, want)
		}
	}
	if _, _, err := db.Manifest(t.Context(), "a/file", 4); !errors.Is(err, index.ErrVersionNotFound) {
		t.Fatalf("Manifest of a version not yet added: got %v, want ErrVersionNotFound", err)
	}
	list, err := db.Versions(t.Context(), "a/file")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("Versions listed %d, want 3", len(list))
	}
	for i, v := range list {
		if v.Number != uint64(i+1) || v.Size != ms[i].Size || v.Digests != ms[i].Digests || v.Path != "a/file" {
			t.Errorf("Versions[%d] = %+v", i, v)
		}
	}
}

func testVersionUnknownPath(t *testing.T, db Backend) {
	addVersion(t, db, manifest("known", 1), t0)
	for _, path := range []string{"unknown", "", "know", "known/x", "known\x00"} {
		if _, _, err := db.Manifest(t.Context(), path, 0); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("Manifest(%q, 0): got %v, want ErrVersionNotFound", path, err)
		}
		if _, _, err := db.Manifest(t.Context(), path, 1); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("Manifest(%q, 1): got %v, want ErrVersionNotFound", path, err)
		}
		if _, err := db.Versions(t.Context(), path); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("Versions(%q): got %v, want ErrVersionNotFound", path, err)
		}
	}
}

// testVersionPathPrefixes checks that paths that are prefixes of each other
// keep their own versions.
func testVersionPathPrefixes(t *testing.T, db Backend) {
	paths := []string{"d/x", "d", "d/x/y", "d0", "d/", "d/x\x01"}
	for i, p := range paths {
		for j := range i + 1 {
			if n := addVersion(t, db, manifest(p, uint64(10*i+j)), t0); n != uint64(j+1) {
				t.Fatalf("version %d of %q numbered %d", j+1, p, n)
			}
		}
	}
	for i, p := range paths {
		list, err := db.Versions(t.Context(), p)
		if err != nil || len(list) != i+1 {
			t.Fatalf("Versions(%q) = %d versions, %v; want %d", p, len(list), err, i+1)
		}
		v, m, err := db.Manifest(t.Context(), p, 0)
		if err != nil || v.Number != uint64(i+1) || !sameManifest(m, manifest(p, uint64(10*i+i))) {
			t.Fatalf("latest of %q = version %d, %v; want %d", p, v.Number, err, i+1)
		}
	}
}

func testVersionRefusesBadManifest(t *testing.T, db Backend) {
	m := manifest("bad", 1)
	m.Size++
	if _, err := db.AddVersion(t.Context(), m, t0); err == nil {
		t.Fatal("AddVersion accepted a manifest whose chunks do not add up to its size")
	}
	if _, err := db.Versions(t.Context(), "bad"); !errors.Is(err, index.ErrVersionNotFound) {
		t.Fatalf("Versions after a refused add: got %v, want ErrVersionNotFound", err)
	}
}

func testConcurrentAddVersion(t *testing.T, db Backend) {
	const n = 8
	got := make([]uint64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			v, err := db.AddVersion(t.Context(), manifest("same", uint64(i)), t0)
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		})
	}
	wg.Wait()
	slices.Sort(got)
	for i, v := range got {
		if v != uint64(i+1) {
			t.Fatalf("concurrent AddVersion numbered %v, want 1..%d", got, n)
		}
	}
}

// testReopen writes one of everything, closes the database, reopens it and
// reads it all back.
func testReopen(t *testing.T, open Opener) {
	dir := t.TempDir()
	db := open(t, dir)
	ctx := t.Context()
	chunk := ids(40, 1)[0]
	addChunk(t, db, chunk, info(0))
	s, _ := openSession(t, db, "alice", spec("r"), t0)
	rs := refs(41, 3)
	rs[1].ID = chunk
	if err := db.AddSessionChunks(ctx, s.ID, 0, rs, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	m := manifest("r", 42)
	addVersion(t, db, m, t0)
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	db = openDB(t, open, dir)
	if got, err := db.Chunk(ctx, chunk); err != nil || got != info(0) {
		t.Errorf("Chunk after reopen = %+v, %v", got, err)
	}
	p := progress(t, db, s.ID)
	checkProgress(t, p, 3, 100+200+300, 1, 200)
	if !p.Updated.Equal(t0.Add(time.Second)) || p.Spec.Path != "r" || !p.Spec.ModTime.Equal(spec("r").ModTime) || p.Spec.Chunker != spec("r").Chunker {
		t.Errorf("session after reopen = %+v", p.Session)
	}
	if s2, re := openSession(t, db, "alice", spec("r"), t0.Add(time.Hour)); !re || s2.ID != s.ID {
		t.Errorf("OpenSession after reopen: %s reattached %v, want %s", s2.ID, re, s.ID)
	}
	if v, got, err := db.Manifest(ctx, "r", 0); err != nil || v.Number != 1 || !sameManifest(got, m) {
		t.Errorf("Manifest after reopen: version %d, %v", v.Number, err)
	}
	if n := addVersion(t, db, manifest("r", 43), t0); n != 2 {
		t.Errorf("version added after reopen numbered %d, want 2", n)
	}
}

// numbers returns the numbers of versions.
func numbers(list []index.Version) []uint64 {
	var out []uint64
	for _, v := range list {
		out = append(out, v.Number)
	}
	return out
}

// listPaths returns the paths of List(prefix), failing on an error or on a
// version that is not its path's latest.
func listPaths(t *testing.T, db Backend, prefix string) []string {
	t.Helper()
	list, err := db.List(t.Context(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	var paths []string
	for _, v := range list {
		latest, err := db.Versions(t.Context(), v.Path)
		if err != nil {
			t.Fatalf("Versions(%q): %v", v.Path, err)
		}
		if want := latest[len(latest)-1]; v != want {
			t.Errorf("List(%q) gives %q version %d, want the latest, %d", prefix, v.Path, v.Number, want.Number)
		}
		paths = append(paths, v.Path)
	}
	return paths
}

func testList(t *testing.T, db Backend) {
	if list, err := db.List(t.Context(), ""); err != nil || len(list) != 0 {
		t.Fatalf("List of an empty catalogue = %v, %v", list, err)
	}
	// Added out of order, with several versions each.
	for i, p := range []string{"b", "a/2", "a/1", "c", "a/1"} {
		addVersion(t, db, manifest(p, uint64(i)), t0.Add(time.Duration(i)*time.Second))
	}
	for i := range 3 {
		addVersion(t, db, manifest("b", uint64(10+i)), t0)
	}
	if got, want := listPaths(t, db, ""), []string{"a/1", "a/2", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("List(\"\") = %q, want %q", got, want)
	}
	list, err := db.List(t.Context(), "b")
	if err != nil || len(list) != 1 || list[0].Number != 4 || list[0].Digests != manifest("b", 12).Digests {
		t.Fatalf("List(b) = %+v, %v; want version 4 of b", list, err)
	}
}

// testListPrefixes checks that the prefix is a byte prefix of the path and
// that paths that are prefixes of each other list apart.
func testListPrefixes(t *testing.T, db Backend) {
	paths := []string{"d", "d/x", "d/x/y", "d/", "d0", "d/x\x01", "e", "dd"}
	for i, p := range paths {
		for j := range 3 {
			addVersion(t, db, manifest(p, uint64(10*i+j)), t0)
		}
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"d", "d/", "d/x", "d/x\x01", "d/x/y", "d0", "dd", "e"}},
		{"d", []string{"d", "d/", "d/x", "d/x\x01", "d/x/y", "d0", "dd"}},
		{"d/", []string{"d/", "d/x", "d/x\x01", "d/x/y"}},
		{"d/x", []string{"d/x", "d/x\x01", "d/x/y"}},
		{"d/x/", []string{"d/x/y"}},
		{"d/x/y", []string{"d/x/y"}},
		{"d/x/y/", nil},
		{"f", nil},
		{"d\x00", nil},
		{"\x00", nil},
	} {
		if got := listPaths(t, db, tc.prefix); !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func testPruneVersions(t *testing.T, db Backend) {
	for i := range 5 {
		addVersion(t, db, manifest("p", uint64(i)), t0)
	}
	addVersion(t, db, manifest("p/other", 9), t0)
	for _, keep := range []int{0, -1} {
		if _, err := db.PruneVersions(t.Context(), "p", keep); err == nil {
			t.Errorf("PruneVersions accepted keep %d", keep)
		}
	}
	for _, path := range []string{"unknown", "", "p\x00"} {
		if _, err := db.PruneVersions(t.Context(), path, 1); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("PruneVersions(%q): got %v, want ErrVersionNotFound", path, err)
		}
	}
	for _, step := range []struct {
		keep   int
		pruned []uint64
		left   []uint64
	}{
		{5, nil, []uint64{1, 2, 3, 4, 5}},
		{9, nil, []uint64{1, 2, 3, 4, 5}},
		{3, []uint64{1, 2}, []uint64{3, 4, 5}},
		{3, nil, []uint64{3, 4, 5}},
		{1, []uint64{3, 4}, []uint64{5}},
		{1, nil, []uint64{5}},
	} {
		pruned, err := db.PruneVersions(t.Context(), "p", step.keep)
		if err != nil || !slices.Equal(pruned, step.pruned) {
			t.Fatalf("PruneVersions(p, %d) = %v, %v; want %v", step.keep, pruned, err, step.pruned)
		}
		list, err := db.Versions(t.Context(), "p")
		if err != nil || !slices.Equal(numbers(list), step.left) {
			t.Fatalf("after PruneVersions(p, %d): versions %v, %v; want %v", step.keep, numbers(list), err, step.left)
		}
	}
	for _, n := range []uint64{1, 4} {
		if _, _, err := db.Manifest(t.Context(), "p", n); !errors.Is(err, index.ErrVersionNotFound) {
			t.Errorf("Manifest of pruned version %d: got %v, want ErrVersionNotFound", n, err)
		}
	}
	if v, m, err := db.Manifest(t.Context(), "p", 0); err != nil || v.Number != 5 || !sameManifest(m, manifest("p", 4)) {
		t.Fatalf("latest after pruning = version %d, %v; want 5", v.Number, err)
	}
	if list, err := db.Versions(t.Context(), "p/other"); err != nil || len(list) != 1 {
		t.Fatalf("a path that p is a prefix of lost versions: %v, %v", numbers(list), err)
	}
}

// testPruneNeverReusesNumbers checks that a version added after pruning
// gets the number after the highest ever given, not one a pruned version
// had.
func testPruneNeverReusesNumbers(t *testing.T, db Backend) {
	for i := range 4 {
		addVersion(t, db, manifest("n", uint64(i)), t0)
	}
	for round := range 3 {
		if _, err := db.PruneVersions(t.Context(), "n", 1); err != nil {
			t.Fatal(err)
		}
		want := uint64(5 + round)
		if n := addVersion(t, db, manifest("n", uint64(10+round)), t0); n != want {
			t.Fatalf("version added after pruning numbered %d, want %d", n, want)
		}
	}
	if _, err := db.PruneAll(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	if n := addVersion(t, db, manifest("n", 20), t0); n != 8 {
		t.Fatalf("version added after PruneAll numbered %d, want 8", n)
	}
}

func testPruneAll(t *testing.T, db Backend) {
	if n, err := db.PruneAll(t.Context(), 1); err != nil || n != 0 {
		t.Fatalf("PruneAll of an empty catalogue = %d, %v", n, err)
	}
	counts := map[string]int{"a": 1, "a/b": 4, "b": 2, "c": 7, "c/": 3}
	for p, n := range counts {
		for i := range n {
			addVersion(t, db, manifest(p, uint64(i)), t0)
		}
	}
	if _, err := db.PruneAll(t.Context(), 0); err == nil {
		t.Error("PruneAll accepted keep 0")
	}
	n, err := db.PruneAll(t.Context(), 2)
	if want := 2 + 5 + 1; err != nil || n != want {
		t.Fatalf("PruneAll(2) = %d, %v; want %d", n, err, want)
	}
	for p, c := range counts {
		list, err := db.Versions(t.Context(), p)
		if err != nil {
			t.Fatal(err)
		}
		var want []uint64
		for i := max(c-2, 0); i < c; i++ {
			want = append(want, uint64(i+1))
		}
		if !slices.Equal(numbers(list), want) {
			t.Errorf("after PruneAll(2): %s has versions %v, want %v", p, numbers(list), want)
		}
	}
	if n, err := db.PruneAll(t.Context(), 2); err != nil || n != 0 {
		t.Fatalf("PruneAll(2) again = %d, %v; want 0", n, err)
	}
	if got := listPaths(t, db, ""); len(got) != len(counts) {
		t.Fatalf("List after PruneAll = %q, want the %d paths", got, len(counts))
	}
}

// testConcurrentPruneAndAdd prunes a path while versions of it are added:
// every number is given once, the latest is never pruned, and no more
// than keep versions are left once the adds end and one last prune ran.
func testConcurrentPruneAndAdd(t *testing.T, db Backend) {
	const adders, each, keep = 4, 10, 2
	var wg sync.WaitGroup
	got := make(chan uint64, adders*each)
	done := make(chan struct{})
	for a := range adders {
		wg.Go(func() {
			for i := range each {
				n, err := db.AddVersion(t.Context(), manifest("cp", uint64(100*a+i)), t0)
				if err != nil {
					t.Error(err)
					return
				}
				got <- n
			}
		})
	}
	pruner := make(chan error, 1)
	go func() {
		defer close(pruner)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := db.PruneAll(t.Context(), keep); err != nil {
				pruner <- err
				return
			}
			if _, err := db.PruneVersions(t.Context(), "cp", keep); err != nil && !errors.Is(err, index.ErrVersionNotFound) {
				pruner <- err
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	if err := <-pruner; err != nil {
		t.Fatalf("prune beside AddVersion: %v", err)
	}
	close(got)
	var nums []uint64
	for n := range got {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for i, n := range nums {
		if n != uint64(i+1) {
			t.Fatalf("AddVersion beside pruning numbered %v, want 1..%d once each", nums, adders*each)
		}
	}
	if _, err := db.PruneVersions(t.Context(), "cp", keep); err != nil {
		t.Fatal(err)
	}
	list, err := db.Versions(t.Context(), "cp")
	if want := []uint64{adders*each - 1, adders * each}; err != nil || !slices.Equal(numbers(list), want) {
		t.Fatalf("versions left = %v, %v; want %v", numbers(list), err, want)
	}
}
