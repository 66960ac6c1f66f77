package index

import (
	"bytes"
	"context"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// ProblemKind names a kind of damage that Verify reports.
type ProblemKind string

// The kinds of problem Verify reports. Other packages that verify what
// they keep (the server's materialised files) add kinds of their own.
const (
	// ProblemChunkCorrupt is a stored chunk that fails to decode or does
	// not hash to the ID it is stored under, or that cannot be read.
	ProblemChunkCorrupt ProblemKind = "chunk-corrupt"
	// ProblemChunkMissing is a chunk the index records and the store lacks.
	ProblemChunkMissing ProblemKind = "chunk-missing"
	// ProblemChunkUnrecorded is a chunk the store holds and the index does
	// not record: a crash between storing and recording it leaves one. It
	// costs space only; the next push of it records it and the next
	// garbage collection deletes it if nothing names it.
	ProblemChunkUnrecorded ProblemKind = "chunk-unrecorded"
	// ProblemChunkMismatch is an index record that disagrees with the
	// stored chunk on its raw size, stored size or codec.
	ProblemChunkMismatch ProblemKind = "chunk-mismatch"
	// ProblemRecordCorrupt is a record of the index database that fails
	// to decode.
	ProblemRecordCorrupt ProblemKind = "record-corrupt"
	// ProblemVersionBroken is a version whose manifest names a chunk the
	// index does not record, or records with another size, or whose chunk
	// sizes do not add up to its size.
	ProblemVersionBroken ProblemKind = "version-broken"
	// ProblemVersionContent is a version whose content, reassembled from
	// the store, cannot be read or does not match its BLAKE3 and MD5.
	ProblemVersionContent ProblemKind = "version-content"
	// ProblemTempFile is a temporary file that an interrupted write left.
	ProblemTempFile ProblemKind = "temp-file"
	// ProblemVersionPending is a version that a commit recorded and a
	// crash kept from being put in place under the server's files root
	// (DB.PendingVersions); the server puts it there when it starts.
	ProblemVersionPending ProblemKind = "version-pending"
)

// Problem is one thing a verification found wrong.
type Problem struct {
	Kind ProblemKind
	// Object names what is damaged: a chunk ID, "path@version" or a file.
	Object string
	Detail string
}

// String returns the problem on one line.
func (p Problem) String() string { return fmt.Sprintf("%s %s: %s", p.Kind, p.Object, p.Detail) }

// VerifyProgress says how far a verification has come.
type VerifyProgress struct {
	// Stage is "chunks" or "versions".
	Stage string
	// Done counts the chunks or versions checked so far, of about Total
	// (the index's count: a damaged store may hold more or fewer).
	Done, Total int
	// Bytes counts the raw bytes read so far in this stage.
	Bytes int64
}

// VerifyOptions tune a verification. The zero value checks everything.
type VerifyOptions struct {
	// SkipContent skips reassembling every version to check its BLAKE3
	// and MD5, which reads each version's full size from the store. The
	// chunks are still read, decoded and hashed once each, and every
	// manifest is still checked against the index.
	SkipContent bool
	// Progress, when set, is called after each chunk and version.
	Progress func(VerifyProgress)
}

// VerifyStats counts what a verification checked.
type VerifyStats struct {
	// Chunks counts the stored chunks read, of ChunkBytes raw bytes;
	// Records the chunk records of the index.
	Chunks     int
	ChunkBytes int64
	Records    int
	// Versions counts the versions checked, of VersionBytes content bytes
	// reassembled (0 with SkipContent).
	Versions     int
	VersionBytes int64
	// Sessions counts the upload sessions whose records decoded.
	Sessions int
	// Problems counts the problems reported.
	Problems int
}

// Verify checks a server's index database against its chunk store and
// reports every problem it finds to report, in order of discovery: it
// reads every stored chunk (decoding it and checking its hash against its
// name), matches every chunk record with a stored chunk and every stored
// chunk with a record, decodes every record, checks every version's
// manifest against the chunk records and, unless opts.SkipContent,
// reassembles every version and checks its digests, lists the store's
// temporary files and the versions still pending.
//
// Verify reads the database and the store while nothing writes them: open
// them with OpenDBReadOnly and OpenDirStoreReadOnly, which keep a server
// out. Memory stays bounded whatever their size: the store and the index
// are both walked in order of chunk ID and matched as they go, and
// versions are reassembled as streams. It returns an error only when it
// cannot go on (ctx ended, the database cannot be read); damage is
// reported, not returned.
func Verify(ctx context.Context, db *DB, store *DirStore, opts VerifyOptions, report func(Problem)) (VerifyStats, error) {
	v := &verifier{db: db, store: store, opts: opts}
	v.report = func(p Problem) {
		v.st.Problems++
		report(p)
	}
	temps, err := store.Temps()
	if err != nil {
		return v.st, fmt.Errorf("verify: %w", err)
	}
	for _, name := range temps {
		v.report(Problem{ProblemTempFile, name, "temporary file of an interrupted chunk write; the server removes it when it starts"})
	}
	for _, step := range []func(context.Context) error{v.chunks, v.versions, v.sessions, v.pending} {
		if err := step(ctx); err != nil {
			return v.st, fmt.Errorf("verify: %w", err)
		}
	}
	return v.st, nil
}

// verifier is one run of Verify.
type verifier struct {
	db     *DB
	store  *DirStore
	opts   VerifyOptions
	report func(Problem)
	st     VerifyStats
}

func (v *verifier) progress(p VerifyProgress) {
	if v.opts.Progress != nil {
		v.opts.Progress(p)
	}
}

// chunkRecord is one record of the chunks bucket as chunkPager reads it.
type chunkRecord struct {
	id   engine.ChunkID
	info ChunkInfo
	err  error // the record failed to decode
}

// chunkPager reads the chunk records in order of ID, a page per read
// transaction, so that no transaction stays open for the whole store.
type chunkPager struct {
	db    *DB
	page  []chunkRecord
	after []byte
	done  bool
	// bad collects the keys that are not chunk IDs.
	bad func(key []byte)
}

// peek returns the next record, or false at the end of the index.
func (p *chunkPager) peek(ctx context.Context) (chunkRecord, bool, error) {
	const pageSize = 4096
	if len(p.page) == 0 && !p.done {
		err := p.db.view(ctx, func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketChunks).Cursor()
			var k, val []byte
			if p.after == nil {
				k, val = c.First()
			} else if k, val = c.Seek(p.after); bytes.Equal(k, p.after) {
				k, val = c.Next()
			}
			for ; k != nil && len(p.page) < pageSize; k, val = c.Next() {
				p.after = bytes.Clone(k)
				if len(k) != len(engine.ChunkID{}) {
					p.bad(p.after)
					continue
				}
				info, err := decodeChunkRecord(k, val)
				p.page = append(p.page, chunkRecord{id: engine.ChunkID(k), info: info, err: err})
			}
			p.done = k == nil
			return nil
		})
		if err != nil {
			return chunkRecord{}, false, fmt.Errorf("read chunk records: %w", err)
		}
	}
	if len(p.page) == 0 {
		return chunkRecord{}, false, nil
	}
	return p.page[0], true, nil
}

