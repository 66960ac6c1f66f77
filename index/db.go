package index

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrClosed is returned by the methods of a DB after Close.
var ErrClosed = errors.New("index database is closed")

// dbFormat is the layout version of the whole database, kept in the meta
// bucket. A database of another format is refused rather than misread.
const dbFormat = 1

// maxWriteBatch bounds how many writes share one transaction, so that one
// commit stays short and a burst cannot hold memory without bound.
const maxWriteBatch = 4096

var (
	bucketMeta          = []byte("meta")
	bucketChunks        = []byte("chunks")
	bucketSessions      = []byte("sessions")
	bucketSessionSpecs  = []byte("session-specs")
	bucketSessionChunks = []byte("session-chunks")
	bucketVersions      = []byte("versions")
	keyFormat           = []byte("format")
	// dataBuckets are the buckets besides meta that every database holds.
	dataBuckets = [][]byte{bucketChunks, bucketSessions, bucketSessionSpecs, bucketSessionChunks, bucketVersions}
	// bucketPendingVersions came after the others of format 1: a
	// database that no server since has opened for writing lacks it,
	// which reads as no version pending.
	bucketPendingVersions = []byte("pending-versions")
)

// DB is the index database of a server: one bbolt file that holds the chunk
// index, the upload sessions and the file catalogue. It implements
// ChunkIndex, Sessions, Catalogue and Pruner and is safe for concurrent use.
//
// Reads run in parallel, each in its own read transaction. Writes from all
// goroutines go through one writer that commits whatever arrived while the
// previous commit ran in a single transaction (group commit), so that N
// concurrent writers pay about one fsync between them instead of N, and a
// lone writer pays one commit without waiting for company. Every write is
// durable when its method returns.
type DB struct {
	bolt *bolt.DB
	path string

	writes    chan *writeRequest
	closing   chan struct{}
	writer    sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	// commits counts write transactions, for tests of group commit.
	commits atomic.Int64
}

// writeRequest is one write waiting for the writer. fn may run more than
// once, each time in a fresh transaction: only the run in the transaction
// that commits counts, so fn must set its results anew on each run.
type writeRequest struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

var (
	_ ChunkIndex = (*DB)(nil)
	_ Sessions   = (*DB)(nil)
	_ Catalogue  = (*DB)(nil)
	_ Pruner     = (*DB)(nil)
)

// ErrLocked is returned, wrapped, by OpenDB and OpenDBReadOnly when
// another process holds the database open for writing (or, for OpenDB,
// at all): a running server holds its index locked.
var ErrLocked = errors.New("index database is locked by another process")

// OpenDB opens the index database at path, creating it if needed. It fails
// with ErrLocked after a second if another process holds the database open.
func OpenDB(path string) (*DB, error) {
	b, err := openBolt(path, false)
	if err != nil {
		return nil, err
	}
	if err := b.Update(initBuckets); err != nil {
		b.Close()
		return nil, fmt.Errorf("open index database %s: %w", path, err)
	}
	return startDB(b, path), nil
}

// OpenDBReadOnly opens the existing index database at path for reading,
// for verification. It shares bbolt's file lock with other readers and
// fails with ErrLocked after a second if a writer (a server) holds it;
// while it is open, no server can open the database. Every write returns
// an error.
func OpenDBReadOnly(path string) (*DB, error) {
	if _, err := os.Stat(path); err != nil {
		// bbolt would create the file; a reader wants the one that exists.
		return nil, fmt.Errorf("open index database %s: %w", path, err)
	}
	b, err := openBolt(path, true)
	if err != nil {
		return nil, err
	}
	if err := b.View(checkBuckets); err != nil {
		b.Close()
		return nil, fmt.Errorf("open index database %s: %w", path, err)
	}
	return startDB(b, path), nil
}

// openBolt opens the bbolt file at path.
func openBolt(path string, readOnly bool) (*bolt.DB, error) {
	b, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  time.Second,
		ReadOnly: readOnly,
		// The map freelist and not syncing it are what etcd runs with: a
		// commit then writes no freelist page, at the price of a scan of
		// the file when it is opened.
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		err = ErrLocked
	}
	if err != nil {
		return nil, fmt.Errorf("open index database %s: %w", path, err)
	}
	return b, nil
}

// startDB wraps an open bbolt file and starts its writer.
func startDB(b *bolt.DB, path string) *DB {
	db := &DB{
		bolt:    b,
		path:    path,
		writes:  make(chan *writeRequest),
		closing: make(chan struct{}),
	}
	db.writer.Add(1)
	go db.writeLoop()
	return db
}

