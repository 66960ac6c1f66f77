package index

import (
	"context"
	"errors"
	"time"

	"github.com/chunksync/chunksync/engine"
)

var (
	// ErrChunkMissing is returned for a chunk that is not stored.
	ErrChunkMissing = errors.New("chunk not stored")
	// ErrChunkCorrupt is returned, wrapped with the chunk ID, when stored
	// bytes fail to decode or do not hash to their ID.
	ErrChunkCorrupt = errors.New("stored chunk is corrupt")
	// ErrSessionNotFound is returned for an unknown or expired session.
	ErrSessionNotFound = errors.New("upload session not found")
	// ErrVersionNotFound is returned for a path or version the catalogue lacks.
	ErrVersionNotFound = errors.New("file version not found")
)

// Store keeps chunk bytes under their ID. Implementations are safe for
// concurrent use.
type Store interface {
	// Put stores payload, the chunk encoded with codec, under id. The caller
	// has verified that payload decodes to rawSize bytes hashing to id. The
	// chunk is durable when Put returns; putting a stored chunk again is
	// harmless.
	Put(ctx context.Context, id engine.ChunkID, codec engine.Codec, rawSize uint32, payload []byte) error
	// Get appends the chunk's raw bytes to dst[:0] after checking that they
	// hash to id. It returns ErrChunkMissing for an absent chunk and an error
	// wrapping ErrChunkCorrupt for bytes that fail that check.
	Get(ctx context.Context, id engine.ChunkID, dst []byte) ([]byte, error)
	// Delete removes a chunk; deleting an absent chunk is not an error.
	Delete(ctx context.Context, id engine.ChunkID) error
}

// ChunkInfo is what the index records of a stored chunk.
type ChunkInfo struct {
	// Size is the raw (uncompressed) size in bytes.
	Size uint32
	// Stored is the size of the encoded form kept in the store.
	Stored uint32
	Codec  engine.Codec
}

// ChunkIndex records which chunks the store holds. Implementations are safe
// for concurrent use and batch concurrent writes into one transaction.
type ChunkIndex interface {
	// HasChunks reports, for each id, whether it is recorded.
	HasChunks(ctx context.Context, ids []engine.ChunkID) ([]bool, error)
	// AddChunk records a chunk after the store holds it durably. Adding a
	// recorded chunk again is harmless.
	AddChunk(ctx context.Context, id engine.ChunkID, info ChunkInfo) error
	// Chunk returns what is recorded of id, or ErrChunkMissing.
	Chunk(ctx context.Context, id engine.ChunkID) (ChunkInfo, error)
}

// Session is an upload session: a push in progress.
type Session struct {
	ID string
	// Owner names the client token that opened the session.
	Owner   string
	Spec    engine.UploadSpec
	Created time.Time
	// Updated is the last time the client touched the session; sessions
	// idle for longer than the server's limit expire.
	Updated time.Time
}

// SessionProgress is a session with what has arrived of it.
type SessionProgress struct {
	Session
	// Chunks and Bytes count the chunks the client has listed so far.
	Chunks int
	Bytes  int64
	// ChunksStored and BytesStored count the listed chunks the store holds.
	ChunksStored int
	BytesStored  int64
}

// Missing is the number of listed chunks that the store still lacks.
func (p SessionProgress) Missing() int { return p.Chunks - p.ChunksStored }

// Sessions records upload sessions. Implementations are safe for concurrent use.
type Sessions interface {
	// OpenSession returns the open session of owner for spec, if there is
	// one (reattached is true), or creates one.
	OpenSession(ctx context.Context, owner string, spec engine.UploadSpec, now time.Time) (s Session, reattached bool, err error)
	// AddSessionChunks records refs as chunks first, first+1, ... of the
	// session's file, replacing what was recorded at those positions, and
	// marks the session as touched at now.
	AddSessionChunks(ctx context.Context, id string, first int, refs []engine.ChunkRef, now time.Time) error
	// SessionProgress returns the session and what has arrived of it, or
	// ErrSessionNotFound.
	SessionProgress(ctx context.Context, id string) (SessionProgress, error)
	// ListSessions returns every open session, oldest first.
	ListSessions(ctx context.Context) ([]Session, error)
	// DeleteSession removes a session, or returns ErrSessionNotFound.
	DeleteSession(ctx context.Context, id string) error
	// ExpireSessions removes the sessions last touched before idleBefore
	// and returns their IDs.
	ExpireSessions(ctx context.Context, idleBefore time.Time) ([]string, error)
}

// Version is one verified version of a file in the catalogue.
type Version struct {
	Path    string
	Number  uint64
	Created time.Time
	Size    int64
	Digests engine.Digests
	Chunker engine.ChunkerParams
}

// Catalogue records the verified versions of every file. Implementations
// are safe for concurrent use.
type Catalogue interface {
	// AddVersion records m as the next version of m.Path and returns its number.
	AddVersion(ctx context.Context, m *engine.Manifest, now time.Time) (uint64, error)
	// Manifest returns version n of path (0 for the latest), or ErrVersionNotFound.
	Manifest(ctx context.Context, path string, n uint64) (Version, *engine.Manifest, error)
	// Versions lists the versions of path, oldest first, or ErrVersionNotFound.
	Versions(ctx context.Context, path string) ([]Version, error)
	// List returns the latest version of every path that starts with
	// prefix ("" for all), sorted by path; none is an empty list, not an
	// error.
	List(ctx context.Context, prefix string) ([]Version, error)
}

// Pruner deletes old versions from the catalogue. It never deletes a path's
// latest version, so version numbers are never used twice. Implementations
// are safe for concurrent use; pruning again prunes nothing more. The
// chunks of deleted versions stay stored until a Collector collects them.
type Pruner interface {
	// PruneVersions deletes all but the newest keep (at least 1) versions
	// of path and returns their numbers, oldest first, or
	// ErrVersionNotFound for a path without versions.
	PruneVersions(ctx context.Context, path string, keep int) ([]uint64, error)
	// PruneAll deletes all but the newest keep (at least 1) versions of
	// every path and returns how many it deleted.
	PruneAll(ctx context.Context, keep int) (int, error)
}