func (p *chunkPager) next() { p.page = p.page[1:] }

// chunks reads every stored chunk and matches the store with the chunk
// records, both in order of ID.
func (v *verifier) chunks(ctx context.Context) error {
	var total int
	if err := v.db.view(ctx, func(tx *bolt.Tx) error {
		total = tx.Bucket(bucketChunks).Stats().KeyN
		return nil
	}); err != nil {
		return err
	}
	recs := &chunkPager{db: v.db, bad: func(key []byte) {
		v.report(Problem{ProblemRecordCorrupt, fmt.Sprintf("chunk record %x", key), "key is not a chunk ID"})
	}}
	// missing reports the records before id (all that are left when id is
	// nil): the store has no chunk of theirs.
	missing := func(id *engine.ChunkID) error {
		for {
			r, ok, err := recs.peek(ctx)
			if err != nil {
				return err
			}
			if !ok || id != nil && bytes.Compare(r.id[:], id[:]) >= 0 {
				return nil
			}
			v.checkRecord(r)
			v.report(Problem{ProblemChunkMissing, r.id.String(), "recorded in the index, not in the store"})
			recs.next()
		}
	}
	var buf []byte
	err := v.store.Walk(ctx, func(id engine.ChunkID) error {
		if err := missing(&id); err != nil {
			return err
		}
		data, stored, err := v.store.Inspect(ctx, id, buf)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			v.report(Problem{ProblemChunkCorrupt, id.String(), err.Error()})
		} else {
			buf = data
			v.st.ChunkBytes += int64(len(data))
		}
		v.st.Chunks++
		r, ok, perr := recs.peek(ctx)
		if perr != nil {
			return perr
		}
		switch {
		case !ok || r.id != id:
			v.report(Problem{ProblemChunkUnrecorded, id.String(), "in the store, not recorded in the index (left by a crash; gc deletes it)"})
		case v.checkRecord(r) && err == nil && r.info != stored:
			v.report(Problem{ProblemChunkMismatch, id.String(), fmt.Sprintf("index records %d raw bytes stored as %d bytes %s, the store holds %d raw bytes stored as %d bytes %s",
				r.info.Size, r.info.Stored, r.info.Codec, stored.Size, stored.Stored, stored.Codec)})
		}
		if ok && r.id == id {
			recs.next()
		}
		v.progress(VerifyProgress{Stage: "chunks", Done: v.st.Chunks, Total: total, Bytes: v.st.ChunkBytes})
		return nil
	})
	if err == nil {
		err = missing(nil)
	}
	if err != nil {
		return fmt.Errorf("verify chunks: %w", err)
	}
	return nil
}

