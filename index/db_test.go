package index

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

func openTestDB(t *testing.T) *DB {
	t.Helper()
	db, err := OpenDB(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func testSpec(path string) engine.UploadSpec {
	return engine.UploadSpec{Path: path, Size: 1 << 20, Mode: 0o644, ModTime: time.Unix(1e9, 0),
		Chunker: engine.ChunkerParams{Name: "fixed", Min: 4096, Avg: 4096, Max: 4096}}
}

// bucketLen counts the keys of a bucket.
func bucketLen(t *testing.T, db *DB, name []byte) int {
	t.Helper()
	var n int
	if err := db.bolt.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(name).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDBSessionRemovalDropsRecords checks that deleting and expiring
// sessions leaves no chunk list or spec index entry behind.
func TestDBSessionRemovalDropsRecords(t *testing.T) {
	db := openTestDB(t)
	ctx := t.Context()
	now := time.Unix(2e9, 0)
	// Session b lists more chunks than deleteSession removes in one round.
	counts := []int{5000, 1<<16 + 5000, 5000}
	var refs []engine.ChunkRef
	for i := range counts[1] {
		refs = append(refs, engine.ChunkRef{ID: engine.SumChunk([]byte{byte(i), byte(i >> 8), byte(i >> 16)}), Size: 4096})
	}
	var ids []string
	for i, p := range []string{"a", "b", "c"} {
		s, _, err := db.OpenSession(ctx, "o", testSpec(p), now.Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.AddSessionChunks(ctx, s.ID, 0, refs[:counts[i]], s.Updated); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	if n, want := bucketLen(t, db, bucketSessionChunks), counts[0]+counts[1]+counts[2]; n != want {
		t.Fatalf("%d session chunk records, want %d", n, want)
	}
	if err := db.DeleteSession(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if n, want := bucketLen(t, db, bucketSessionChunks), counts[0]+counts[2]; n != want {
		t.Fatalf("after delete: %d session chunk records, want %d", n, want)
	}
	for _, id := range []string{ids[0], ids[2]} {
		if p, err := db.SessionProgress(ctx, id); err != nil || p.Chunks != 5000 {
			t.Fatalf("session beside the deleted one lists %d chunks, %v; want 5000", p.Chunks, err)
		}
	}
	if got, err := db.ExpireSessions(ctx, now.Add(3*time.Hour)); err != nil || len(got) != 2 {
		t.Fatalf("ExpireSessions = %v, %v", got, err)
	}
	for _, b := range [][]byte{bucketSessions, bucketSessionSpecs, bucketSessionChunks} {
		if n := bucketLen(t, db, b); n != 0 {
			t.Errorf("bucket %s keeps %d records after every session is gone", b, n)
		}
	}
}

func TestDBClosed(t *testing.T) {
	db := openTestDB(t)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := t.Context()
	if err := db.AddChunk(ctx, engine.ChunkID{1}, ChunkInfo{Size: 1, Stored: 1}); !errors.Is(err, ErrClosed) {
		t.Errorf("AddChunk after Close: got %v, want ErrClosed", err)
	}
	if _, err := db.HasChunks(ctx, []engine.ChunkID{{1}}); !errors.Is(err, ErrClosed) {
		t.Errorf("HasChunks after Close: got %v, want ErrClosed", err)
	}
	if _, _, err := db.OpenSession(ctx, "o", testSpec("x"), time.Now()); !errors.Is(err, ErrClosed) {
		t.Errorf("OpenSession after Close: got %v, want ErrClosed", err)
	}
}

// TestDBGroupCommit checks that concurrent writers share transactions.
func TestDBGroupCommit(t *testing.T) {
	db := openTestDB(t)
	const writers = 32
	before := db.commits.Load()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			<-start
			if err := db.AddChunk(t.Context(), engine.ChunkID{byte(i), 1}, ChunkInfo{Size: 10, Stored: 10}); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	commits := db.commits.Load() - before
	t.Logf("%d concurrent AddChunk calls in %d transactions", writers, commits)
	if commits > writers/2 {
		t.Errorf("%d concurrent AddChunk calls took %d transactions: writes are not grouped", writers, commits)
	}
	if n := bucketLen(t, db, bucketChunks); n != writers {
		t.Fatalf("%d chunks recorded, want %d", n, writers)
	}
}

// TestDBGroupCommitIsolatesFailures checks that a write that fails inside a
// shared transaction fails alone.
func TestDBGroupCommitIsolatesFailures(t *testing.T) {
	db := openTestDB(t)
	ok := func(k byte) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error { return tx.Bucket(bucketChunks).Put([]byte{k}, []byte{k}) }
	}
	boom := errors.New("boom")
	reqs := []*writeRequest{
		{fn: ok(1), done: make(chan error, 1)},
		{fn: func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketChunks).Put([]byte{2}, []byte{2}); err != nil {
				return err
			}
			return boom
		}, done: make(chan error, 1)},
		{fn: ok(3), done: make(chan error, 1)},
	}
	db.commit(reqs)
	for i, want := range []error{nil, boom, nil} {
		if err := <-reqs[i].done; !errors.Is(err, want) {
			t.Errorf("request %d: got %v, want %v", i, err, want)
		}
	}
	if err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		if b.Get([]byte{1}) == nil || b.Get([]byte{3}) == nil || b.Get([]byte{2}) != nil {
			t.Error("the failed write was kept or the others lost")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestDBCorruptRecord checks that a record that fails to decode gives
// ErrCorruptRecord naming the record kind and key.
func TestDBCorruptRecord(t *testing.T) {
	db := openTestDB(t)
	ctx := t.Context()
	id := engine.ChunkID{0xab, 0xcd}
	s, _, err := db.OpenSession(ctx, "o", testSpec("x"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sid, _ := parseSessionID(s.ID)
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketChunks).Put(id[:], []byte{1, 0, 0}); err != nil {
			return err
		}
		return tx.Bucket(bucketSessions).Put(sid, []byte{9})
	}); err != nil {
		t.Fatal(err)
	}
	_, err = db.Chunk(ctx, id)
	if !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), "chunk record "+id.String()) {
		t.Errorf("Chunk of a corrupt record: %v", err)
	}
	_, err = db.SessionProgress(ctx, s.ID)
	if !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), "session record "+s.ID) {
		t.Errorf("SessionProgress of a corrupt record: %v", err)
	}
	if _, err := db.ListSessions(ctx); !errors.Is(err, ErrCorruptRecord) {
		t.Errorf("ListSessions with a corrupt record: %v", err)
	}
}

func TestDBRefusesOtherFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyFormat, []byte{dbFormat + 1})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if db, err := OpenDB(path); err == nil {
		db.Close()
		t.Fatal("OpenDB accepted a database of another format")
	}
}

// TestDBOpensOldTokensBucket checks that a database written when the index
// still kept token hashes opens and works with its "tokens" bucket in place.
func TestDBOpensOldTokensBucket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("tokens"))
		if err != nil {
			return err
		}
		return b.Put(make([]byte, 32), []byte{1, 0, 5, 'a', 'l', 'i', 'c', 'e'})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = OpenDB(path)
	if err != nil {
		t.Fatalf("OpenDB of a database with a tokens bucket: %v", err)
	}
	defer db.Close()
	if _, _, err := db.OpenSession(t.Context(), "alice", testSpec("p"), time.Now()); err != nil {
		t.Errorf("OpenSession: %v", err)
	}
}

func TestDBRefusesBadSessionInput(t *testing.T) {
	db := openTestDB(t)
	ctx := t.Context()
	long := strings.Repeat("x", engine.MaxPathLen+1)
	for name, tc := range map[string]struct {
		owner string
		spec  engine.UploadSpec
	}{
		"empty path":    {"o", testSpec("")},
		"long path":     {"o", testSpec(long)},
		"NUL in path":   {"o", testSpec("a\x00b")},
		"long owner":    {strings.Repeat("o", maxOwnerLen+1), testSpec("p")},
		"negative size": {"o", func() engine.UploadSpec { s := testSpec("p"); s.Size = -1; return s }()},
	} {
		if _, _, err := db.OpenSession(ctx, tc.owner, tc.spec, time.Now()); err == nil {
			t.Errorf("OpenSession accepted %s", name)
		}
	}
	s, _, err := db.OpenSession(ctx, "o", testSpec("p"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		first int
		refs  []engine.ChunkRef
	}{
		"negative position": {-1, make([]engine.ChunkRef, 1)},
		"past the limit":    {maxSessionChunks, make([]engine.ChunkRef, 1)},
		"huge chunk":        {0, []engine.ChunkRef{{Size: engine.MaxChunkSize + 1}}},
	} {
		if err := db.AddSessionChunks(ctx, s.ID, tc.first, tc.refs, time.Now()); err == nil {
			t.Errorf("AddSessionChunks accepted %s", name)
		}
	}
}

func TestDBSession(t *testing.T) {
	db := openTestDB(t)
	ctx := t.Context()
	now := time.Unix(1e9, 5)
	s, _, err := db.OpenSession(ctx, "o", testSpec("x"), now)
	if err != nil {
		t.Fatal(err)
	}
	got, err := db.Session(ctx, s.ID)
	if err != nil || got.ID != s.ID || got.Owner != "o" || got.Spec.Path != "x" || !got.Updated.Equal(now) {
		t.Fatalf("Session(%s) = %+v, %v; want %+v", s.ID, got, err, s)
	}
	if err := db.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{s.ID, "nonsense"} {
		if _, err := db.Session(ctx, id); !errors.Is(err, ErrSessionNotFound) {
			t.Errorf("Session(%q): got %v, want ErrSessionNotFound", id, err)
		}
	}
}

// TestDBPruneAllRounds checks that PruneAll splits a large prune into
// several transactions and still prunes every path exactly.
func TestDBPruneAllRounds(t *testing.T) {
	db := openTestDB(t)
	m := &engine.Manifest{Path: "x", Size: 1, Chunker: testSpec("x").Chunker,
		Chunks: []engine.ChunkRef{{ID: engine.SumChunk([]byte("x")), Size: 1}}}
	data, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// Three paths whose excess versions add up to more than two rounds.
	paths := map[string]int{"p1": pruneRound/2 + 3, "p2": pruneRound / 2, "p3": pruneRound + 1}
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions)
		for p, n := range paths {
			v := Version{Path: p, Created: time.Unix(1e9, 0).UTC(), Size: 1, Chunker: m.Chunker}
			val := encodeVersionRecord(nil, v, data)
			for i := range n {
				if err := b.Put(versionKey(p, uint64(i+1)), val); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before := db.commits.Load()
	n, err := db.PruneAll(t.Context(), 1)
	if want := pruneRound/2 + 2 + pruneRound/2 - 1 + pruneRound; err != nil || n != want {
		t.Fatalf("PruneAll(1) = %d, %v; want %d", n, err, want)
	}
	if commits := db.commits.Load() - before; commits < 2 {
		t.Errorf("PruneAll of %d versions took %d transactions, want rounds of at most about %d", n, commits, pruneRound)
	}
	for p, count := range paths {
		list, err := db.Versions(t.Context(), p)
		if err != nil || len(list) != 1 || list[0].Number != uint64(count) {
			t.Errorf("%s after PruneAll(1): %d versions, %v; want only version %d", p, len(list), err, count)
		}
	}
}

func TestDBStats(t *testing.T) {
	db := openTestDB(t)
	ctx := t.Context()
	if st, err := db.Stats(ctx); err != nil || st != (Stats{}) {
		t.Fatalf("Stats of an empty database = %+v, %v", st, err)
	}
	for i, info := range []ChunkInfo{
		{Size: 100, Stored: 100, Codec: engine.CodecRaw},
		{Size: 1000, Stored: 300, Codec: engine.CodecZstd},
		{Size: 5, Stored: 5, Codec: engine.CodecRaw},
	} {
		if err := db.AddChunk(ctx, engine.ChunkID{byte(i)}, info); err != nil {
			t.Fatal(err)
		}
	}
	chunk := []engine.ChunkRef{{ID: engine.ChunkID{1}, Size: 1000}}
	for i, p := range []string{"a", "a/b", "a", "b", "a"} {
		m := &engine.Manifest{Path: p, Size: 1000, Chunker: engine.ChunkerParams{Name: "fixed", Min: 1000, Avg: 1000, Max: 1000}, Chunks: chunk}
		m.Digests.MD5[0] = byte(i)
		if _, err := db.AddVersion(ctx, m, time.Unix(1e9, 0)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"s1", "s2"} {
		if _, _, err := db.OpenSession(ctx, "o", testSpec(p), time.Unix(1e9, 0)); err != nil {
			t.Fatal(err)
		}
	}
	want := Stats{Chunks: 3, RawBytes: 1105, StoredBytes: 405, Versions: 5, Paths: 3, Sessions: 2}
	if st, err := db.Stats(ctx); err != nil || st != want {
		t.Fatalf("Stats = %+v, %v; want %+v", st, err, want)
	}
}
