package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// gcEnv is a database, a directory store and their Collector, in a
// temporary directory.
type gcEnv struct {
	db    *DB
	store *DirStore
	c     *Collector
}

func newGCEnv(t *testing.T) *gcEnv {
	t.Helper()
	dir := t.TempDir()
	store, err := OpenDirStore(filepath.Join(dir, "chunks"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenDB(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &gcEnv{db: db, store: store, c: NewCollector(db, store)}
}

// gcChunk is a test chunk: name is its content, at most 1024 bytes.
type gcChunk string

func (c gcChunk) id() engine.ChunkID { return engine.SumChunk([]byte(c)) }

func (c gcChunk) ref() engine.ChunkRef {
	return engine.ChunkRef{ID: c.id(), Size: uint32(len(c))}
}

// put stores c through the Collector.
func (e *gcEnv) put(t *testing.T, c gcChunk) {
	t.Helper()
	if err := e.c.Put(t.Context(), c.id(), engine.CodecRaw, uint32(len(c)), []byte(c)); err != nil {
		t.Fatalf("Put(%q): %v", c, err)
	}
}

// gcManifest returns a manifest of path made of chunks; seed tells versions
// with the same chunks apart.
func gcManifest(path string, seed int, chunks ...gcChunk) *engine.Manifest {
	m := &engine.Manifest{
		Path:    path,
		Mode:    0o644,
		ModTime: time.Unix(1.8e9+int64(seed), 0).UTC(),
		Chunker: engine.ChunkerParams{Name: "fixed", Min: 1024, Avg: 1024, Max: 1024},
	}
	for _, c := range chunks {
		m.Chunks = append(m.Chunks, c.ref())
		m.Size += int64(len(c))
	}
	m.Digests.MD5[0], m.Digests.MD5[1] = byte(seed), byte(seed>>8)
	return m
}

// addVersion commits m as a server does: it records the version and, the
// version being in place, finishes the commit, keeping every version.
func (e *gcEnv) addVersion(t *testing.T, m *engine.Manifest) uint64 {
	t.Helper()
	n, err := e.c.AddVersion(t.Context(), m, "", time.Unix(1.9e9, 0))
	if err != nil {
		t.Fatalf("AddVersion(%s): %v", m.Path, err)
	}
	if _, err := e.db.FinishCommit(t.Context(), m.Path, n, math.MaxInt); err != nil {
		t.Fatal(err)
	}
	return n
}

// openSession opens a session for path listing chunks.
func (e *gcEnv) openSession(t *testing.T, path string, chunks ...gcChunk) Session {
	t.Helper()
	s, _, err := e.db.OpenSession(t.Context(), "o", testSpec(path), time.Unix(1.9e9, 0))
	if err != nil {
		t.Fatal(err)
	}
	var refs []engine.ChunkRef
	for _, c := range chunks {
		refs = append(refs, c.ref())
	}
	if err := e.db.AddSessionChunks(t.Context(), s.ID, 0, refs, s.Updated); err != nil {
		t.Fatal(err)
	}
	return s
}

// stored reports whether the index records id and whether the store holds
// it, failing on any other error.
func (e *gcEnv) stored(t *testing.T, id engine.ChunkID) (indexed, inStore bool) {
	t.Helper()
	_, err := e.db.Chunk(t.Context(), id)
	if err != nil && !errors.Is(err, ErrChunkMissing) {
		t.Fatal(err)
	}
	indexed = err == nil
	_, err = e.store.Get(t.Context(), id, nil)
	if err != nil && !errors.Is(err, ErrChunkMissing) {
		t.Fatal(err)
	}
	return indexed, err == nil
}

// checkKept fails unless the index and the store both hold c.
func (e *gcEnv) checkKept(t *testing.T, c gcChunk) {
	t.Helper()
	if indexed, inStore := e.stored(t, c.id()); !indexed || !inStore {
		t.Errorf("chunk %q: indexed %v, stored %v; want it kept", c, indexed, inStore)
	}
}

// checkGone fails unless neither the index nor the store holds c.
func (e *gcEnv) checkGone(t *testing.T, c gcChunk) {
	t.Helper()
	if indexed, inStore := e.stored(t, c.id()); indexed || inStore {
		t.Errorf("chunk %q: indexed %v, stored %v; want it deleted", c, indexed, inStore)
	}
}

func (e *gcEnv) collect(t *testing.T, opts CollectOptions) GCStats {
	t.Helper()
	st, err := e.c.Collect(t.Context(), opts)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return st
}

// TestCollectPrunedVersions prunes a file to its two newest versions and
// collects: exactly the chunks that only the pruned versions named go,
// with the chunk a crash left unrecorded in the store.
func TestCollectPrunedVersions(t *testing.T) {
	e := newGCEnv(t)
	own := func(v, i int) gcChunk { return gcChunk(fmt.Sprintf("f v%d chunk %d", v, i)) }
	const (
		shared   gcChunk = "in v2 and v5"
		otherToo gcChunk = "in v1 and in g"
		gOnly    gcChunk = "only in g"
		sessOnly gcChunk = "only in the session"
		absent   gcChunk = "listed by the session, never stored"
		orphan   gcChunk = "stored, never recorded"
	)
	for v := 1; v <= 5; v++ {
		chunks := []gcChunk{own(v, 0), own(v, 1)}
		switch v {
		case 1:
			chunks = append(chunks, otherToo)
		case 2, 5:
			chunks = append(chunks, shared)
		}
		for _, c := range chunks {
			e.put(t, c)
		}
		if n := e.addVersion(t, gcManifest("f", v, chunks...)); n != uint64(v) {
			t.Fatalf("version %d numbered %d", v, n)
		}
	}
	e.put(t, gOnly)
	e.addVersion(t, gcManifest("g", 0, gOnly, otherToo))
	// An open session lists a chunk of its own and one that only the
	// pruned v1 names.
	e.put(t, sessOnly)
	e.openSession(t, "h", sessOnly, own(1, 0), absent)
	if err := e.store.Put(t.Context(), orphan.id(), engine.CodecRaw, uint32(len(orphan)), []byte(orphan)); err != nil {
		t.Fatal(err)
	}

	pruned, err := e.db.PruneVersions(t.Context(), "f", 2)
	if err != nil || !slices.Equal(pruned, []uint64{1, 2, 3}) {
		t.Fatalf("PruneVersions(f, 2) = %v, %v; want [1 2 3]", pruned, err)
	}
	before, err := e.db.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	st := e.collect(t, CollectOptions{BatchSize: 2})

	gone := []gcChunk{own(1, 1), own(2, 0), own(2, 1), own(3, 0), own(3, 1), orphan}
	kept := []gcChunk{own(1, 0), shared, otherToo, gOnly, sessOnly, own(4, 0), own(4, 1), own(5, 0), own(5, 1)}
	for _, c := range gone {
		e.checkGone(t, c)
	}
	for _, c := range kept {
		e.checkKept(t, c)
	}
	var raw int64
	for _, c := range gone[:5] {
		raw += int64(len(c))
	}
	want := GCStats{
		Versions: 3, Sessions: 1,
		// v4, v5 and g name 7 chunks; the session adds 3.
		ChunksMarked:  10,
		ChunksDeleted: 5, RawBytesFreed: raw, StoredBytesFreed: raw,
		OrphansDeleted: 1,
	}
	got := st
	got.Duration = 0
	if got != want {
		t.Errorf("Collect = %+v, want %+v", got, want)
	}
	after, err := e.db.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if after.Chunks != before.Chunks-5 || after.RawBytes != before.RawBytes-raw || after.Versions != 3 || after.Paths != 2 {
		t.Errorf("Stats after Collect = %+v, before %+v", after, before)
	}
	if st := e.collect(t, CollectOptions{}); st.ChunksDeleted != 0 || st.OrphansDeleted != 0 {
		t.Errorf("second Collect deleted %d chunks and %d orphans, want none", st.ChunksDeleted, st.OrphansDeleted)
	}
	for _, c := range kept {
		e.checkKept(t, c)
	}
}

// TestCollectKeepsTouchedChunks asks about chunks between mark and sweep:
// a chunk Has reports present, a chunk Put stores and a chunk a version
// added by AddVersion names all survive the collection, though the mark
// found nothing naming them; an untouched one goes.
func TestCollectKeepsTouchedChunks(t *testing.T) {
	e := newGCEnv(t)
	const (
		asked     gcChunk = "asked about during the collection"
		putDuring gcChunk = "stored during the collection"
		committed gcChunk = "named by a version added during the collection"
		untouched gcChunk = "nobody asks"
		never     gcChunk = "never stored"
	)
	for _, c := range []gcChunk{asked, committed, untouched} {
		e.put(t, c)
	}
	ran := false
	e.c.afterMark = func() {
		ran = true
		has, err := e.c.Has(t.Context(), []engine.ChunkID{asked.id(), never.id()})
		if err != nil || !slices.Equal(has, []bool{true, false}) {
			t.Errorf("Has during the collection = %v, %v; want [true false]", has, err)
		}
		e.put(t, putDuring)
		e.addVersion(t, gcManifest("late", 1, committed))
	}
	st := e.collect(t, CollectOptions{})
	if !ran {
		t.Fatal("the hook between mark and sweep did not run")
	}
	for _, c := range []gcChunk{asked, putDuring, committed} {
		e.checkKept(t, c)
	}
	e.checkGone(t, untouched)
	// The mark did not see the new version, so its chunk too was kept
	// because it was touched.
	if st.ChunksDeleted != 1 || st.ChunksKeptForPushes != 3 {
		t.Errorf("Collect deleted %d and kept %d for pushes; want 1 and 3", st.ChunksDeleted, st.ChunksKeptForPushes)
	}

	// Touches last one collection: the next deletes what nothing names.
	e.c.afterMark = nil
	st = e.collect(t, CollectOptions{})
	e.checkGone(t, asked)
	e.checkGone(t, putDuring)
	e.checkKept(t, committed)
	if st.ChunksDeleted != 2 || st.ChunksKeptForPushes != 0 {
		t.Errorf("second Collect deleted %d and kept %d for pushes; want 2 and 0", st.ChunksDeleted, st.ChunksKeptForPushes)
	}
}

// TestCollectOneAtATime starts a collection from inside another.
func TestCollectOneAtATime(t *testing.T) {
	e := newGCEnv(t)
	var inner error
	e.c.afterMark = func() {
		_, inner = e.c.Collect(t.Context(), CollectOptions{})
	}
	e.collect(t, CollectOptions{})
	if !errors.Is(inner, ErrCollecting) {
		t.Fatalf("Collect during a collection: got %v, want ErrCollecting", inner)
	}
	e.c.afterMark = nil
	e.collect(t, CollectOptions{})
}

// TestCollectorAddVersionRefusesMissing checks that a manifest naming
// chunks the index lacks is refused and records nothing.
func TestCollectorAddVersionRefusesMissing(t *testing.T) {
	e := newGCEnv(t)
	const a, b, c gcChunk = "a", "b", "c"
	e.put(t, b)
	_, err := e.c.AddVersion(t.Context(), gcManifest("m", 1, a, b, c), "", time.Unix(1.9e9, 0))
	var missing *MissingChunksError
	if !errors.Is(err, ErrChunkMissing) || !errors.As(err, &missing) {
		t.Fatalf("AddVersion naming unstored chunks: got %v, want a MissingChunksError", err)
	}
	if missing.Path != "m" || missing.Missing != 2 || missing.First != a.id() {
		t.Errorf("MissingChunksError = %+v, want 2 missing, first %s", missing, a.id())
	}
	if _, err := e.db.Versions(t.Context(), "m"); !errors.Is(err, ErrVersionNotFound) {
		t.Fatalf("Versions after a refused AddVersion: got %v, want ErrVersionNotFound", err)
	}
}

// TestCollectLargeIndex collects an index whose referenced chunks run for
// longer than one scan transaction reads, and whose garbage fills many
// batches.
func TestCollectLargeIndex(t *testing.T) {
	e := newGCEnv(t)
	const live, garbage = 70_000, 3_000
	ids := seededIDs(9, live+garbage)
	// IDs below 0x80 are garbage, so that the live ones, above, make a run
	// longer than the scan limit.
	for i := range ids {
		ids[i][0] &= 0x7f
		if i < live {
			ids[i][0] |= 0x80
		}
	}
	val := encodeChunkRecord(nil, ChunkInfo{Size: 1, Stored: 1, Codec: engine.CodecRaw})
	// In key order: bbolt inserts in random order into one transaction's
	// node in quadratic time.
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b engine.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	if err := e.db.bolt.Update(func(tx *bolt.Tx) error {
		for _, id := range sorted {
			if err := tx.Bucket(bucketChunks).Put(id[:], val); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m := &engine.Manifest{Path: "big", Size: live, Chunker: engine.ChunkerParams{Name: "fixed", Min: 1024, Avg: 1024, Max: 1024}}
	for _, id := range ids[:live] {
		m.Chunks = append(m.Chunks, engine.ChunkRef{ID: id, Size: 1})
	}
	e.addVersion(t, m)
	st := e.collect(t, CollectOptions{})
	if st.ChunksDeleted != garbage || st.ChunksMarked != live || st.RawBytesFreed != garbage {
		t.Fatalf("Collect = %+v; want %d deleted of %d", st, garbage, live+garbage)
	}
	has, err := e.c.Has(t.Context(), ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range has {
		if h != (i < live) {
			t.Fatalf("chunk %d (%s) recorded %v after Collect, want %v", i, ids[i], h, i < live)
		}
	}
}

// TestCollectDuringPushes runs collections, each after pruning every file
// to its latest version, while pushes run as the server runs them: open a
// session, list the chunks in it, ask Has, Put the missing ones, check
// every chunk is there, commit with AddVersion (the Collector's or, relying
// on the session alone, the DB's) and end the session; some pushes leave
// their session open. Pushes share chunks, so collections keep deleting
// chunks that a push is about to reuse. At the end, every chunk a version
// or an open session names is in the index and the store, and after one
// more collection nothing else is.
func TestCollectDuringPushes(t *testing.T) {
	e := newGCEnv(t)
	ctx := t.Context()
	const (
		pushers        = 4
		minPushes      = 25
		minCollections = 15
		poolSize       = 30
	)
	pool := func(i int) gcChunk { return gcChunk(fmt.Sprintf("pool chunk %d", i)) }
	var (
		everUsed    sync.Map // engine.ChunkID → gcChunk
		collections atomic.Int64
		stop        = make(chan struct{})
	)
	push := func(w, k int, r *rand.Rand) error {
		path := fmt.Sprintf("file%d", r.IntN(3))
		chunks := []gcChunk{pool(r.IntN(poolSize)), pool(r.IntN(poolSize)), pool(r.IntN(poolSize))}
		for i := range 2 {
			chunks = append(chunks, gcChunk(fmt.Sprintf("pusher %d push %d chunk %d", w, k, i)))
		}
		ids := make([]engine.ChunkID, len(chunks))
		refs := make([]engine.ChunkRef, len(chunks))
		for i, c := range chunks {
			ids[i], refs[i] = c.id(), c.ref()
			everUsed.Store(c.id(), c)
		}
		spec := testSpec(path)
		spec.ModTime = time.Unix(int64(1e9+1000*w+k), 0)
		s, _, err := e.db.OpenSession(ctx, fmt.Sprint("pusher", w), spec, time.Now())
		if err != nil {
			return err
		}
		// The session lists the chunks before Has is asked about them.
		if err := e.db.AddSessionChunks(ctx, s.ID, 0, refs, time.Now()); err != nil {
			return err
		}
		has, err := e.c.Has(ctx, ids)
		if err != nil {
			return err
		}
		for i, c := range chunks {
			if !has[i] {
				if err := e.c.Put(ctx, c.id(), engine.CodecRaw, uint32(len(c)), []byte(c)); err != nil {
					return err
				}
			}
		}
		// The open session keeps every chunk it lists.
		for _, c := range chunks {
			got, err := e.store.Get(ctx, c.id(), nil)
			if err != nil || !bytes.Equal(got, []byte(c)) {
				return fmt.Errorf("push %d of pusher %d: chunk %q reported stored: %v", k, w, c, err)
			}
		}
		if k%4 == 3 {
			return nil
		}
		m := gcManifest(path, 1000*w+k, chunks...)
		if k%2 == 0 {
			_, err = e.c.AddVersion(ctx, m, "", time.Now())
		} else {
			_, err = e.db.AddVersion(ctx, m, time.Now())
		}
		if err != nil {
			return err
		}
		return e.db.DeleteSession(ctx, s.ID)
	}

	var pushing sync.WaitGroup
	errs := make(chan error, pushers+1)
	for w := range pushers {
		pushing.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 77))
			for k := 0; k < minPushes || collections.Load() < minCollections; k++ {
				if err := push(w, k, r); err != nil {
					errs <- fmt.Errorf("pusher %d, push %d: %w", w, k, err)
					return
				}
			}
		})
	}
	var collecting sync.WaitGroup
	var deleted, keptForPushes int
	collecting.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := e.db.PruneAll(ctx, 1); err != nil {
				errs <- err
				return
			}
			st, err := e.c.Collect(ctx, CollectOptions{BatchSize: 3})
			if err != nil {
				errs <- err
				return
			}
			deleted += st.ChunksDeleted
			keptForPushes += st.ChunksKeptForPushes
			collections.Add(1)
		}
	})
	pushing.Wait()
	close(stop)
	collecting.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d collections deleted %d chunks beside the pushes and kept %d for them", collections.Load(), deleted, keptForPushes)
	if deleted == 0 {
		t.Error("no collection deleted a chunk while pushes ran")
	}

	named := e.namedChunks(t)
	for id := range named {
		c, _ := everUsed.Load(id)
		e.checkKept(t, c.(gcChunk))
	}
	e.collect(t, CollectOptions{})
	everUsed.Range(func(k, v any) bool {
		if _, ok := named[k.(engine.ChunkID)]; ok {
			e.checkKept(t, v.(gcChunk))
		} else {
			e.checkGone(t, v.(gcChunk))
		}
		return true
	})
}