// checkRecord counts r and reports it when it failed to decode.
func (v *verifier) checkRecord(r chunkRecord) bool {
	v.st.Records++
	if r.err != nil {
		v.report(Problem{ProblemRecordCorrupt, "chunk record " + r.id.String(), r.err.Error()})
		return false
	}
	return true
}

// versions checks every version's manifest and, unless SkipContent, its
// content.
func (v *verifier) versions(ctx context.Context) error {
	var keys [][]byte
	if err := v.db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVersions).ForEach(func(k, _ []byte) error {
			keys = append(keys, bytes.Clone(k))
			return nil
		})
	}); err != nil {
		return fmt.Errorf("list versions: %w", err)
	}
	for i, key := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, object, err := v.manifest(ctx, key)
		if err != nil {
			return err
		}
		v.st.Versions++
		if m != nil && !v.opts.SkipContent {
			// Assemble fetches, decodes and hashes every chunk and checks
			// the size, BLAKE3 and MD5 of the whole, streaming.
			if err := engine.Assemble(ctx, m, v.store, io.Discard); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				v.report(Problem{ProblemVersionContent, object, err.Error()})
			} else {
				v.st.VersionBytes += m.Size
			}
		}
		v.progress(VerifyProgress{Stage: "versions", Done: i + 1, Total: len(keys), Bytes: v.st.VersionBytes})
	}
	return nil
}

