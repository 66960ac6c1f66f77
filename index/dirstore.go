package index

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/chunksync/chunksync/engine"
)

// A stored chunk file is a fixed header followed by the payload exactly as
// Put received it:
//
//	offset size
//	0      4    magic "csck"
//	4      1    format version (1)
//	5      1    codec (engine.Codec)
//	6      4    raw size, big-endian uint32, at most engine.MaxChunkSize
//	10     ...  payload
//
// The header carries what Get needs to decode the payload without asking
// the index, so the store can be verified, and the index rebuilt, from the
// files alone.
const (
	chunkHeaderSize    = 10
	chunkFormatVersion = 1
	chunkMagic         = "csck"
	// tempDir, under the store's directory, holds the files Put has not
	// yet renamed into place; OpenDirStore removes those a crash left.
	tempDir = "tmp"
	// tempPrefix starts the name of every temporary file.
	tempPrefix = "put-"
)

// chunkHeader is the decoded header of a stored chunk file.
type chunkHeader struct {
	codec   engine.Codec
	rawSize uint32
}

// appendChunkHeader appends the encoded form of h to dst.
func appendChunkHeader(dst []byte, h chunkHeader) []byte {
	dst = append(dst, chunkMagic...)
	dst = append(dst, chunkFormatVersion, byte(h.codec))
	return binary.BigEndian.AppendUint32(dst, h.rawSize)
}

// decodeChunkHeader decodes the first chunkHeaderSize bytes of b. It refuses
// an unknown version or codec and a raw size above engine.MaxChunkSize, so
// that a caller may allocate rawSize bytes once it succeeds.
func decodeChunkHeader(b []byte) (chunkHeader, error) {
	if len(b) < chunkHeaderSize {
		return chunkHeader{}, fmt.Errorf("header of %d bytes, want %d", len(b), chunkHeaderSize)
	}
	if string(b[:4]) != chunkMagic {
		return chunkHeader{}, fmt.Errorf("bad magic %q", b[:4])
	}
	if b[4] != chunkFormatVersion {
		return chunkHeader{}, fmt.Errorf("unknown format version %d", b[4])
	}
	h := chunkHeader{codec: engine.Codec(b[5]), rawSize: binary.BigEndian.Uint32(b[6:10])}
	if h.codec != engine.CodecRaw && h.codec != engine.CodecZstd {
		return chunkHeader{}, fmt.Errorf("unknown codec %d", b[5])
	}
	if h.rawSize > engine.MaxChunkSize {
		return chunkHeader{}, fmt.Errorf("raw size %d above limit %d", h.rawSize, engine.MaxChunkSize)
	}
	return h, nil
}

// DirStore is the local chunk store: one file per chunk under a directory,
// named by the chunk's hexadecimal ID and fanned out over 256
// subdirectories named by its first two hex digits (ab/abcd…), as restic
// lays out its pack files. It implements Store and is safe for concurrent
// use: Puts of different chunks share no lock, and Puts of the same chunk
// race harmlessly because each writes its own temporary file and renames
// it over the same, identical, content. One DirStore at a time may use a
// directory: opening another removes the first one's temporary files.
//
// OpenDirStore makes all 256 directories, once, so that a Put never
// creates one. With the two levels (ab/cd/abcd…) this store had before,
// nearly every chunk of a new or young store went into a directory of its
// own, and its Put paid for a mkdir and one more fsync: on x/tools release
// pairs that was a third of the server's time storing a re-sync. One level
// holds a million chunks at about 4,000 files a directory, which ext4's
// hashed directories look up as fast as a few.
//
// Temporary files live in one directory, tmp, rather than beside their
// chunk: a rename between directories of one file system is just as
// atomic, the fsync of the chunk's directory makes it just as durable, and
// the sweep on open then reads one directory instead of all 256.
type DirStore struct {
	dir  string
	tmp  string
	bufs sync.Pool
	// checkpoint, when set, hears of CheckpointChunkHalfWritten.
	checkpoint func(point string)
}

var _ Store = (*DirStore)(nil)

