package engine

import (
	"context"
	"io/fs"
	"time"
)

// UploadSpec is what a remote needs to open an upload session for a file.
type UploadSpec struct {
	Path    string
	Size    int64
	Mode    fs.FileMode
	ModTime time.Time
	Chunker ChunkerParams
}

// Remote is the server side of a push, as the engine sees it.
type Remote interface {
	// OpenUpload opens an upload session for spec, or re-attaches to the open
	// session of an earlier push of the same spec by the same client, so that
	// an interrupted push carries on where it stopped.
	OpenUpload(ctx context.Context, spec UploadSpec) (Upload, error)
}

// Upload is one open upload session. Missing and Send may be called from
// several goroutines at once; Commit and Close are called once, last.
type Upload interface {
	// ID names the session; it stays the same when a push re-attaches.
	// A remote may open the session with the first Missing (or, for a
	// file of no chunks, with Commit): until then ID is "".
	ID() string
	// Missing records refs as chunks first, first+1, ... of the file and
	// reports, for each, whether the remote still lacks it. A chunk it does
	// not lack is protected from garbage collection until the session ends.
	Missing(ctx context.Context, first int, refs []ChunkRef) ([]bool, error)
	// Send hands one encoded chunk to the remote. It returns when the chunk
	// is queued, blocking while too many chunks are unacknowledged; the
	// upload calls c.Release once the remote has stored the chunk durably.
	Send(ctx context.Context, c EncodedChunk) error
	// Commit asks the remote to assemble m, verify its digests and make
	// it the file's latest version once it has stored every chunk of m,
	// and returns when every sent chunk is acknowledged and the remote
	// has answered.
	Commit(ctx context.Context, m *Manifest) (CommitResult, error)
	// Close releases the upload without committing; the session and the
	// chunks it stored stay on the remote for a later push to resume.
	Close() error
}

// EncodedChunk is a chunk ready for the wire.
type EncodedChunk struct {
	ID      ChunkID
	Codec   Codec
	RawSize uint32
	Payload []byte
	// Release, when not nil, hands Payload back to its owner; it is called
	// exactly once, after which Payload must not be touched.
	Release func()
	// Busy, when not nil, is told how long a stream of the upload was busy
	// with the chunk, once it is acknowledged: the measure of the link
	// that adaptive chunking follows.
	Busy func(d time.Duration)
}

// CommitResult is the remote's answer to a successful commit.
type CommitResult struct {
	// Version numbers the file's versions from 1.
	Version uint64
}
