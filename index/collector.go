package index

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// ErrCollecting is returned by Collect while another collection of the same
// Collector runs.
var ErrCollecting = errors.New("a garbage collection is already running")

// MissingChunksError is returned by Collector.AddVersion for a manifest that
// names chunks the index does not record. It matches ErrChunkMissing.
type MissingChunksError struct {
	Path string
	// Missing counts the chunks not recorded; First is the first of them
	// in the manifest.
	Missing int
	First   engine.ChunkID
}

func (e *MissingChunksError) Error() string {
	return fmt.Sprintf("%s names %d chunks not stored, first %s", e.Path, e.Missing, e.First)
}

func (e *MissingChunksError) Unwrap() error { return ErrChunkMissing }

// Walker is implemented by stores that can list their chunks. A Collector
// uses it to find chunks the store holds and the index does not record.
type Walker interface {
	// Walk calls fn with the ID of every stored chunk and stops at the
	// first error fn returns, returning it. fn may delete the chunk it is
	// given. A chunk put or deleted during a walk may or may not be seen.
	Walk(ctx context.Context, fn func(id engine.ChunkID) error) error
}

// defaultCollectBatch is the number of chunks a sweep batch deletes at most
// unless CollectOptions say otherwise.
const defaultCollectBatch = 1000

// CollectOptions tune a collection. The zero value is ready to use.
type CollectOptions struct {
	// BatchSize bounds the chunks one batch of the sweep deletes (1000
	// when 0). Has, Put and AddVersion wait while a batch runs, so it
	// bounds how long a collection can pause a push.
	BatchSize int
	// Checkpoint, when set, is called with CheckpointGCUnrecorded after
	// each batch has deleted its index records and before it deletes the
	// stored chunks, for crash tests that kill the process there.
	Checkpoint func(point string)
}

// CheckpointGCUnrecorded names the point of a collection where a batch's
// chunks are no longer recorded in the index and still in the store.
const CheckpointGCUnrecorded = "gc-unrecorded"

// GCStats is what a collection found and deleted.
type GCStats struct {
	// Versions and Sessions count the versions and open upload sessions
	// whose chunks the collection kept.
	Versions int
	Sessions int
	// ChunksMarked counts the distinct chunks they name.
	ChunksMarked int
	// ChunksDeleted counts the chunks deleted from the index and the
	// store; RawBytesFreed and StoredBytesFreed add up the sizes the index
	// recorded of them.
	ChunksDeleted    int
	RawBytesFreed    int64
	StoredBytesFreed int64
	// ChunksKeptForPushes counts the chunks that nothing named but that
	// were kept because a push asked about them during the collection;
	// the next collection deletes those that nothing names by then.
	ChunksKeptForPushes int
	// OrphansDeleted counts the chunks deleted from the store that the
	// index did not record: left by a crash between storing a chunk and
	// recording it, or by a failed recording.
	OrphansDeleted int
	Duration       time.Duration
}

// Collector stores chunks, answers which chunks are stored, and deletes the
// chunks that no version and no open upload session names (garbage
// collection) while pushes go on. A server makes one Collector for its
// database and store, and sends every chunk lookup and store through it
// (Has and Put, never DB.HasChunks or Store.Put with DB.AddChunk), and
// every commit (AddVersion). Its methods are safe for concurrent use.
//
// The promise it keeps: a chunk that Has reports present, that Put stores or
// that AddVersion finds stays in the index and the store through every
// collection that started before the call, and through every later one
// that finds it named by a version or by the chunk list of an open session.
// So a server records a push's chunk list in its session before it asks Has
// about the chunks (the chunks are then kept until the session ends), and
// commits with AddVersion, which checks the manifest's chunks and records
// the version with no collection in between.
//
// How: Collect marks, in one read transaction, every chunk named by a
// version or a session, then deletes the other chunks in batches. While a
// collection runs, Has, Put and AddVersion record the chunks they are asked
// about as touched before they read the index, holding a lock that a
// batch takes exclusively; the batch drops touched chunks, deletes the
// index records in one transaction and then the stored chunks, all before
// Has can look again. Whatever a call touched after the mark is therefore
// kept by the batches that follow it, and the batches before it deleted
// nothing it reported present.
type Collector struct {
	db    *DB
	store Store

	// sweep keeps Has, Put and AddVersion, which hold it shared, out of a
	// sweep batch, which holds it exclusively.
	sweep sync.RWMutex
	// touched holds the chunks asked about since the running collection
	// started, or is nil while none runs. The field changes under sweep's
	// exclusive lock; under the shared lock, touchMu guards the map.
	touched map[engine.ChunkID]struct{}
	touchMu sync.Mutex
	// running is true while Collect runs.
	running atomic.Bool

	// afterMark, when a test sets it, runs between mark and sweep.
	afterMark func()
}