// CheckpointChunkHalfWritten names the point of a Put where half of the
// chunk's payload is written to its temporary file: the file is neither
// complete nor under the chunk's name.
const CheckpointChunkHalfWritten = "chunk-half-written"

// DirStoreOption configures OpenDirStore.
type DirStoreOption func(*DirStore)

// WithCheckpoint has every Put call fn with CheckpointChunkHalfWritten in
// the middle of writing the chunk's file, for crash tests that kill the
// process there. Stores in use go without.
func WithCheckpoint(fn func(point string)) DirStoreOption {
	return func(s *DirStore) { s.checkpoint = fn }
}

// OpenDirStore opens the chunk store in dir, creating dir and its
// subdirectories if needed, and removes the temporary files that Puts
// interrupted by a crash left behind.
func OpenDirStore(dir string, opts ...DirStoreOption) (*DirStore, error) {
	s := &DirStore{dir: dir, tmp: filepath.Join(dir, tempDir)}
	for _, o := range opts {
		o(s)
	}
	if err := s.makeDirs(); err != nil {
		return nil, fmt.Errorf("open chunk store %s: %w", dir, err)
	}
	if err := s.removeTemps(); err != nil {
		return nil, fmt.Errorf("open chunk store %s: %w", dir, err)
	}
	return s, nil
}

// OpenDirStoreReadOnly opens the chunk store in dir, which must exist, to
// read and verify it without changing anything: unlike OpenDirStore it
// neither creates directories nor removes temporary files, so it may look
// at a store that another process writes. Put and Delete must not be
// called on it.
func OpenDirStoreReadOnly(dir string) (*DirStore, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open chunk store %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open chunk store %s: not a directory", dir)
	}
	return &DirStore{dir: dir, tmp: filepath.Join(dir, tempDir)}, nil
}

// makeDirs creates the store's directory, tmp and the 256 fan-out
// directories that do not exist yet, and fsyncs the store's directory, so
// that their entries are durable before a chunk is renamed into one.
func (s *DirStore) makeDirs() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	names := []string{tempDir}
	for i := range 256 {
		names = append(names, fmt.Sprintf("%02x", i))
	}
	for _, name := range names {
		if err := os.Mkdir(filepath.Join(s.dir, name), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	// Synced whether or not this call created them: an earlier process
	// may have, and crashed before its fsync.
	return syncDir(s.dir)
}

// Dir returns the directory the store keeps its files in.
func (s *DirStore) Dir() string { return s.dir }

// chunkPath returns the directory and the file name of id.
func (s *DirStore) chunkPath(id engine.ChunkID) (dir, file string) {
	h := id.String()
	dir = filepath.Join(s.dir, h[0:2])
	return dir, filepath.Join(dir, h)
}

// Put stores the chunk in a new file: it writes a temporary file, fsyncs
// it, renames it to the chunk's name and fsyncs the chunk's directory. A chunk already stored is left as it is, without writing. Put
// refuses an unknown codec, a raw size above engine.MaxChunkSize and a
// payload whose size cannot belong to the codec and raw size.
func (s *DirStore) Put(ctx context.Context, id engine.ChunkID, codec engine.Codec, rawSize uint32, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store chunk %s: %w", id, err)
	}
	if codec != engine.CodecRaw && codec != engine.CodecZstd {
		return fmt.Errorf("store chunk %s: unknown codec %d", id, uint8(codec))
	}
	if rawSize > engine.MaxChunkSize {
		return fmt.Errorf("store chunk %s: raw size %d above limit %d", id, rawSize, engine.MaxChunkSize)
	}
	if n := int64(len(payload)); n > engine.MaxEncodedSize(codec, rawSize) || codec == engine.CodecRaw && n != int64(rawSize) {
		return fmt.Errorf("store chunk %s: %s payload of %d bytes for %d raw bytes", id, codec, n, rawSize)
	}
	dir, name := s.chunkPath(id)
	if fi, err := os.Lstat(name); err == nil && fi.Mode().IsRegular() {
		return nil
	}
	if err := s.writeChunkFile(dir, name, id, chunkHeader{codec: codec, rawSize: rawSize}, payload); err != nil {
		return fmt.Errorf("store chunk %s: %w", id, err)
	}
	return nil
}