// manifest decodes the version under key and checks it against its record
// and the chunk records. It returns the manifest when its content can be
// checked, and the version's name for problems.
func (v *verifier) manifest(ctx context.Context, key []byte) (*engine.Manifest, string, error) {
	object := fmt.Sprintf("version record %q", key)
	if path, n, err := parseVersionKey(key); err == nil {
		object = fmt.Sprintf("%s@%d", path, n)
	}
	var m engine.Manifest
	var problems []Problem
	err := v.db.view(ctx, func(tx *bolt.Tx) error {
		problems = problems[:0]
		broken := func(format string, args ...any) {
			problems = append(problems, Problem{ProblemVersionBroken, object, fmt.Sprintf(format, args...)})
		}
		if _, _, err := parseVersionKey(key); err != nil {
			problems = append(problems, Problem{ProblemRecordCorrupt, object, err.Error()})
			return nil
		}
		rec, data, err := decodeVersionRecord(key, tx.Bucket(bucketVersions).Get(key))
		if err == nil {
			err = m.UnmarshalBinary(data)
		}
		if err != nil {
			problems = append(problems, Problem{ProblemRecordCorrupt, object, err.Error()})
			return nil
		}
		if m.Path != rec.Path || m.Size != rec.Size || m.Digests != rec.Digests || m.Chunker != rec.Chunker {
			problems = append(problems, Problem{ProblemRecordCorrupt, object, "manifest disagrees with the version it is stored under"})
			return nil
		}
		var sum int64
		chunks := tx.Bucket(bucketChunks)
		for i, r := range m.Chunks {
			sum += int64(r.Size)
			val := chunks.Get(r.ID[:])
			if val == nil {
				broken("chunk %d (%s) is not recorded in the index", i, r.ID)
				continue
			}
			// A record that fails to decode was reported with the chunks.
			if info, err := decodeChunkRecord(r.ID[:], val); err == nil && info.Size != r.Size {
				broken("chunk %d (%s) is %d bytes in the manifest, %d in the index", i, r.ID, r.Size, info.Size)
			}
		}
		if sum != m.Size {
			broken("chunks add up to %d bytes, the version is %d", sum, m.Size)
		}
		return nil
	})
	if err != nil {
		return nil, object, fmt.Errorf("verify %s: %w", object, err)
	}
	for _, p := range problems {
		v.report(p)
	}
	if len(problems) > 0 {
		return nil, object, nil
	}
	return &m, object, nil
}

// sessions decodes every upload session record. Their chunk lists may
// name chunks the store lacks: those are what the push still has to send.
func (v *verifier) sessions(ctx context.Context) error {
	err := v.db.view(ctx, func(tx *bolt.Tx) error {
		bad := func(kind string, k []byte, err error) {
			v.report(Problem{ProblemRecordCorrupt, fmt.Sprintf("%s record %x", kind, k), err.Error()})
		}
		err := tx.Bucket(bucketSessions).ForEach(func(k, val []byte) error {
			if _, err := decodeSessionRecord(k, val); err != nil {
				bad("session", k, err)
			} else {
				v.st.Sessions++
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketSessionChunks).ForEach(func(k, val []byte) error {
			if _, err := decodeSessionRefRecord(k, val); err != nil {
				bad("session chunk", k, err)
			}
			return ctx.Err()
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketSessionSpecs).ForEach(func(k, val []byte) error {
			if _, err := decodeSessionSpecIndex(k, val); err != nil {
				bad("session spec", k, err)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("verify sessions: %w", err)
	}
	return nil
}

// pending reports the versions whose commit a crash interrupted before
// they were put in place, and the pending records that fail to decode.
func (v *verifier) pending(ctx context.Context) error {
	err := v.db.view(ctx, func(tx *bolt.Tx) error {
		return eachPending(tx, func(k []byte, pv PendingVersion, err error) error {
			if err != nil {
				v.report(Problem{ProblemRecordCorrupt, fmt.Sprintf("pending version record %q", k), err.Error()})
				return nil
			}
			v.report(Problem{ProblemVersionPending, fmt.Sprintf("%s@%d", pv.Path, pv.Number),
				"recorded by a commit that stopped before it put the version in place under the files root; the server does when it starts"})
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("verify pending versions: %w", err)
	}
	return nil
}