// namedChunks returns the chunks that the versions and the open sessions
// name.
func (e *gcEnv) namedChunks(t *testing.T) map[engine.ChunkID]struct{} {
	t.Helper()
	ctx := t.Context()
	named := map[engine.ChunkID]struct{}{}
	latest, err := e.db.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range latest {
		versions, err := e.db.Versions(ctx, l.Path)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range versions {
			_, m, err := e.db.Manifest(ctx, v.Path, v.Number)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range m.Chunks {
				named[r.ID] = struct{}{}
			}
		}
	}
	if err := e.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessionChunks).ForEach(func(k, v []byte) error {
			ref, err := decodeSessionRefRecord(k, v)
			named[ref.ID] = struct{}{}
			return err
		})
	}); err != nil {
		t.Fatal(err)
	}
	return named
}

// TestCollectCanceled checks that a canceled collection deletes nothing.
func TestCollectCanceled(t *testing.T) {
	e := newGCEnv(t)
	const c gcChunk = "garbage"
	e.put(t, c)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.c.Collect(ctx, CollectOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Collect with a canceled context: got %v, want context.Canceled", err)
	}
	e.checkKept(t, c)
	// The failed run released the Collector.
	e.collect(t, CollectOptions{})
	e.checkGone(t, c)
}

// A commit records its version and ends its upload session in one
// transaction: a crash between the two left the session open, and the
// client's retried commit recorded the version a second time.
func TestCollectorAddVersionEndsSession(t *testing.T) {
	e := newGCEnv(t)
	a := gcChunk("committed chunk")
	e.put(t, a)
	s := e.openSession(t, "p", a)
	n, err := e.c.AddVersion(t.Context(), gcManifest("p", 1, a), s.ID, time.Unix(1.9e9, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Session(t.Context(), s.ID); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("session after its commit: %v, want ErrSessionNotFound", err)
	}
	if got := bucketLen(t, e.db, bucketSessionChunks); got != 0 {
		t.Errorf("%d chunk list entries left after the commit", got)
	}
	// A session that has ended is no reason to refuse a version.
	if m, err := e.c.AddVersion(t.Context(), gcManifest("p", 2, a), s.ID, time.Unix(1.9e9, 0)); err != nil || m != n+1 {
		t.Errorf("AddVersion naming an ended session: %d, %v", m, err)
	}
}

// TestCommitPending: a commit's version is pending from the transaction
// that records it until the server finishes the commit, which prunes in
// the same transaction; a later commit's mark outlives an earlier one's
// finish, and DB.AddVersion, no server's commit, marks nothing.
func TestCommitPending(t *testing.T) {
	e := newGCEnv(t)
	e.put(t, "a")
	ctx := t.Context()
	pending := func(want ...PendingVersion) {
		t.Helper()
		got, err := e.db.PendingVersions(ctx)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("PendingVersions = %v, %v; want %v", got, err, want)
		}
	}
	pending()
	for v := 1; v <= 2; v++ {
		if _, err := e.c.AddVersion(ctx, gcManifest("f", v, "a"), "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.db.AddVersion(ctx, gcManifest("g", 1, "a"), time.Now()); err != nil {
		t.Fatal(err)
	}
	pending(PendingVersion{"f", 2})
	if _, err := e.db.FinishCommit(ctx, "f", 1, 10); err != nil {
		t.Fatal(err)
	}
	pending(PendingVersion{"f", 2})
	pruned, err := e.db.FinishCommit(ctx, "f", 2, 1)
	if err != nil || !slices.Equal(pruned, []uint64{1}) {
		t.Fatalf("FinishCommit(f, 2, keep 1) = %v, %v; want [1] pruned", pruned, err)
	}
	pending()
	if _, err := e.db.FinishCommit(ctx, "none", 1, 1); !errors.Is(err, ErrVersionNotFound) {
		t.Errorf("FinishCommit of a path without versions: %v, want ErrVersionNotFound", err)
	}
}

// TestPendingVersionsOfAnOlderDatabase: a database from before pending
// versions lacks their bucket; read-only, as verify opens it, it has none
// pending, and opened by a server it gains the bucket.
func TestPendingVersionsOfAnOlderDatabase(t *testing.T) {
	e := newGCEnv(t)
	e.put(t, "a")
	if err := e.db.update(t.Context(), func(tx *bolt.Tx) error {
		return tx.DeleteBucket(bucketPendingVersions)
	}); err != nil {
		t.Fatal(err)
	}
	path := e.db.Path()
	e.db.Close()
	ro, err := OpenDBReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	if list, err := ro.PendingVersions(t.Context()); err != nil || len(list) != 0 {
		t.Errorf("PendingVersions of an older database = %v, %v; want none", list, err)
	}
	ro.Close()
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := NewCollector(db, e.store)
	if _, err := c.AddVersion(t.Context(), gcManifest("f", 1, "a"), "", time.Now()); err != nil {
		t.Fatalf("commit on an older database: %v", err)
	}
}