// initBuckets creates the buckets of a new database and checks the format
// of an existing one. Buckets it does not know are left alone: databases
// written by earlier versions hold a "tokens" bucket, from when the index
// duplicated the token hashes that transport keeps in a file, and nothing
// reads it.
func initBuckets(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	switch v := meta.Get(keyFormat); {
	case v == nil:
		if err := meta.Put(keyFormat, []byte{dbFormat}); err != nil {
			return err
		}
	case len(v) != 1 || v[0] != dbFormat:
		return fmt.Errorf("database format %x, want %d", v, dbFormat)
	}
	for _, name := range append(slices.Clip(dataBuckets), bucketPendingVersions) {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// checkBuckets checks the format and the buckets of a database opened read-only.
func checkBuckets(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return errors.New("no meta bucket: not an index database")
	}
	if v := meta.Get(keyFormat); len(v) != 1 || v[0] != dbFormat {
		return fmt.Errorf("database format %x, want %d", v, dbFormat)
	}
	for _, name := range dataBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("no bucket %s", name)
		}
	}
	return nil
}

// Path returns the file the database is kept in.
func (db *DB) Path() string { return db.path }

// Close waits for the writes in progress, refuses new ones with ErrClosed
// and closes the database file. Calling Close again returns the first
// result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.closing)
		db.writer.Wait()
		if err := db.bolt.Close(); err != nil {
			db.closeErr = fmt.Errorf("close index database %s: %w", db.path, err)
		}
	})
	return db.closeErr
}

// update runs fn in a write transaction shared with the writes of other
// goroutines and returns when that transaction has committed, or fn's
// error. fn may run more than once (see writeRequest).
func (db *DB) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &writeRequest{fn: fn, done: make(chan error, 1)}
	select {
	case db.writes <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-db.closing:
		return ErrClosed
	}
	// Once the writer has the request it always answers, promptly: a
	// commit is not abandoned half-way because one caller gave up.
	return <-req.done
}

// view runs fn in a read transaction.
func (db *DB) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-db.closing:
		return ErrClosed
	default:
	}
	err := db.bolt.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		// Close ran between the check above and the transaction.
		return ErrClosed
	}
	return err
}

// writeLoop is the one writer. Senders block on the unbuffered channel
// while a commit runs; when it ends, the loop takes every sender that is
// waiting and commits them together.
func (db *DB) writeLoop() {
	defer db.writer.Done()
	batch := make([]*writeRequest, 0, 64)
	for {
		select {
		case <-db.closing:
			return
		case req := <-db.writes:
			batch = append(batch[:0], req)
		}
	gather:
		for len(batch) < maxWriteBatch {
			select {
			case req := <-db.writes:
				batch = append(batch, req)
			default:
				break gather
			}
		}
		db.commit(batch)
		clear(batch)
	}
}

// commit runs the requests in one transaction. When one fails, the
// transaction is rolled back, that request gets its error and the others
// run again without it, as bbolt's Batch does.
func (db *DB) commit(batch []*writeRequest) {
	for len(batch) > 0 {
		failed := -1
		var failErr error
		db.commits.Add(1)
		err := db.bolt.Update(func(tx *bolt.Tx) error {
			for i, req := range batch {
				if err := req.fn(tx); err != nil {
					failed, failErr = i, err
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, req := range batch {
				req.done <- err
			}
			return
		}
		batch[failed].done <- failErr
		batch = slices.Concat(batch[:failed], batch[failed+1:])
	}
}

// Stats counts what an index database holds.
type Stats struct {
	// Chunks is the number of chunks the index records; RawBytes and
	// StoredBytes add up their raw sizes and the sizes the store keeps.
	Chunks      int
	RawBytes    int64
	StoredBytes int64
	// Versions counts the versions in the catalogue, of Paths files.
	Versions int
	Paths    int
	// Sessions counts the open upload sessions.
	Sessions int
}

// Stats counts the chunks, versions, paths and sessions in one read
// transaction. It reads every chunk record to add up the sizes (tens of
// milliseconds for a million chunks) and seeks once per path; the other
// counts come from bbolt's bucket statistics.
func (db *DB) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := db.view(ctx, func(tx *bolt.Tx) error {
		st = Stats{}
		c := tx.Bucket(bucketChunks).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if st.Chunks&0xffff == 0xffff {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			info, err := decodeChunkRecord(k, v)
			if err != nil {
				return err
			}
			st.Chunks++
			st.RawBytes += int64(info.Size)
			st.StoredBytes += int64(info.Stored)
		}
		versions := tx.Bucket(bucketVersions)
		st.Versions = versions.Stats().KeyN
		c = versions.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			path, _, err := parseVersionKey(k)
			if err != nil {
				return corruptRecord("version", k, err)
			}
			seekLatest(c, path)
			st.Paths++
		}
		st.Sessions = tx.Bucket(bucketSessions).Stats().KeyN
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("index statistics: %w", err)
	}
	return st, nil
}