// writeChunkFile writes header and payload to a temporary file in the
// store's tmp, fsyncs it, renames it to name, a file in dir, and fsyncs
// dir. A crash before the rename leaves only the temporary file, which
// no reader looks at and the next OpenDirStore removes.
func (s *DirStore) writeChunkFile(dir, name string, id engine.ChunkID, h chunkHeader, payload []byte) (err error) {
	f, err := os.CreateTemp(s.tmp, tempPrefix+id.String()+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	var hb [chunkHeaderSize]byte
	if _, err = f.Write(appendChunkHeader(hb[:0], h)); err != nil {
		return err
	}
	if s.checkpoint != nil {
		half := len(payload) / 2
		if _, err = f.Write(payload[:half]); err != nil {
			return err
		}
		s.checkpoint(CheckpointChunkHalfWritten)
		payload = payload[half:]
	}
	if _, err = f.Write(payload); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory, making the entries created, renamed or
// removed in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return d.Close()
}

// Get reads the chunk's file, checks its header, decodes the payload and
// verifies that the bytes hash to id. A missing file gives ErrChunkMissing;
// a file that fails any check gives an error wrapping ErrChunkCorrupt; both
// name id.
func (s *DirStore) Get(ctx context.Context, id engine.ChunkID, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	_, name := s.chunkPath(id)
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get chunk %s: %w", id, ErrChunkMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	defer f.Close()
	out, _, err := s.readChunk(f, id, dst)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	return out, nil
}

// Inspect is Get that also returns what the chunk's file says of it: its
// codec, raw size and the size of its payload, for a verification to
// compare with the index. It reads the file once.
func (s *DirStore) Inspect(ctx context.Context, id engine.ChunkID, dst []byte) ([]byte, ChunkInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, ChunkInfo{}, fmt.Errorf("inspect chunk %s: %w", id, err)
	}
	_, name := s.chunkPath(id)
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ChunkInfo{}, fmt.Errorf("inspect chunk %s: %w", id, ErrChunkMissing)
	}
	if err != nil {
		return nil, ChunkInfo{}, fmt.Errorf("inspect chunk %s: %w", id, err)
	}
	defer f.Close()
	out, info, err := s.readChunk(f, id, dst)
	if err != nil {
		return nil, info, fmt.Errorf("inspect chunk %s: %w", id, err)
	}
	return out, info, nil
}

// corrupt wraps the reason a stored chunk is refused so that the error
// matches ErrChunkCorrupt and, where there is one, the underlying cause.
func corrupt(err error) error { return fmt.Errorf("%w: %w", ErrChunkCorrupt, err) }

// readChunk decodes and verifies the chunk file f into dst[:0] and returns
// what its header and size say of it; those are set as soon as the header
// decodes, even when the payload then fails.
func (s *DirStore) readChunk(f *os.File, id engine.ChunkID, dst []byte) ([]byte, ChunkInfo, error) {
	var info ChunkInfo
	fi, err := f.Stat()
	if err != nil {
		return nil, info, err
	}
	if fi.Size() < chunkHeaderSize {
		return nil, info, corrupt(fmt.Errorf("file of %d bytes is shorter than its header", fi.Size()))
	}
	var hb [chunkHeaderSize]byte
	if _, err := io.ReadFull(f, hb[:]); err != nil {
		return nil, info, readErr(err)
	}
	h, err := decodeChunkHeader(hb[:])
	if err != nil {
		return nil, info, corrupt(err)
	}
	n := fi.Size() - chunkHeaderSize
	info = ChunkInfo{Size: h.rawSize, Stored: uint32(min(n, math.MaxUint32)), Codec: h.codec}
	if n > engine.MaxEncodedSize(h.codec, h.rawSize) || h.codec == engine.CodecRaw && n != int64(h.rawSize) {
		return nil, info, corrupt(fmt.Errorf("%s payload of %d bytes for %d raw bytes", h.codec, n, h.rawSize))
	}
	var out []byte
	if h.codec == engine.CodecRaw {
		// Read raw chunks straight into dst rather than through a buffer.
		out = slices.Grow(dst[:0], int(n))[:n]
		if _, err := io.ReadFull(f, out); err != nil {
			return nil, info, readErr(err)
		}
	} else {
		bp := s.buffer(int(n))
		defer s.bufs.Put(bp)
		if _, err := io.ReadFull(f, *bp); err != nil {
			return nil, info, readErr(err)
		}
		out, err = engine.Decompress(dst, h.codec, *bp, int(h.rawSize))
		if err != nil {
			return nil, info, corrupt(err)
		}
	}
	if err := engine.VerifyChunk(id, out); err != nil {
		return nil, info, corrupt(err)
	}
	return out, info, nil
}