// NewCollector returns the Collector of db and store. store should be a
// Walker, so that collections also delete the chunks the store holds and
// the index does not record; they cannot otherwise.
func NewCollector(db *DB, store Store) *Collector {
	return &Collector{db: db, store: store}
}

// touch records ids as touched when a collection runs. The caller holds
// sweep shared.
func (c *Collector) touch(ids []engine.ChunkID) {
	if c.touched == nil {
		return
	}
	c.touchMu.Lock()
	defer c.touchMu.Unlock()
	for _, id := range ids {
		c.touched[id] = struct{}{}
	}
}

// Has reports, for each id, whether the index records it, as DB.HasChunks
// does. A chunk it reports present is not deleted by a collection that is
// running or started earlier.
func (c *Collector) Has(ctx context.Context, ids []engine.ChunkID) ([]bool, error) {
	c.sweep.RLock()
	defer c.sweep.RUnlock()
	c.touch(ids)
	return c.db.HasChunks(ctx, ids)
}

// Put stores payload, chunk id encoded with codec, in the store and records
// it in the index, with the sizes rawSize and len(payload). The caller has
// verified that payload decodes to rawSize bytes hashing to id. A
// collection that is running or started earlier does not delete it.
func (c *Collector) Put(ctx context.Context, id engine.ChunkID, codec engine.Codec, rawSize uint32, payload []byte) error {
	c.sweep.RLock()
	defer c.sweep.RUnlock()
	c.touch([]engine.ChunkID{id})
	if err := c.store.Put(ctx, id, codec, rawSize, payload); err != nil {
		return err
	}
	return c.db.AddChunk(ctx, id, ChunkInfo{Size: rawSize, Stored: uint32(len(payload)), Codec: codec})
}

// AddVersion records m as the next version of its path, as DB.AddVersion
// does, if the index records every chunk m names; otherwise it returns a
// *MissingChunksError. No collection deletes a chunk between the check and
// the record, so a version never names a chunk the store lacks. It is a
// server's commit: the same transaction marks the version pending until
// the server has put it in place and says so with DB.FinishCommit (a
// server that crashes in between finds it in DB.PendingVersions), and,
// unless endSession is "", ends that upload session (the push that m
// completes), if it is still open.
func (c *Collector) AddVersion(ctx context.Context, m *engine.Manifest, endSession string, now time.Time) (uint64, error) {
	ids := make([]engine.ChunkID, len(m.Chunks))
	for i, r := range m.Chunks {
		ids[i] = r.ID
	}
	c.sweep.RLock()
	defer c.sweep.RUnlock()
	c.touch(ids)
	has, err := c.db.HasChunks(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("add version of %s: %w", m.Path, err)
	}
	if i := slices.Index(has, false); i >= 0 {
		e := &MissingChunksError{Path: m.Path, First: ids[i]}
		for _, h := range has[i:] {
			if !h {
				e.Missing++
			}
		}
		return 0, fmt.Errorf("add version: %w", e)
	}
	return c.db.addVersion(ctx, m, endSession, true, now)
}

// setTouched starts (an empty map) or stops (nil) recording touched chunks.
// Taking sweep exclusively splits every Has, Put and AddVersion into those
// that ended before and those that see the new map.
func (c *Collector) setTouched(m map[engine.ChunkID]struct{}) {
	c.sweep.Lock()
	defer c.sweep.Unlock()
	c.touched = m
}

// Collect deletes, from the index and the store, every chunk that no
// version and no open upload session names, and, when the store is a
// Walker, every stored chunk that the index does not record and nothing
// names. It returns ErrCollecting while another Collect runs, rather than
// wait to repeat its work. Pushes go on meanwhile (see Collector); each
// batch of deletions pauses them briefly.
//
// A version or session that disappears during a collection may keep its
// chunks until the next one. On an error Collect stops, returning what it
// deleted so far; a batch it stopped in the middle of leaves stored chunks
// that the index no longer records, which the next collection deletes.
func (c *Collector) Collect(ctx context.Context, opts CollectOptions) (GCStats, error) {
	if !c.running.CompareAndSwap(false, true) {
		return GCStats{}, ErrCollecting
	}
	defer c.running.Store(false)
	start := time.Now()
	size := opts.BatchSize
	if size <= 0 {
		size = defaultCollectBatch
	}
	c.setTouched(make(map[engine.ChunkID]struct{}))
	defer c.setTouched(nil)

	st, marked, err := c.mark(ctx)
	if err == nil {
		if c.afterMark != nil {
			c.afterMark()
		}
		err = c.sweepIndex(ctx, marked, size, opts.Checkpoint, &st)
	}
	if err == nil {
		err = c.sweepOrphans(ctx, marked, size, &st)
	}
	st.Duration = time.Since(start)
	if err != nil {
		return st, fmt.Errorf("collect garbage: %w", err)
	}
	return st, nil
}