// readErr turns a short read of a file whose size was checked into
// corruption; other read errors stay what they are.
func readErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return corrupt(fmt.Errorf("file shorter than its size: %w", err))
	}
	return err
}

// buffer returns a pooled buffer of length n.
func (s *DirStore) buffer(n int) *[]byte {
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	*bp = slices.Grow((*bp)[:0], n)[:n]
	return bp
}

// Delete removes the chunk's file. The removal is not fsynced: after a
// crash the chunk may be back, which costs space but never correctness,
// and a later garbage collection removes it again.
func (s *DirStore) Delete(ctx context.Context, id engine.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	_, name := s.chunkPath(id)
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	return nil
}

// Walk calls fn with the ID of every stored chunk, in ascending order of ID,
// for verification and garbage collection. It skips any file whose name is
// not the ID its directory implies. Walk stops at the
// first error fn returns and returns that error unchanged; it checks ctx
// between directories. Chunks put or deleted during a walk may or may not
// be seen.
func (s *DirStore) Walk(ctx context.Context, fn func(id engine.ChunkID) error) error {
	top, err := readNames(s.dir)
	if err != nil {
		return err
	}
	for _, a := range top {
		if !isFanOutName(a) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("walk chunk store %s: %w", s.dir, err)
		}
		dir := filepath.Join(s.dir, a)
		names, err := readNames(dir)
		if err != nil {
			return err
		}
		for _, name := range names {
			id, ok := chunkFileID(dir, name)
			if !ok {
				continue
			}
			if err := fn(id); err != nil {
				return err
			}
		}
	}
	return nil
}

// chunkFileID parses name, a file in the fan-out directory dir, as a chunk ID
// that belongs in dir.
func chunkFileID(dir, name string) (engine.ChunkID, bool) {
	if len(name) != 2*len(engine.ChunkID{}) || strings.ToLower(name) != name {
		return engine.ChunkID{}, false
	}
	id, err := engine.ParseChunkID(name)
	if err != nil {
		return engine.ChunkID{}, false
	}
	if filepath.Base(dir) != name[0:2] {
		return engine.ChunkID{}, false
	}
	return id, true
}

// removeTemps removes the temporary files that interrupted Puts left.
func (s *DirStore) removeTemps() error {
	names, err := s.Temps()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale temporary file: %w", err)
		}
	}
	return nil
}

// Temps returns the paths of the temporary files in the store: those of
// Puts in progress or, when no DirStore has the directory open, those a
// crash left behind.
func (s *DirStore) Temps() ([]string, error) {
	names, err := readNames(s.tmp)
	if err != nil {
		return nil, err
	}
	var temps []string
	for _, name := range names {
		if strings.HasPrefix(name, tempPrefix) {
			temps = append(temps, filepath.Join(s.tmp, name))
		}
	}
	return temps, nil
}

// readNames returns the sorted names in dir; a directory removed meanwhile
// has none.
func readNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	slices.Sort(names)
	return names, nil
}

// isFanOutName reports whether name is two lower-case hex digits.
func isFanOutName(name string) bool {
	if len(name) != 2 {
		return false
	}
	for _, c := range []byte(name) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