// mark returns the set of chunks that a version or the chunk list of a
// session names, read in one transaction so that a push that commits
// meanwhile is seen either as its session or as its version. It decodes
// every manifest; one that fails to decode stops the collection, since
// the chunks it names cannot be known.
func (c *Collector) mark(ctx context.Context) (GCStats, map[engine.ChunkID]struct{}, error) {
	var st GCStats
	marked := make(map[engine.ChunkID]struct{})
	err := c.db.view(ctx, func(tx *bolt.Tx) error {
		var m engine.Manifest
		cur := tx.Bucket(bucketVersions).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			_, data, err := decodeVersionRecord(k, v)
			if err != nil {
				return err
			}
			if err := m.UnmarshalBinary(data); err != nil {
				return corruptRecord("version", k, err)
			}
			for _, r := range m.Chunks {
				marked[r.ID] = struct{}{}
			}
			st.Versions++
		}
		st.Sessions = tx.Bucket(bucketSessions).Stats().KeyN
		cur = tx.Bucket(bucketSessionChunks).Cursor()
		n := 0
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if n++; n&0xffff == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			ref, err := decodeSessionRefRecord(k, v)
			if err != nil {
				return err
			}
			marked[ref.ID] = struct{}{}
		}
		return nil
	})
	if err != nil {
		return GCStats{}, nil, fmt.Errorf("mark referenced chunks: %w", err)
	}
	st.ChunksMarked = len(marked)
	return st, marked, nil
}

// sweepIndex deletes the recorded chunks that marked lacks and that nothing
// touched, in batches of at most size.
func (c *Collector) sweepIndex(ctx context.Context, marked map[engine.ChunkID]struct{}, size int, checkpoint func(string), st *GCStats) error {
	var after *engine.ChunkID
	for {
		ids, next, err := c.db.unmarkedChunks(ctx, after, marked, size)
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			if err := c.deleteChunks(ctx, ids, checkpoint, st); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		after = next
	}
}

// deleteChunks is one batch of the sweep: with Has, Put and AddVersion kept
// out, it drops the touched chunks of ids and deletes the others from the
// index, then from the store. The index goes first: a crash between the
// two leaves stored chunks the index does not record, which the next
// collection finds, never a record of a chunk the store lacks.
func (c *Collector) deleteChunks(ctx context.Context, ids []engine.ChunkID, checkpoint func(string), st *GCStats) error {
	c.sweep.Lock()
	defer c.sweep.Unlock()
	n := len(ids)
	ids = slices.DeleteFunc(ids, func(id engine.ChunkID) bool {
		_, ok := c.touched[id]
		return ok
	})
	st.ChunksKeptForPushes += n - len(ids)
	if len(ids) == 0 {
		return nil
	}
	removed, raw, stored, err := c.db.removeChunks(ctx, ids)
	if err != nil {
		return err
	}
	st.ChunksDeleted += removed
	st.RawBytesFreed += raw
	st.StoredBytesFreed += stored
	if checkpoint != nil {
		checkpoint(CheckpointGCUnrecorded)
	}
	for _, id := range ids {
		if err := c.store.Delete(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// sweepOrphans walks the store, when it can, and deletes the chunks that
// marked lacks and the index does not record.
func (c *Collector) sweepOrphans(ctx context.Context, marked map[engine.ChunkID]struct{}, size int, st *GCStats) error {
	w, ok := c.store.(Walker)
	if !ok {
		return nil
	}
	pending := make([]engine.ChunkID, 0, size)
	flush := func() error {
		// Most unmarked chunks in the store are recorded, having arrived
		// since the mark: ask without keeping pushes out, then again
		// with them kept out, about the few that are not.
		has, err := c.db.HasChunks(ctx, pending)
		if err != nil {
			return err
		}
		orphans := pending[:0]
		for i, id := range pending {
			if !has[i] {
				orphans = append(orphans, id)
			}
		}
		pending = pending[:0]
		if len(orphans) == 0 {
			return nil
		}
		return c.deleteOrphans(ctx, orphans, st)
	}
	err := w.Walk(ctx, func(id engine.ChunkID) error {
		if _, ok := marked[id]; ok {
			return nil
		}
		if pending = append(pending, id); len(pending) == size {
			return flush()
		}
		return nil
	})
	if err == nil && len(pending) > 0 {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("delete chunks the index lacks: %w", err)
	}
	return nil
}

// deleteOrphans deletes from the store those of ids that the index does not
// record, with Put kept out so that none is recorded meanwhile. Whether a
// call touched them does not matter: Has reports an unrecorded chunk
// missing, and Put stores it again.
func (c *Collector) deleteOrphans(ctx context.Context, ids []engine.ChunkID, st *GCStats) error {
	c.sweep.Lock()
	defer c.sweep.Unlock()
	has, err := c.db.HasChunks(ctx, ids)
	if err != nil {
		return err
	}
	for i, id := range ids {
		if has[i] {
			continue
		}
		if err := c.store.Delete(ctx, id); err != nil {
			return err
		}
		st.OrphansDeleted++
	}
	return nil
}
